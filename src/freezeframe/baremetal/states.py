"""A bare-metal node's provision states, with Ironic's words: one table of
``(state, event) -> state``, run on automaton, persisted through the one mechanism.

Seed 004's states and its eleven transitions, exactly::

    active          -snapshot-> snapshotting     prepare boot from the agent image, reboot
    snapshotting    -fail->     snapshot failed  on error
    snapshotting    -wait->     snapshot wait    wait for the agent (ramdisk) to be alive
    snapshot wait   -resume->   snapshotting     stream the image, upload it
    snapshot wait   -fail->     snapshot failed  on timeout
    snapshot wait   -abort->    snapshot failed  on an abort request
    snapshotting    -done->     active           snapshot complete
    snapshot failed -abort->    active           abort a failed snapshot
    snapshot failed -snapshot-> snapshotting     retrigger a failed snapshot
    snapshot wait   -deleted->  deleting         abort the snapshot and undeploy
    snapshot failed -deleted->  deleting         abort and undeploy

beside what the other verbs need (Ironic's, minus deploy and cleaning: Freezeframe's drivers
neither deploy nor clean, and erase nothing — ``provide`` and ``deleted`` go straight on):
enroll -manage-> verifying -done-> manageable (-fail-> enroll), manageable -provide->
available -manage-> manageable, manageable -adopt-> adopting -done-> active (-fail-> adopt
failed, which may adopt again or manage), active -deleted-> deleting -done-> available (-fail->
error -deleted-> deleting).

Users send the verbs (``VERBS``); the conductor sends the rest (done, fail, wait, resume).
``provision(session, node_id, frm, event)`` is the one transition function: the event is run
on a copy of the automaton machine started at ``frm`` (an event the state does not take is
``errors.InvalidState`` naming the verbs it does take), then the move is one compare-and-set of
``provision_state`` (and ``target_provision_state``) through ``common.statemachine``.
"""

from __future__ import annotations

import enum
from typing import Any

from automaton import exceptions as automaton_errors
from automaton import machines
from sqlalchemy.orm import Session

from freezeframe.baremetal.model import Node
from freezeframe.common import errors
from freezeframe.common.statemachine import Machine


class ProvisionState(enum.StrEnum):
    ENROLL = "enroll"
    VERIFYING = "verifying"
    MANAGEABLE = "manageable"
    AVAILABLE = "available"
    ACTIVE = "active"
    ADOPTING = "adopting"
    ADOPTFAIL = "adopt failed"
    DELETING = "deleting"
    ERROR = "error"
    SNAPSHOTTING = "snapshotting"
    SNAPSHOTWAIT = "snapshot wait"
    SNAPSHOTFAIL = "snapshot failed"


P = ProvisionState

# The verbs a user may send (PUT /v1/nodes/{node}/states/provision {"target": verb}).
VERBS = ("manage", "provide", "adopt", "abort", "deleted", "snapshot")
# The conductor's own events.
INTERNAL = ("done", "fail", "wait", "resume")

SEED_004: tuple[tuple[ProvisionState, str, ProvisionState], ...] = (
    (P.ACTIVE, "snapshot", P.SNAPSHOTTING),
    (P.SNAPSHOTTING, "fail", P.SNAPSHOTFAIL),
    (P.SNAPSHOTTING, "wait", P.SNAPSHOTWAIT),
    (P.SNAPSHOTWAIT, "resume", P.SNAPSHOTTING),
    (P.SNAPSHOTWAIT, "fail", P.SNAPSHOTFAIL),
    (P.SNAPSHOTWAIT, "abort", P.SNAPSHOTFAIL),
    (P.SNAPSHOTTING, "done", P.ACTIVE),
    (P.SNAPSHOTFAIL, "abort", P.ACTIVE),
    (P.SNAPSHOTFAIL, "snapshot", P.SNAPSHOTTING),
    (P.SNAPSHOTWAIT, "deleted", P.DELETING),
    (P.SNAPSHOTFAIL, "deleted", P.DELETING),
)
OTHERS: tuple[tuple[ProvisionState, str, ProvisionState], ...] = (
    (P.ENROLL, "manage", P.VERIFYING),
    (P.VERIFYING, "done", P.MANAGEABLE),
    (P.VERIFYING, "fail", P.ENROLL),
    (P.MANAGEABLE, "manage", P.VERIFYING),       # Ironic re-verifies a manageable node
    (P.MANAGEABLE, "provide", P.AVAILABLE),
    (P.AVAILABLE, "manage", P.MANAGEABLE),
    (P.MANAGEABLE, "adopt", P.ADOPTING),
    (P.ADOPTING, "done", P.ACTIVE),
    (P.ADOPTING, "fail", P.ADOPTFAIL),
    (P.ADOPTFAIL, "adopt", P.ADOPTING),
    (P.ADOPTFAIL, "manage", P.MANAGEABLE),
    (P.ACTIVE, "deleted", P.DELETING),
    (P.DELETING, "done", P.AVAILABLE),
    (P.DELETING, "fail", P.ERROR),
    (P.ERROR, "deleted", P.DELETING),
)
TABLE = SEED_004 + OTHERS

