"""What the Center measures: nodes connected, the revision each runs, how long a change takes
to reach every node, NACKs, and applies and refusals.

Instruments (OpenTelemetry names; the Prometheus endpoint shows the names on the right):
- `fastproxy.center.connected_nodes` {role}: nodes with an open Watch stream
  (`fastproxy_center_connected_nodes`, gauge).
- `fastproxy.center.nodes_at_revision` {revision}: connected nodes by the revision they last
  ACKed, `0` for none yet (`fastproxy_center_nodes_at_revision`, gauge).
- `fastproxy.center.apply_to_last_ack` (s): see `RolloutTracker`
  (`fastproxy_center_apply_to_last_ack_seconds`, histogram).
- `fastproxy.center.nodes_current` {state: current|behind}: connected nodes that ACKed the
  snapshot they are to run under the latest revision, and the others
  (`fastproxy_center_nodes_current`, gauge). A node may be current at an older revision.
- `fastproxy.center.nacks` {service}: NACKs received (`fastproxy_center_nacks_total`).
- `fastproxy.center.applies` {action: apply|rollback, outcome: applied|unchanged}: changes
  accepted (`fastproxy_center_applies_total`).
- `fastproxy.center.refusals` {action: refused_apply|refused_rollback|denied}: changes
  refused and admin calls denied for their credential (`fastproxy_center_refusals_total`).

Everything is recorded on the event loop's thread. The gauges are read by the metrics
reader's thread at collection, so what they read is a mapping replaced whole on every change,
never one being updated.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from opentelemetry import metrics as otel_metrics

from center_svc.nodes import NodeSession
from fastproxy.telemetry.metrics import meter
from fastproxy.v1 import policy_pb2

METER_NAME = "fastproxy.center"
# A change that some node never ACKs (it NACKed, or hangs) must not be tracked forever.
MAX_TRACKED_ROLLOUTS = 32
APPLY_TO_LAST_ACK_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                             30.0, 60.0, 120.0, 300.0]

ROLE_LABELS = {policy_pb2.ROLE_IN: "in", policy_pb2.ROLE_OUT: "out",
               policy_pb2.ROLE_CLIENT: "client", policy_pb2.ROLE_APP: "app"}


@dataclass(slots=True, eq=False)
class _Rollout:
    revision: int
    applied_at: float
    waiting: set[NodeSession]
    last_ack: float | None = None


@dataclass(slots=True)
class RolloutTracker:
    """The time from an apply to the last ACK, measured per applied revision R, precisely:

    - The set is fixed at the apply: the nodes connected at that moment whose view changed,
      i.e. whose snapshot for R differs from the last one they were sent (a node whose
      scoped policy R does not touch, or that connects later, is not waited for).
    - A node leaves the set when it ACKs R or any later revision (it then runs R's content
      or newer), NACKs R or later (it will never run R), or disconnects.
    - When the set is empty and at least one node ACKed, one sample is the time from the
      apply to the last of those ACKs. A revision that changed no node's view, or that no
      node of the set ACKed, gives no sample.
    At most `MAX_TRACKED_ROLLOUTS` revisions are waited on at once; the oldest is dropped
    without a sample.
    """

    clock: Callable[[], float] = time.monotonic
    _rollouts: list[_Rollout] = field(default_factory=list)

    def started(self, revision: int, changed: Iterable[NodeSession]) -> None:
        waiting = set(changed)
        if not waiting:
            return
        self._rollouts.append(_Rollout(revision, self.clock(), waiting))
        del self._rollouts[:-MAX_TRACKED_ROLLOUTS]

    def acked(self, session: NodeSession, revision: int) -> list[float]:
        """The samples (seconds) completed by this ACK."""
        return self._leave(session, revision, acked=True)

    def nacked(self, session: NodeSession, revision: int) -> list[float]:
        return self._leave(session, revision, acked=False)

    def disconnected(self, session: NodeSession) -> list[float]:
        return self._leave(session, None, acked=False)

    @property
    def pending(self) -> list[int]:
        """The revisions still waited on, oldest first."""
        return [r.revision for r in self._rollouts]

    def _leave(self, session: NodeSession, revision: int | None, *, acked: bool
               ) -> list[float]:
        now = self.clock()
        samples: list[float] = []
        kept: list[_Rollout] = []
        for rollout in self._rollouts:
            covers = revision is None or revision >= rollout.revision
            if covers and session in rollout.waiting:
                rollout.waiting.discard(session)
                if acked:
                    rollout.last_ack = now
            if rollout.waiting:
                kept.append(rollout)
            elif rollout.last_ack is not None:
                samples.append(rollout.last_ack - rollout.applied_at)
        self._rollouts = kept
        return samples


class CenterMetrics:
    """The Center's instruments, fed by the Watch streams and the apply path."""

    def __init__(self, provider_meter: otel_metrics.Meter | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        m = provider_meter or meter(METER_NAME)
        self.rollouts = RolloutTracker(clock)
        self._by_role: Mapping[str, int] = {}
        self._by_revision: Mapping[int, int] = {}
        self._by_state: Mapping[str, int] = {}
        m.create_observable_gauge(
            "fastproxy.center.nodes_current", unit="{node}",
            description="Connected nodes that run the latest content for them (current) or "
                        "not yet (behind)",
            callbacks=[self._observe_states])
        m.create_observable_gauge(
            "fastproxy.center.connected_nodes", unit="{node}",
            description="Nodes with an open WatchPolicy stream, by role",
            callbacks=[self._observe_roles])
        m.create_observable_gauge(
            "fastproxy.center.nodes_at_revision", unit="{node}",
            description="Connected nodes by the policy revision they last ACKed (0: none)",
            callbacks=[self._observe_revisions])
        self.apply_to_last_ack = m.create_histogram(
            "fastproxy.center.apply_to_last_ack", unit="s",
            description="Time from applying a revision until the last node whose view it "
                        "changed ACKed it",
            explicit_bucket_boundaries_advisory=APPLY_TO_LAST_ACK_BUCKETS)
        self.nacks = m.create_counter(
            "fastproxy.center.nacks", unit="{nack}",
            description="Snapshots NACKed by nodes, by the node's service")
        self.applies = m.create_counter(
            "fastproxy.center.applies", unit="{change}",
            description="Applies and rollbacks accepted, by action and outcome")
        self.refusals = m.create_counter(
            "fastproxy.center.refusals", unit="{change}",
            description="Applies and rollbacks refused, and admin calls denied")

    # -- nodes -------------------------------------------------------------------------------

    def node_connected(self, session: NodeSession) -> None:
        self._count_role(session, +1)
        self._count_revision(session.acked_revision, +1)

    def node_currency(self, current: bool, delta: int) -> None:
        """A node entered (+1) or left (-1) the current or behind state."""
        state = "current" if current else "behind"
        counts = dict(self._by_state)
        counts[state] = counts.get(state, 0) + delta
        self._by_state = counts

    def node_disconnected(self, session: NodeSession) -> None:
        self._count_role(session, -1)
        self._count_revision(session.acked_revision, -1)
        self._record(self.rollouts.disconnected(session))

    def node_acked(self, session: NodeSession, previous_revision: int) -> None:
        """After `session.acked_revision` changed from `previous_revision`."""
        if session.acked_revision != previous_revision:
            self._count_revision(previous_revision, -1)
            self._count_revision(session.acked_revision, +1)
        self._record(self.rollouts.acked(session, session.acked_revision))

    def node_nacked(self, session: NodeSession) -> None:
        self.nacks.add(1, {"service": session.service})
        self._record(self.rollouts.nacked(session, session.nacked_revision))

    # -- changes -----------------------------------------------------------------------------

    def applied(self, action: str, revision: int | None, changed: Iterable[NodeSession]
                ) -> None:
        """A change accepted; `revision` is None when it was identical to the latest."""
        self.applies.add(1, {"action": str(action),
                             "outcome": "unchanged" if revision is None else "applied"})
        if revision is not None:
            self.rollouts.started(revision, changed)

    def refused(self, action: str) -> None:
        self.refusals.add(1, {"action": str(action)})

    # -- internals ---------------------------------------------------------------------------

    def _record(self, samples: list[float]) -> None:
        for seconds in samples:
            self.apply_to_last_ack.record(seconds)

    def _count_role(self, session: NodeSession, delta: int) -> None:
        role = ROLE_LABELS.get(session.role, "unknown")
        counts = dict(self._by_role)
        counts[role] = counts.get(role, 0) + delta
        self._by_role = counts

    def _count_revision(self, revision: int, delta: int) -> None:
        counts = dict(self._by_revision)
        counts[revision] = counts.get(revision, 0) + delta
        if counts[revision] <= 0:
            del counts[revision]  # a revision no node runs any more is no series at all
        self._by_revision = counts

    def _observe_roles(self, _options: otel_metrics.CallbackOptions
                       ) -> Iterable[otel_metrics.Observation]:
        # every role, 0 included: a gauge that disappears reads as "no data", not "no nodes"
        counts = self._by_role
        return [otel_metrics.Observation(counts.get(role, 0), {"role": role})
                for role in ROLE_LABELS.values()]

    def _observe_states(self, _options: otel_metrics.CallbackOptions
                        ) -> Iterable[otel_metrics.Observation]:
        counts = self._by_state
        return [otel_metrics.Observation(counts.get(state, 0), {"state": state})
                for state in ("current", "behind")]

    def _observe_revisions(self, _options: otel_metrics.CallbackOptions
                           ) -> Iterable[otel_metrics.Observation]:
        return [otel_metrics.Observation(count, {"revision": str(revision)})
                for revision, count in sorted(self._by_revision.items())]
