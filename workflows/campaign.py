"""A campaign run: one workflow for the whole audience, never one per recipient.

The run snapshots its audience, then hands it to an activity a page (`page_size`) at a time,
paced by the campaign's rate limit; recipients held by quiet hours or their local send
time are sent in a later pass, and an optional follow-up goes to those who did not open or
click. Temporal's cost grows with pages, and continue-as-new keeps the history short.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from parcours import search_attributes as sa
    from parcours.contracts import (
        CampaignInput,
        CampaignPage,
        CampaignProgress,
        CampaignReport,
        FinishRun,
        PageResult,
        RunPlan,
        StartRun,
    )
    from parcours.definitions import Campaign

# A page's cost in Temporal (its activity, the workflow task its result wakes) is the same
# whatever its size. For a 100,000-recipient run (bench/campaigns.py), pages of 2,000 took 12%
# less time than pages of 1,000, and pages of 5,000 halved Temporal's CPU per recipient again
# (dev server 6.3-7.3 ms per 1,000 recipients against 3.0-3.3, worker 7.6-7.9 against
# 4.5-5.3). SendGrid takes 1,000 a request, so a page makes up to five.
PAGE_SIZE = 5000
# A page goes out at once, so a rate-limited run's page is at most this much of its rate (at
# 200/s, 2,000 every 10 s): a slow rate is not spent in bursts of thousands.
PAGE_OF_RATE = timedelta(seconds=10)
# Runs keep the page size they started with (`CampaignProgress.page_size`): pages of 1,000
# before `PAGES_OF_2000`, then 2,000 before `PAGES_BY_RATE`.
PAGES_OF_2000 = "pages-of-2000"
PAGES_BY_RATE = "pages-of-5000-or-10s-of-rate"
# Pages sent at once: one page renders and writes its ledger rows while another waits for the
# provider's answer. Runs started before this existed send one page at a time (their history
# has no marker for the patch).
CONCURRENT_PAGES = "concurrent-pages"
# A worker's page processes each start their next page as soon as they finish one only if a
# page is already waiting: with as many pages in flight as processes, each page would wait out
# the round trip through Temporal that schedules the next. Runs started before this send three
# at a time.
PAGES_IN_FLIGHT = 4
FOUR_PAGES_IN_FLIGHT = "four-pages-in-flight"
# Provider outages are waited out, page by page, rather than failing the run.
PAGE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=5)
)
PAGE_TIMEOUT = timedelta(minutes=5)
# A killed worker's page is retried this soon, not after the whole page timeout.
PAGE_HEARTBEAT = timedelta(seconds=10)
STEP_TIMEOUT = timedelta(minutes=30)


def run_workflow_id(campaign_id: str, at: str) -> str:
    return f"campaign:{campaign_id}:{at}"


def page_size(campaign: Campaign) -> int:
    """How many recipients a page of a run of `campaign` takes."""
    rate = campaign.per_second()
    if rate is None:
        return PAGE_SIZE
    return max(1, min(PAGE_SIZE, int(rate * PAGE_OF_RATE.total_seconds())))


@workflow.defn(name="CampaignWorkflow")
class CampaignWorkflow:
    @workflow.init
    def __init__(self, input: CampaignInput) -> None:
        self._progress: CampaignProgress | None = input.progress
        self._paused = input.paused
        self._cancelled = False

    @workflow.run
    async def run(self, input: CampaignInput) -> CampaignReport:
        campaign = input.campaign
        if self._progress is None or campaign is None:
            plan: RunPlan = await workflow.execute_activity(
                "start_campaign_run",
                StartRun(
                    campaign_id=input.campaign_id,
                    run_id=workflow.info().workflow_id,
                    now=workflow.now(),
                ),
                result_type=RunPlan,
                start_to_close_timeout=STEP_TIMEOUT,
                summary=f"snapshot the audience of {input.campaign_id}",
            )
            campaign = plan.campaign
            self._progress = CampaignProgress(
                audience=plan.audience,
                page_size=self._page_size(campaign),
            )
            workflow.upsert_search_attributes([sa.CAMPAIGN.value_set(campaign.id)])
        sent_in_order = self._send_pages if workflow.patched(CONCURRENT_PAGES) else self._one_by_one
        if await sent_in_order(campaign, input.pages_per_run):
            await workflow.wait_condition(workflow.all_handlers_finished)
            workflow.continue_as_new(
                CampaignInput(
                    campaign_id=campaign.id,
                    progress=self._progress,
                    campaign=campaign,
                    paused=self._paused,
                    pages_per_run=input.pages_per_run,
                )
            )
        await self._held_pass(campaign)
        if campaign.follow_up is not None and not self._cancelled:
            await self._follow_up(campaign)
        report: CampaignReport = await workflow.execute_activity(
            "finish_campaign_run",
            FinishRun(
                run_id=workflow.info().workflow_id,
                status="cancelled" if self._cancelled else "completed",
                now=workflow.now(),
            ),
            result_type=CampaignReport,
            start_to_close_timeout=STEP_TIMEOUT,
            summary="report",
        )
        workflow.set_current_details(self._details(report.status))
        return report

    @staticmethod
    def _page_size(campaign: Campaign) -> int:
        """The size of a new run's pages, which it keeps to its end."""
        if workflow.patched(PAGES_BY_RATE):
            return page_size(campaign)
        return 2000 if workflow.patched(PAGES_OF_2000) else 1000

    async def _one_by_one(self, campaign: Campaign, budget: int) -> bool:
        """How runs started before `CONCURRENT_PAGES` send their pages; the same contract."""
        progress = self._progress
        assert progress is not None
        pages = 0
        while progress.next_seq <= progress.audience:
            if not await self._may_go_on():
                break
            result = await self._page(campaign, progress.next_seq)
            if result.next_seq == progress.next_seq:
                break  # the snapshot ends here
            if result.held_until is not None:
                progress.held[progress.next_seq] = result.held_until
            progress.next_seq = result.next_seq
            self._count(result)
            pages += 1
            if pages >= budget or workflow.info().is_continue_as_new_suggested():
                return True
        return False

    async def _send_pages(self, campaign: Campaign, budget: int) -> bool:
        """Send the snapshot's pages, `PAGES_IN_FLIGHT` at a time, in order of their first
        recipient. True when this run's page budget ran out before the snapshot did (time to
        continue as new); every page it started has finished by then."""
        progress = self._progress
        assert progress is not None
        started = 0
        ended = False

        async def lane() -> None:
            nonlocal started, ended
            while not ended and progress.next_seq <= progress.audience:
                if started >= budget or workflow.info().is_continue_as_new_suggested():
                    return
                if not await self._may_go_on():
                    return
                if ended or progress.next_seq > progress.audience or started >= budget:
                    return
                # Snapshot rows are numbered without gaps, so the next page starts a page on.
                from_seq = progress.next_seq
                progress.next_seq += progress.page_size
                started += 1
                await self._reserve_pace(campaign)
                result = await self._send_page(campaign, from_seq)
                if result.next_seq == from_seq:
                    ended = True  # the snapshot ends here
                if result.held_until is not None:
                    progress.held[from_seq] = result.held_until
                self._count(result)

        lanes = PAGES_IN_FLIGHT if workflow.patched(FOUR_PAGES_IN_FLIGHT) else 3
        await asyncio.gather(*(lane() for _ in range(lanes)))
        progress.next_seq = min(progress.next_seq, progress.audience + 1)
        return not ended and not self._cancelled and progress.next_seq <= progress.audience

    async def _reserve_pace(self, campaign: Campaign) -> None:
        """Take the next start the rate limit allows, then wait for it: pages in flight at
        once each take their own slot."""
        progress, rate = self._progress, campaign.per_second()
        if progress is None or rate is None:
            return
        now = workflow.now()
        start = max(now, progress.paced_until or now)
        progress.paced_until = start + timedelta(seconds=progress.page_size / rate)
        if start > now:
            await workflow.sleep(start - now, summary=f"rate limit {campaign.rate_limit}")

    async def _page(self, campaign: Campaign, from_seq: int, follow_up: bool = False) -> PageResult:
        await self._pace(campaign)
        return await self._send_page(campaign, from_seq, follow_up)

    async def _send_page(
        self, campaign: Campaign, from_seq: int, follow_up: bool = False
    ) -> PageResult:
        assert self._progress is not None
        result: PageResult = await workflow.execute_activity(
            "send_campaign_page",
            CampaignPage(
                run_id=workflow.info().workflow_id,
                campaign=campaign,
                from_seq=from_seq,
                limit=self._progress.page_size,
                now=workflow.now(),
                follow_up=follow_up,
            ),
            result_type=PageResult,
            start_to_close_timeout=PAGE_TIMEOUT,
            heartbeat_timeout=PAGE_HEARTBEAT,
            retry_policy=PAGE_RETRY,
            summary=f"{'follow-up' if follow_up else campaign.channel} {campaign.id} from #{from_seq}",
        )
        return result

    async def _pace(self, campaign: Campaign) -> None:
        """Start pages no faster than the rate limit allows, across workers and restarts."""
        progress, rate = self._progress, campaign.per_second()
        if progress is None or rate is None:
            return
        now = workflow.now()
        if progress.paced_until is not None and progress.paced_until > now:
            await workflow.sleep(
                progress.paced_until - now, summary=f"rate limit {campaign.rate_limit}"
            )
        start = max(workflow.now(), progress.paced_until or workflow.now())
        progress.paced_until = start + timedelta(seconds=progress.page_size / rate)

    async def _held_pass(self, campaign: Campaign) -> None:
        """Send the recipients held back by quiet hours or their local send time, in time
        order; a page may be held again (another zone's turn)."""
        assert self._progress is not None
        held = self._progress.held
        while held and not self._cancelled:
            from_seq, until = min(held.items(), key=lambda item: item[1])
            if until > workflow.now():
                await workflow.sleep(
                    until - workflow.now(), summary=f"held until {until:%Y-%m-%d %H:%M} UTC"
                )
            if not await self._may_go_on():
                return
            result = await self._page(campaign, from_seq)
            del held[from_seq]
            if result.held_until is not None:
                held[from_seq] = result.held_until
            workflow.set_current_details(self._details("sending held recipients"))

    async def _follow_up(self, campaign: Campaign) -> None:
        assert self._progress is not None and campaign.follow_up is not None
        if self._progress.follow_up_done:
            return
        await workflow.sleep(
            campaign.follow_up.after, summary=f"follow-up after {campaign.follow_up.after}"
        )
        from_seq = 1
        while from_seq <= self._progress.audience and await self._may_go_on():
            result = await self._page(campaign, from_seq, follow_up=True)
            if result.next_seq == from_seq:
                break
            from_seq = result.next_seq
        self._progress.follow_up_done = True

    async def _may_go_on(self) -> bool:
        if self._paused:
            workflow.set_current_details(self._details("paused"))
        await workflow.wait_condition(lambda: not self._paused or self._cancelled)
        return not self._cancelled

    def _count(self, result: PageResult) -> None:
        assert self._progress is not None
        self._progress.sent += result.sent
        self._progress.suppressed += result.suppressed
        self._progress.failed += result.failed
        workflow.set_current_details(self._details("sending"))

    def _details(self, state: str) -> str:
        p = self._progress
        if p is None:
            return state
        return (
            f"**{p.sent:,} / {p.audience:,} sent** ({state}); "
            f"{p.suppressed:,} suppressed, {p.failed:,} failed"
        )

    @workflow.signal
    def pause(self) -> None:
        self._paused = True

    @workflow.signal
    def resume(self) -> None:
        self._paused = False

    @workflow.signal
    def cancel(self) -> None:
        self._cancelled = True

    @workflow.query
    def progress(self) -> CampaignProgress | None:
        return self._progress


