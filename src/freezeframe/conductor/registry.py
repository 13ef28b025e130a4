"""What the conductor runs, declared by whoever owns it: kinds of work and reconcile hooks.

The conductor is service-neutral: it knows no flow and no other service's table. A service
registers

- its **workflow kinds** (``WorkflowKind``): the importable name of the flow factory (taskflow
  persists that name with each flow; the conductor resumes a flow after a crash through the
  registry, so a factory that moves keeps its old names as ``aliases`` and the flows persisted
  under them resume with the current one), the kind's state table, the type of resource it
  works on and whether the work is bound to the host its resource lives on (then only a
  conductor that serves that host claims it);
- its **reconcile hooks**: what the service's work may leave on a host (a point in time held
  by a hypervisor, a server left in a transitional state) is released or repaired by the
  service's own hook, which every conductor's scan calls. The conductor sweeps nothing itself.

Unknown kinds are refused when work is submitted (``UnknownKind``), never at run time; a flow
persisted under a factory name no kind declares is not resumed (``UnknownFactory``).
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol

from freezeframe.common import errors

LOG = logging.getLogger(__name__)


class UnknownKind(errors.Invalid):
    """No workflow kind of that name is registered."""


class UnknownFactory(LookupError):
    """A persisted flow names a factory that no registered kind declares (nor has as an alias)."""


@dataclass(frozen=True)
class StateTable:
    """What the conductor needs of a kind's state machine: where a workflow starts, where it
    ends (no conductor claims it any more) and the machine itself (for the docs and checks)."""
    name: str
    initial: str
    terminal: frozenset[str]
    machine: Any = None         # the module or table that defines the transitions


@dataclass(frozen=True)
class WorkflowKind:
    name: str
    factory: str                # "package.module.function": importable, as taskflow persists it
    states: StateTable
    resource_type: str | None = None      # the one type of resource it works on (None: any)
    host_bound: bool = False              # claimed only by a conductor that serves its host
    # Names the factory had before (a module moved): flows persisted under them resume with it.
    aliases: tuple[str, ...] = ()

    def make_flow(self, **kwargs: Any) -> Any:
        return resolve(self.factory)(**kwargs)


@dataclass(frozen=True)
class Scan:
    """What a reconcile hook is given on each scan of a conductor."""
    conductor_id: str
    running: frozenset[str]           # workflows this conductor runs or holds right now
    hosts: frozenset[str] | None      # the hosts this conductor serves (None: any)
    workflows: Any                    # the conductor's API (``conductor.service.Workflows``)


class ReconcileHook(Protocol):
    def __call__(self, scan: Scan) -> Iterable[Any] | None: ...


@dataclass(frozen=True)
class Hook:
    service: str
    name: str
    run: ReconcileHook


def resolve(name: str) -> Callable[..., Any]:
    """The callable an importable dotted name designates (what taskflow does with a factory)."""
    module, _, attr = name.rpartition(".")
    if not module:
        raise ValueError(f"{name!r} is not an importable name (package.module.function)")
    return getattr(importlib.import_module(module), attr)


@dataclass
class Registry:
    kinds: dict[str, WorkflowKind] = field(default_factory=dict)
    hooks: list[Hook] = field(default_factory=list)

    def add_kind(self, kind: WorkflowKind) -> None:
        known = self.kinds.get(kind.name)
        if known is not None and known != kind:
            raise ValueError(f"workflow kind {kind.name!r} is already registered differently")
        if kind.states.initial in kind.states.terminal:
            raise ValueError(f"workflow kind {kind.name!r} would start in a terminal state")
        self.kinds[kind.name] = kind

    def add_hook(self, service: str, name: str, run: ReconcileHook) -> None:
        if any(h.service == service and h.name == name for h in self.hooks):
            raise ValueError(f"reconcile hook {service}.{name} is already registered")
        self.hooks.append(Hook(service, name, run))

    def factory(self, persisted: str) -> str:
        """The current name of the factory a flow was persisted under: a kind's own, or the one
        that has it as an alias (``UnknownFactory`` if none)."""
        for kind in self.kinds.values():
            if persisted == kind.factory:
                return kind.factory
        for kind in self.kinds.values():
            if persisted in kind.aliases:
                return kind.factory
        known = ", ".join(sorted({k.factory for k in self.kinds.values()})) or "none"
        raise UnknownFactory(f"no registered workflow kind has the flow factory {persisted!r} (registered: {known})")

    def kind(self, name: str) -> WorkflowKind:
        try:
            return self.kinds[name]
        except KeyError:
            known = ", ".join(sorted(self.kinds)) or "none"
            raise UnknownKind(f"Unknown workflow kind {name!r} (registered: {known})") from None

    def terminal_states(self) -> frozenset[str]:
        """Every state in which some kind's workflows have ended (what no conductor claims)."""
        out: set[str] = set()
        for kind in self.kinds.values():
            out |= {str(s) for s in kind.states.terminal}
        return frozenset(out)

    def host_bound_kinds(self) -> frozenset[str]:
        return frozenset(k.name for k in self.kinds.values() if k.host_bound)

    def run_hooks(self, scan: Scan, should_stop: Callable[[], bool] = lambda: False) -> dict[str, list[Any]]:
        """Each service's hooks, in registration order; one failing does not stop the others."""
        results: dict[str, list[Any]] = {}
        for hook in self.hooks:
            if should_stop():
                break
            try:
                results[f"{hook.service}.{hook.name}"] = list(hook.run(scan) or ())
            except Exception:
                LOG.exception("reconcile hook %s.%s failed", hook.service, hook.name)
        return results
