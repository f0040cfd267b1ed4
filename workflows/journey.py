"""One profile's walk through one journey version, as a durable workflow.

The journey graph is interpreted node by node, one small handler per node type (the shape of
samples-python's DSL sample): waits are Temporal timers, everything that reads or changes the
world is an activity, and the version the profile entered with travels in the input, so
publishing never changes a running entry. Later events of the profile arrive by signal; an
`exit_when` event ends the entry wherever it is.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from parcours import search_attributes as sa
    from parcours.contracts import (
        DeliveryResult,
        EntryFinished,
        EventRef,
        JourneyInput,
        JourneyPosition,
        Resume,
        RulesInput,
        SendMessageInput,
        Step,
        UpdateProfileInput,
        WaitUntilInput,
        WebhookInput,
        WebhookResult,
    )
    from parcours.definitions import (
        ConditionNode,
        EndNode,
        MessageNode,
        SplitNode,
        UpdateProfileNode,
        WaitForEventNode,
        WaitNode,
        WebhookNode,
    )

# Provider outages are retried until they pass: a journey must not lose a message because a
# provider was down for an hour. Permanent refusals come back as a failed delivery instead.
SEND_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=5)
)
SEND_TIMEOUT = timedelta(seconds=60)
STEP_TIMEOUT = timedelta(seconds=30)
# An external system gets a few tries, spread over minutes, before the journey moves on.
WEBHOOK_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2), maximum_interval=timedelta(minutes=1), maximum_attempts=5
)
# Seen event ids are kept to drop redelivered signals; the bound keeps the state small.
MAX_SEEN_EVENTS = 100
# The path a continued entry keeps: enough to read where it has been lately.
MAX_PATH_CARRIED = 50
# Patches (see docs/changing-workflows.md): entries recorded before each change replay
# without it.
CONTINUE_WHILE_WAITING = "continue-as-new-while-waiting"
WAIT_READS_EARLY_EVENTS = "wait-for-event-reads-events-that-came-with-the-start"


# Outside Temporal's sandbox: it would import this module afresh for every entry and run
# code in it for every payload, about a third of what an entry cost the worker. Everything
# this module imports is passed through the sandbox anyway, so the sandbox guarded only this
# file's own code; tests/test_replay.py still replays every journey history inside it, so a
# non-deterministic call added here fails CI as it did.
@workflow.defn(name="JourneyWorkflow", sandboxed=False)
class JourneyWorkflow:
    @workflow.init
    def __init__(self, input: JourneyInput) -> None:
        self._input = input
        self._node: str | None = None
        self._finished = False
        self._exit_reason: str | None = None
        # What reports group exits by: the exit event's type, the segment left, the stop.
        self._exit: str | None = None
        self._path: list[Step] = []
        self._seen: list[str] = [input.entry_event.id] if input.entry_event else []
        # Events that arrived since the entry began, for `wait_for_event` to read in order.
        self._inbox: list[EventRef] = []
        self._visits: dict[str, int] = {}
        self._exits = {e.event for e in input.journey.exit_when if e.event}
        self._segment_exits = input.journey.exits_on_segments()
        # Set at start by the router; kept in sync only where the profile settles.
        self._indexed_node = input.journey.start
        # A `wait_for_event` carried over from the previous run: its deadline.
        self._waiting_until: datetime | None = None
        # The finish the last message's send recorded, when the entry was to end right after.
        self._recorded: EntryFinished | None = None
        if input.resume is not None:
            self._seen = input.resume.seen
            self._visits = input.resume.visits
            self._path = input.resume.path
            self._indexed_node = input.resume.indexed_node
            self._waiting_until = input.resume.waiting_until
            for event in input.resume.unread:
                self._receive(event)

    @workflow.run
    async def run(self, input: JourneyInput) -> JourneyPosition:
        handlers: dict[type, Callable[[Any], Awaitable[str | None]]] = {
            WaitNode: self._wait,
            WaitForEventNode: self._wait_for_event,
            ConditionNode: self._condition,
            SplitNode: self._split,
            MessageNode: self._message,
            UpdateProfileNode: self._update_profile,
            WebhookNode: self._webhook,
            EndNode: self._end,
        }
        node_id: str | None = input.resume.node if input.resume else input.journey.start
        # A wait carried over from the previous run was entered there already.
        entered = self._waiting_until is not None
        while node_id is not None:
            node = input.journey.node(node_id)
            if not entered:
                # An exit heard in this same task is acted on here, not lost to a new run.
                if self._exit_reason is None and self._history_too_long():
                    self._continue_as_new(node_id)
                self._enter(node_id, node.type)
            entered = False
            step = asyncio.ensure_future(handlers[type(node)](node))
            await workflow.wait_condition(
                lambda step=step: step.done() or self._exit_reason is not None  # type: ignore[misc]
            )
            if not step.done():
                # An exit event: leave now, cancelling the timer or activity under way.
                step.cancel()
                with contextlib.suppress(asyncio.CancelledError, ActivityError):
                    await step
                self._outcome(f"exited: {self._exit_reason}")
                self._settle_finished(node_id)
                break
            node_id = step.result()
        self._finished = True
        if input.record_finish:
            await self._record_finish()
        return self.position()

    async def _record_finish(self) -> None:
        """One row per entry for reports (`journeys show`): a local activity, so it costs no
        round trip to the server, and no Temporal action per node. None at all when the last
        message's send recorded this same finish."""
        assert self._node is not None
        finish = self._finish(self._node, self._exit, self._visits)
        recorded = self._recorded
        if recorded is not None and (recorded.node, recorded.exit, recorded.visits) == (
            finish.node,
            finish.exit,
            finish.visits,
        ):
            return
        await workflow.execute_local_activity(
            "record_finish",
            finish,
            start_to_close_timeout=STEP_TIMEOUT,
            summary="record the finish",
        )

    def _finish(self, node_id: str, exit: str | None, visits: dict[str, int]) -> EntryFinished:
        info = workflow.info()
        return EntryFinished(
            workflow_id=info.workflow_id,
            first_run_id=info.first_execution_run_id,
            journey_id=self._input.journey.id,
            version=self._input.version,
            profile_id=self._input.profile_id,
            node=node_id,
            exit=exit,
            visits=visits,
            finished_at=workflow.now(),
        )

    def _finish_after(self, node: MessageNode) -> EntryFinished | None:
        """The finish to record with this message's send, when the entry ends right after it:
        at the `end` node, entered once more."""
        following = self._input.journey.node(node.next)
        if not self._input.record_finish or not isinstance(following, EndNode):
            return None
        visits = {**self._visits, following.id: self._visits.get(following.id, 0) + 1}
        return self._finish(following.id, None, visits)

    def _history_too_long(self) -> bool:
        info = workflow.info()
        return (
            info.is_continue_as_new_suggested()
            or info.get_current_history_length() > self._input.history_limit
        )

    def _continue_as_new(
        self, node_id: str, waiting_until: datetime | None = None, unread: Sequence[EventRef] = ()
    ) -> None:
        """Carry the entry into a fresh history at `node_id`: the ids it has seen, the visits
        that keep idempotency keys apart, the last steps of its path and, in the middle of a
        `wait_for_event`, its deadline and the events it has not read yet."""
        resume = Resume(
            node=node_id,
            indexed_node=self._indexed_node,
            seen=self._seen,
            visits=self._visits,
            path=self._path[-MAX_PATH_CARRIED:],
            waiting_until=waiting_until,
            unread=list(unread),
        )
        workflow.continue_as_new(self._input.model_copy(update={"resume": resume}))

    @workflow.signal
    def event(self, event: EventRef) -> None:
        """A later event of this profile. Ids already seen (the entry event, a redelivered
        event) are dropped."""
        if event.id in self._seen:
            return
        self._seen = [*self._seen, event.id][-MAX_SEEN_EVENTS:]
        self._receive(event)

    def _receive(self, event: EventRef) -> None:
        if event.type in self._exits:
            self._leave(f"{event.type} ({event.id})", event.type)
        self._inbox.append(event)

    def _leave(self, reason: str, exit: str) -> None:
        if self._exit_reason is None:
            self._exit_reason, self._exit = reason, exit

    @workflow.signal
    def segment_exited(self, segment_id: str) -> None:
        """The profile left a segment; an `exit_when: segment_exited` on it ends the entry."""
        if segment_id in self._segment_exits:
            self._leave(f"left segment {segment_id}", f"left segment {segment_id}")

    @workflow.signal
    def stop(self, reason: str) -> None:
        """The journey was stopped: leave wherever the profile is."""
        self._leave(reason, reason)

    @workflow.query
    def position(self) -> JourneyPosition:
        return JourneyPosition(
            journey_id=self._input.journey.id,
            version=self._input.version,
            profile_id=self._input.profile_id,
            node=self._node,
            finished=self._finished,
            exit_reason=self._exit_reason,
            path=self._path,
            events=self._seen,
        )

    def _enter(self, node_id: str, node_type: str) -> None:
        self._node = node_id
        self._visits[node_id] = self._visits.get(node_id, 0) + 1
        self._path.append(Step(node=node_id, type=node_type, entered_at=workflow.now()))

    def _settle(self, node_id: str) -> None:
        """Index the node where the profile will stay a while (a wait, the end), so the UI can
        list who is where; passing through a message costs no extra Temporal action."""
        if self._indexed_node != node_id:
            self._indexed_node = node_id
            workflow.upsert_search_attributes([sa.NODE.value_set(node_id)])

    def _settle_finished(self, node_id: str) -> None:
        """Where an entry ended: in the store for entries that record their finish (so
        ParcoursNode names where running entries are, and ending costs no extra action);
        entries started before that index it, as they did."""
        if not self._input.record_finish:
            self._settle(node_id)

    def _outcome(self, outcome: str) -> None:
        self._path[-1].outcome = outcome

    @property
    def _entry_event_id(self) -> str | None:
        return self._input.entry_event.id if self._input.entry_event else None

    async def _wait(self, node: WaitNode) -> str:
        self._settle(node.id)
        if node.duration is not None:
            until: datetime | None = workflow.now() + node.duration
        else:
            # The profile's zone or date attribute is read now; the answer is in the history.
            until = await workflow.execute_activity(
                "resolve_wait",
                WaitUntilInput(
                    profile_id=self._input.profile_id,
                    now=workflow.now(),
                    until=node.until,
                    attribute=node.until_attribute,
                ),
                result_type=datetime | None,  # type: ignore[arg-type]
                start_to_close_timeout=STEP_TIMEOUT,
                summary=f"when: {node.summary()}",
            )
        if until is None or until <= workflow.now():
            self._outcome("nothing to wait for")
            return node.next
        workflow.set_current_details(
            f"At **{node.id}**: {node.summary()}, until {until:%Y-%m-%d %H:%M} UTC"
        )
        await workflow.sleep(until - workflow.now(), summary=node.summary())
        self._outcome("waited")
        return node.next

    async def _wait_for_event(self, node: WaitForEventNode) -> str:
        self._settle(node.id)
        carried, self._waiting_until = self._waiting_until, None
        deadline = carried or workflow.now() + node.timeout
        workflow.set_current_details(
            f"At **{node.id}**: {node.summary()}, until {deadline:%Y-%m-%d %H:%M} UTC"
        )
        # Only events after this point count: "the profile's next matching event". A wait
        # carried over from the previous run starts with the events that run had not read,
        # and a wait that opens the entry with every event since the entry event: one sent
        # right after it reaches the workflow with its start, before this node is entered.
        opening = self._input.resume is None and len(self._path) == 1
        cursor = (
            0
            if carried or (opening and workflow.patched(WAIT_READS_EARLY_EVENTS))
            else len(self._inbox)
        )
        while True:
            remaining = deadline - workflow.now()
            try:
                if remaining <= timedelta(0):
                    raise TimeoutError
                await workflow.wait_condition(
                    lambda seen=cursor: len(self._inbox) > seen,  # type: ignore[misc]
                    timeout=remaining,
                    timeout_summary=f"{node.event} timeout {node.id}",
                )
            except TimeoutError:
                self._outcome("timed out")
                return node.on_timeout
            while cursor < len(self._inbox):
                event = self._inbox[cursor]
                cursor += 1
                if event.type == node.event and (
                    node.where is None or await self._first_match([node.where], event.id) == 0
                ):
                    self._outcome(f"{event.type} ({event.id})")
                    return node.on_event
            # Events that did not match grow the history while the wait goes on (for weeks,
            # maybe): carry the wait into a fresh history once it is long.
            if (
                self._exit_reason is None
                and self._history_too_long()
                and workflow.patched(CONTINUE_WHILE_WAITING)
            ):
                # Signal handlers here are synchronous, but wait for them as the SDK advises:
                # every event received so far is then in the inbox, and carried over.
                await workflow.wait_condition(workflow.all_handlers_finished)
                if self._exit_reason is None:
                    self._continue_as_new(node.id, deadline, self._inbox[cursor:])

    async def _condition(self, node: ConditionNode) -> str:
        index = await self._first_match([b.when for b in node.branches], self._entry_event_id)
        self._outcome(f"branch {index}" if index >= 0 else "default")
        return node.branches[index].next if index >= 0 else node.default

    async def _first_match(self, rules: list[Any], event_id: str | None) -> int:
        result: int = await workflow.execute_activity(
            "evaluate_rules",
            RulesInput(profile_id=self._input.profile_id, rules=rules, event_id=event_id),
            result_type=int,
            start_to_close_timeout=STEP_TIMEOUT,
            summary=f"check {len(rules)} rule{'s' if len(rules) > 1 else ''}",
        )
        return result

    async def _split(self, node: SplitNode) -> str:
        chosen = node.choose(self._input.journey.id, self._input.version, self._input.profile_id)
        self._outcome(f"variant {chosen.name}")
        return chosen.next

    async def _message(self, node: MessageNode) -> str:
        workflow.set_current_details(f"At **{node.id}**: {node.summary()}")
        info = workflow.info()
        visit = self._visits[node.id]
        # The key names this node of this entry; a node visited again in a loop gets a new one.
        key = f"{info.workflow_id}/{info.run_id}/{node.id}" + (f"/{visit}" if visit > 1 else "")
        request = SendMessageInput(
            idempotency_key=key,
            profile_id=self._input.profile_id,
            channel=node.channel,
            template=node.template,
            journey_id=self._input.journey.id,
            journey_version=self._input.version,
            node_id=node.id,
            workflow_id=info.workflow_id,
            run_id=info.run_id,
            event_id=self._entry_event_id,
            priority=node.priority,
            respect_quiet_hours=node.respect_quiet_hours,
        )
        result = await self._send(request, node)
        # Quiet hours hold a marketing message: a durable timer until the window opens, then
        # the same delivery (same key) is asked for again.
        while result.not_before is not None:
            workflow.set_current_details(f"At **{node.id}**: held by quiet hours")
            await workflow.sleep(
                max(result.not_before - workflow.now(), timedelta(0)),
                summary=f"quiet hours until {result.not_before:%Y-%m-%d %H:%M} UTC",
            )
            result = await self._send(request, node)
        self._outcome(result.status + (f": {result.reason}" if result.reason else ""))
        return node.next

    async def _send(self, request: SendMessageInput, node: MessageNode) -> DeliveryResult:
        finish = self._finish_after(node)
        result: DeliveryResult = await workflow.execute_activity(
            "send_message",
            request.model_copy(update={"now": workflow.now(), "finish": finish}),
            result_type=DeliveryResult,
            start_to_close_timeout=SEND_TIMEOUT,
            retry_policy=SEND_RETRY,
            summary=node.summary(),
        )
        if result.finish_recorded:
            self._recorded = finish
        return result

    async def _update_profile(self, node: UpdateProfileNode) -> str:
        await workflow.execute_activity(
            "update_profile",
            UpdateProfileInput(profile_id=self._input.profile_id, set=node.set, unset=node.unset),
            start_to_close_timeout=STEP_TIMEOUT,
            summary=node.summary(),
        )
        self._outcome("updated")
        return node.next

    async def _webhook(self, node: WebhookNode) -> str:
        info = workflow.info()
        try:
            result = await workflow.execute_activity(
                "call_webhook",
                WebhookInput(
                    idempotency_key=f"{info.workflow_id}/{info.run_id}/{node.id}/{self._visits[node.id]}",
                    profile_id=self._input.profile_id,
                    journey_id=self._input.journey.id,
                    journey_version=self._input.version,
                    node_id=node.id,
                    url=node.url,
                    method=node.method,
                    body=node.body,
                    headers=node.headers,
                    timeout_seconds=node.timeout.total_seconds(),
                    event_id=self._entry_event_id,
                ),
                result_type=WebhookResult,
                start_to_close_timeout=node.timeout + timedelta(seconds=5),
                retry_policy=WEBHOOK_RETRY,
                summary=node.summary(),
            )
            self._outcome(f"status {result.status}" + (f": {result.error}" if result.error else ""))
        except ActivityError as exc:
            # The external system stayed down through every retry: note it and go on.
            self._outcome(f"failed: {exc.cause or exc}")
        return node.next

    async def _end(self, node: EndNode) -> None:
        self._settle_finished(node.id)
        workflow.set_current_details(f"Finished at **{node.id}**")
        self._outcome("ended")
        return None