@workflow.defn(name="CampaignScheduleWorkflow")
class CampaignScheduleWorkflow:
    """What a campaign's Temporal Schedule starts: it starts the run as
    `campaign:{id}:{scheduled time}` (the id SPEC §5 fixes; a schedule would append its own
    suffix) and ends, leaving the run on its own."""

    @workflow.run
    async def run(self, campaign_id: str) -> str | None:
        running: str | None = await workflow.execute_activity(
            "running_campaign_run",
            campaign_id,
            result_type=str,
            start_to_close_timeout=STEP_TIMEOUT,
            summary=f"is a run of {campaign_id} still going?",
        )
        if running is not None:
            # Overlap policy "skip": the previous run is still sending.
            workflow.logger.info("skipped: %s is still running", running)
            return None
        scheduled = (
            workflow.info().typed_search_attributes.get(sa.SCHEDULED_START_TIME) or workflow.now()
        )
        workflow_id = run_workflow_id(campaign_id, f"{scheduled:%Y-%m-%dT%H:%M:%SZ}")
        await workflow.start_child_workflow(
            CampaignWorkflow.run,
            CampaignInput(campaign_id=campaign_id),
            id=workflow_id,
            parent_close_policy=ParentClosePolicy.ABANDON,
            static_summary=f"campaign {campaign_id}",
        )
        return workflow_id