# Where a node in a transitional state is headed (Ironic's target_provision_state); None in a
# stable state.
TARGETS: dict[ProvisionState, ProvisionState] = {
    P.VERIFYING: P.MANAGEABLE, P.ADOPTING: P.ACTIVE, P.DELETING: P.AVAILABLE,
    P.SNAPSHOTTING: P.ACTIVE, P.SNAPSHOTWAIT: P.ACTIVE,
}
STABLE = frozenset({P.ENROLL, P.MANAGEABLE, P.AVAILABLE, P.ACTIVE, P.ADOPTFAIL, P.ERROR, P.SNAPSHOTFAIL})
# States in which a node's agent may look up (Ironic: the *WAIT states; ours: snapshot wait
# and snapshotting, where the agent streams).
LOOKUP_ALLOWED = frozenset({P.SNAPSHOTWAIT, P.SNAPSHOTTING})


def _build() -> machines.FiniteMachine:
    fsm = machines.FiniteMachine()
    for state in ProvisionState:
        fsm.add_state(str(state))
    for src, event, dst in TABLE:
        fsm.add_transition(str(src), str(dst), event)
    fsm.freeze()
    return fsm


FSM = _build()
TRANSITIONS: frozenset[tuple[ProvisionState, ProvisionState]] = frozenset((src, dst) for src, _, dst in TABLE)

PROVISION: Machine[ProvisionState] = Machine(
    "baremetal_node", ProvisionState, TRANSITIONS, table=Node.__table__, column="provision_state",
    changed_at="provision_updated_at", label="Provision state", noun="Node",
    not_found="Node {id} could not be found.")


def events_from(state: str) -> tuple[str, ...]:
    """The events ``state`` takes, in table order."""
    return tuple(event for src, event, _ in TABLE if src == state)


def verbs_from(state: str) -> tuple[str, ...]:
    """The user verbs ``state`` takes (what a 400 for a wrong verb names)."""
    return tuple(e for e in events_from(state) if e in VERBS)


def target_of(state: str, event: str) -> ProvisionState:
    """Where ``event`` takes a node in ``state``: ``errors.InvalidState`` naming the allowed verbs
    when it does not take it."""
    fsm = FSM.copy(shallow=True)
    try:
        fsm.initialize(str(state))
        fsm.process_event(event)
    except (automaton_errors.NotFound, automaton_errors.InvalidState, KeyError):
        allowed = verbs_from(state)
        raise errors.InvalidState(
            f'The requested action "{event}" can not be performed on a node in state "{state}"'
            + (f"; allowed: {', '.join(allowed)}." if allowed else "; it takes no verb.")) from None
    return ProvisionState(fsm.current_state)


def provision(session: Session, node_id: str, frm: str, event: str, *, reason: str = "",
              values: dict[str, Any] | None = None) -> ProvisionState:
    """Move node ``node_id`` from ``frm`` by ``event`` (compare-and-set: a node no longer in
    ``frm`` is a ``LostRace``): sets ``target_provision_state``; a ``fail`` records ``reason``
    as ``last_error``. Returns the new state."""
    to = target_of(frm, event)
    changes: dict[str, Any] = {"target_provision_state": TARGETS.get(to)}
    if event == "fail":
        changes["last_error"] = reason or f"failed in {frm}"
    changes.update(values or {})
    PROVISION.transition(session, node_id, frm, to, reason=reason or event, values=changes)
    return to
