"""One state-machine mechanism for every machine: a declared table and one transition function.

A machine is declared once, at module level, beside its states::

    IMAGE = Machine("image", ImageStatus, TRANSITIONS, table=Image.__table__, column="status",
                    changed_at="status_changed_at", label="Image status", noun="Image")

and every change of that column goes through ``IMAGE.transition(session, id, frm, to, ...)``:

1. the move is checked against the table (and the guard of a numbered state such as
   ``UPLOAD_<n>_COMPLETE``, whose n may only rise): an invalid move is ``errors.InvalidState``
   naming the machine, both states and the moves allowed from ``frm`` — nothing is written;
2. it is written as one compare-and-set, ``UPDATE ... SET <column> = :to, <changed_at> = now
   WHERE id = :id AND <column> = :from`` (plus any extra ``where`` the caller owns, such as an
   image's upload id), so of two racing writers exactly one wins; the other gets ``LostRace``
   (a 409), or ``NotFound`` when the row is gone;
3. a history row is added when the machine keeps one (workflows: ``workflow_events``);
4. once the transaction commits, the move is logged and counted per machine and per
   ``(from, to)`` (``COUNTS``-style counters, ``counts()`` for all of them). A move whose
   transaction rolls back is neither logged nor counted: it never happened.

A state of ``None`` is allowed when the table uses it (a server's task_state: no task).
"""

from __future__ import annotations

import collections
import datetime as dt
import enum
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterable, Mapping, TypeVar

from sqlalchemy import Table, event, select, update
from sqlalchemy.orm import Session

from freezeframe.common import errors
from freezeframe.common.timeutil import utcnow

LOG = logging.getLogger(__name__)

S = TypeVar("S", bound=enum.StrEnum)

# Every machine declared in this process, by name (for /healthcheck?detailed, metrics, docs).
MACHINES: dict[str, "Machine[Any]"] = {}
_PENDING = "freezeframe.statemachine.pending"   # Session.info key: moves waiting for the commit
# Session.info key: a callable(machine, move) told of every committed move (the database's
# metrics, ``common/metrics.py``, set through its sessionmaker).
SINK = "freezeframe.statemachine.sink"


class LostRace(errors.InvalidState):
    """The move was allowed, but another writer changed the row first (0 rows updated).

    An ``InvalidState`` (so a 409) — the move is no longer possible from what the row is now."""


@dataclass(frozen=True)
class Numbered:
    """A family of states written with a number in them, declared as one enum member whose
    value holds ``<n>``: ``UPLOAD_<n>_COMPLETE`` is stored as ``UPLOAD_10_COMPLETE``, ... .

    The table names the family (the member); ``lowest``..``highest`` bound n, and with
    ``rising`` a move from the family to itself needs a higher n."""

    state: enum.StrEnum
    lowest: int = 1
    highest: int = 99
    rising: bool = True
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        head, sep, tail = self.state.value.partition("<n>")
        if not sep:
            raise ValueError(f"numbered state {self.state.value!r} has no <n> in it")
        object.__setattr__(self, "pattern", re.compile(rf"^{re.escape(head)}(\d+){re.escape(tail)}$"))

    def format(self, n: int) -> str:
        return self.state.value.replace("<n>", str(n))


@dataclass(frozen=True)
class Move:
    """One committed (or about to be committed) move, as given to a history recorder."""

    machine: str
    row_id: str
    frm: str | None         # the stored values, e.g. "UPLOAD_40_COMPLETE"
    to: str | None
    at: dt.datetime
    reason: str
    values: Mapping[str, Any]   # every column the UPDATE wrote


