"""One profile's walk through one journey version, as a durable workflow.

The journey graph is interpreted node by node, one small handler per node type (the shape of
samples-python's DSL sample): waits are Temporal timers, messages are activities, and the
version the profile entered with travels in the input, so publishing never changes a running
entry.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from parcours import search_attributes as sa
    from parcours.contracts import (
        DeliveryResult,
        EventRef,
        JourneyInput,
        JourneyPosition,
        SendMessageInput,
        Step,
    )
    from parcours.definitions import EndNode, MessageNode, WaitNode

# Provider outages are retried until they pass: a journey must not lose a message because a
# provider was down for an hour. Permanent refusals come back as a failed delivery instead.
SEND_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=5)
)
SEND_TIMEOUT = timedelta(seconds=60)
# Seen event ids are kept to drop redelivered signals; the bound keeps the state small.
MAX_SEEN_EVENTS = 100


@workflow.defn(name="JourneyWorkflow")
class JourneyWorkflow:
    @workflow.init
    def __init__(self, input: JourneyInput) -> None:
        self._input = input
        self._node: str | None = None
        self._finished = False
        self._path: list[Step] = []
        self._events: list[str] = [input.entry_event.id] if input.entry_event else []
        self._visits: dict[str, int] = {}
        # Set at start by the router; kept in sync only where the profile settles.
        self._indexed_node = input.journey.start

    @workflow.run
    async def run(self, input: JourneyInput) -> JourneyPosition:
        handlers: dict[type, Callable[..., Awaitable[str | None]]] = {
            WaitNode: self._wait,
            MessageNode: self._message,
            EndNode: self._end,
        }
        node_id: str | None = input.journey.start
        while node_id is not None:
            node = input.journey.node(node_id)
            self._enter(node_id, node.type)
            node_id = await handlers[type(node)](node)
        self._finished = True
        return self.position()

    @workflow.signal
    def event(self, event: EventRef) -> None:
        """A later event of this profile. The entry event comes with the start, and the
        signal that carried it is dropped here."""
        if event.id in self._events:
            return
        self._events = [*self._events, event.id][-MAX_SEEN_EVENTS:]

    @workflow.query
    def position(self) -> JourneyPosition:
        return JourneyPosition(
            journey_id=self._input.journey.id,
            version=self._input.version,
            profile_id=self._input.profile_id,
            node=self._node,
            finished=self._finished,
            path=self._path,
            events=self._events,
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

    def _outcome(self, outcome: str) -> None:
        self._path[-1].outcome = outcome

    async def _wait(self, node: WaitNode) -> str:
        self._settle(node.id)
        until = workflow.now() + node.duration
        workflow.set_current_details(
            f"At **{node.id}**: {node.summary()}, until {until:%Y-%m-%d %H:%M} UTC"
        )
        await workflow.sleep(node.duration, summary=node.summary())
        self._outcome("waited")
        return node.next

    async def _message(self, node: MessageNode) -> str:
        workflow.set_current_details(f"At **{node.id}**: {node.summary()}")
        info = workflow.info()
        visit = self._visits[node.id]
        # The key names this node of this entry; a node visited again in a loop gets a new one.
        key = f"{info.workflow_id}/{info.run_id}/{node.id}" + (f"/{visit}" if visit > 1 else "")
        result = await workflow.execute_activity(
            "send_message",
            SendMessageInput(
                idempotency_key=key,
                profile_id=self._input.profile_id,
                channel=node.channel,
                template=node.template,
                journey_id=self._input.journey.id,
                journey_version=self._input.version,
                node_id=node.id,
                workflow_id=info.workflow_id,
                run_id=info.run_id,
                event_id=self._input.entry_event.id if self._input.entry_event else None,
                priority=node.priority,
            ),
            result_type=DeliveryResult,
            start_to_close_timeout=SEND_TIMEOUT,
            retry_policy=SEND_RETRY,
            summary=node.summary(),
        )
        self._outcome(result.status + (f": {result.reason}" if result.reason else ""))
        return node.next

    async def _end(self, node: EndNode) -> None:
        self._settle(node.id)
        workflow.set_current_details(f"Finished at **{node.id}**")
        self._outcome("ended")
        return None