class Machine(Generic[S]):
    """A declared transition table over one state column of one table, and its transition()."""

    def __init__(self, name: str, states: type[S], transitions: Iterable[tuple[S | None, S | None]], *,
                 table: Table, column: str, key: str = "id", changed_at: str | None = None,
                 touch: Iterable[str] = ("updated_at",), terminal: Iterable[S] = (),
                 numbered: Iterable[Numbered] = (), history: Callable[[Session, Move], None] | None = None,
                 label: str | None = None, noun: str | None = None, not_found: str | None = None,
                 register: bool = True) -> None:
        self.name = name
        self.states = states
        self.transitions: frozenset[tuple[S | None, S | None]] = frozenset(transitions)
        self.table = table
        self.column = column
        self.key = key
        self.changed_at = changed_at
        self.touch = tuple(touch)
        self.terminal: frozenset[S] = frozenset(terminal)
        self.numbered: dict[S, Numbered] = {n.state: n for n in numbered}  # type: ignore[misc]
        self.history = history
        self.label = label or f"{name} {column}"
        self.noun = noun or name.capitalize()
        self.not_found = not_found or f"{self.noun} {{id}} could not be found."
        self.counts: collections.Counter[str] = collections.Counter()
        self.nullable = any(s is None for pair in self.transitions for s in pair)
        self._targets: dict[S | None, frozenset[S | None]] = {}
        for frm, to in self.transitions:
            self._targets[frm] = self._targets.get(frm, frozenset()) | {to}
        for s in (s for pair in self.transitions for s in pair):
            if s is not None and not isinstance(s, states):
                raise TypeError(f"machine {name}: {s!r} is not a {states.__name__}")
        for s in self.terminal:
            if self._targets.get(s):
                raise ValueError(f"machine {name}: terminal state {s} has moves out of it")
        for col in (column, key, changed_at, *self.touch):
            if col is not None and col not in table.c:
                raise ValueError(f"machine {name}: table {table.name} has no column {col}")
        if register:
            MACHINES[name] = self

    # -- the table ---------------------------------------------------------------------------

    def parse(self, value: str | None) -> tuple[S | None, int | None]:
        """A stored value -> (its state, its n for a numbered state, else None).
        ``UPLOAD_40_COMPLETE`` -> (UPLOAD_N_COMPLETE, 40). ValueError for an unknown value."""
        if value is None:
            if self.nullable:
                return None, None
            raise ValueError(f"{self.label} cannot be None")
        for family in self.numbered.values():
            match = family.pattern.match(value)
            if match:
                return family.state, int(match.group(1))  # type: ignore[return-value]
        return self.states(value), None

    def state_name(self, value: str | None) -> str:
        """The table's name for a stored value (a numbered state's family): counters, docs."""
        state, _ = self.parse(value)
        return str(state)

    def targets(self, frm: S | None) -> list[str]:
        """The states a row in ``frm`` may move to, as the table names them."""
        return sorted(str(t) for t in self._targets.get(frm, ()))

    def allowed(self, frm: str | None, to: str | None) -> bool:
        try:
            self.check(frm, to)
        except errors.InvalidState:
            return False
        return True

    def check(self, frm: str | None, to: str | None) -> tuple[S | None, S | None]:
        """Raise ``errors.InvalidState`` unless the table allows ``frm -> to``."""
        try:
            (f, fn), (t, tn) = self.parse(frm), self.parse(to)
        except ValueError as exc:
            raise self._refused(frm, to, f"unknown state: {exc}", []) from None
        allowed = self.targets(f)
        if (f, t) not in self.transitions:
            why = (f"{_text(f)} is final" if f in self.terminal else
                   f"from {_text(f)} only to {', '.join(allowed)}" if allowed else f"nothing leaves {_text(f)}")
            raise self._refused(frm, to, why, allowed)
        family = self.numbered.get(t)  # type: ignore[arg-type]
        if family is not None:
            if tn is None or str(to) != family.format(tn):
                raise self._refused(frm, to, f"{t} needs its number, e.g. {family.format(family.lowest)}", allowed)
            if not family.lowest <= tn <= family.highest:
                raise self._refused(frm, to, f"the n of {t} is {family.lowest} to {family.highest}, not {tn}",
                                    allowed)
            if f == t and family.rising and not (fn is not None and tn > fn):
                raise self._refused(frm, to, f"{t} may only rise", allowed)
        return f, t

    def _refused(self, frm: Any, to: Any, why: str, allowed: list[str]) -> errors.InvalidState:
        return errors.InvalidState(f"{self.label} transition from {_text(frm)} to {_text(to)} is not allowed ({why})",
                                   machine=self.name, frm=_text(frm), to=_text(to), allowed=allowed)

    # -- the one transition function ---------------------------------------------------------

    def transition(self, session: Session, row_id: str, frm: str | None, to: str | None, *,
                   reason: str = "", where: Mapping[str, Any] | None = None,
                   values: Mapping[str, Any] | None = None) -> dt.datetime:
        """Move row ``row_id`` from ``frm`` to ``to`` by compare-and-set; returns the time of
        the change. ``where``: more columns the row must still hold (``None`` = IS NULL);
        ``values``: more columns to write with the move. The caller commits the session.

        InvalidState: the table does not allow the move (nothing written). LostRace: the row
        is no longer in ``frm`` (or no longer matches ``where``). NotFound: no such row."""
        self.check(frm, to)
        frm_v, to_v = _stored(frm), _stored(to)
        now = utcnow()
        changes: dict[str, Any] = {col: now for col in self.touch}
        if self.changed_at:
            changes[self.changed_at] = now
        changes.update(values or {})
        changes[self.column] = to_v
        c = self.table.c
        conditions = [c[self.key] == row_id, _equals(c[self.column], frm_v)]
        conditions += [_equals(c[col], value) for col, value in (where or {}).items()]
        if session.autoflush:
            session.flush()     # an ORM-level UPDATE would have: rows added in this session count
        result = session.execute(update(self.table).where(*conditions).values(**changes))
        if result.rowcount != 1:
            raise self._lost(session, row_id, frm_v, to_v, where)
        move = Move(self.name, row_id, frm_v, to_v, now, reason, changes)
        if self.history is not None:
            self.history(session, move)
        _after_commit(session, self, move)
        return now

    def current(self, session: Session, row_id: str) -> str | None:
        """The row's state as stored now; NotFound when there is no such row."""
        c = self.table.c
        row = session.execute(select(c[self.column]).where(c[self.key] == row_id)).first()
        if row is None:
            raise errors.NotFound(self.not_found.format(id=row_id), machine=self.name, id=row_id)
        return row[0]

    def _lost(self, session: Session, row_id: str, frm: str | None, to: str | None,
              where: Mapping[str, Any] | None) -> errors.FreezeframeError:
        try:
            current = self.current(session, row_id)
        except errors.NotFound as exc:
            return exc
        details = dict(machine=self.name, id=row_id, frm=_text(frm), to=_text(to), current=_text(current))
        if current == frm:   # the state is as expected: another guard (e.g. the upload id) is not
            guard = f": {', '.join(where)} no longer matches" if where else ""
            return LostRace(f"{self.noun} {row_id} is being changed by another request ({self.label} "
                            f"{_text(frm)} -> {_text(to)} refused{guard})", **details)
        return LostRace(f"{self.noun} {row_id} is {_text(current)} now, not {_text(frm)}: another request "
                        f"changed it first ({self.label} {_text(frm)} -> {_text(to)} not applied)", **details)

    # -- counters ------------------------------------------------------------------------------

    def _committed(self, move: Move) -> None:
        self.counts[f"{self.state_name(move.frm)}->{self.state_name(move.to)}"] += 1
        LOG.info("%s %s: %s %s -> %s%s", self.noun.lower(), move.row_id, self.column, _text(move.frm),
                 _text(move.to), f" ({move.reason})" if move.reason else "")


def counts() -> dict[str, dict[str, int]]:
    """Moves committed by this process, per machine and per ``from->to`` (numbered states by
    their family): the shape a metrics exporter wants (machine, from, to, count)."""
    return {name: dict(m.counts) for name, m in sorted(MACHINES.items())}


def _after_commit(session: Session, machine: Machine[Any], move: Move) -> None:
    """Log and count ``move`` when (if) its transaction commits."""
    pending = session.info.get(_PENDING)
    if pending is None:
        pending = session.info[_PENDING] = []
        event.listen(session, "after_commit", _flush_pending)
        event.listen(session, "after_rollback", _drop_pending)
    pending.append((machine, move))


def _flush_pending(session: Session) -> None:
    pending = session.info.get(_PENDING) or []
    sink = session.info.get(SINK)
    while pending:
        machine, move = pending.pop(0)
        machine._committed(move)
        if sink is not None:
            sink(machine, move)


def _drop_pending(session: Session) -> None:
    (session.info.get(_PENDING) or []).clear()


def _stored(state: Any) -> str | None:
    return None if state is None else str(state)


def _text(state: Any) -> str:
    return "None" if state is None else str(state)


def _equals(col: Any, value: Any) -> Any:
    return col.is_(None) if value is None else col == value
