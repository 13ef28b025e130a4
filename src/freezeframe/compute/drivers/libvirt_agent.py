"""The QEMU guest agent, reached through libvirt, with every call bounded in time.

libvirt's own agent calls (``fsFreeze``, ``fsThaw``) wait as long as the domain's agent timeout
says, which by default is forever; an agent port nobody listens on connects but never answers.
So everything here goes through ``qemuAgentCommand`` with an explicit timeout (libvirt sends a
``guest-sync`` first, with the same bound).
"""

from __future__ import annotations

import json
import math
import threading
import time

import libvirt
import libvirt_qemu


class AgentError(Exception):
    """The guest agent is absent, did not answer in time, or refused the command."""


def command(dom: libvirt.virDomain, execute: str, timeout: float, **arguments: object) -> object:
    """Run one agent command; ``timeout`` is rounded up to whole seconds (libvirt's unit)."""
    cmd: dict[str, object] = {"execute": execute}
    if arguments:
        cmd["arguments"] = arguments
    try:
        reply = libvirt_qemu.qemuAgentCommand(dom, json.dumps(cmd), max(1, math.ceil(timeout)), 0)
    except libvirt.libvirtError as exc:
        raise AgentError(f"{execute}: {exc.get_error_message()}") from exc
    if reply is None:
        raise AgentError(f"{execute}: no reply")
    return json.loads(reply).get("return")


def ping(dom: libvirt.virDomain, timeout: float) -> bool:
    """Does the agent answer within ``timeout``? libvirt answers "not connected" at once until
    it has (re)connected the agent's channel — 0.2-0.3 s after a restart of this process — so
    that answer is asked again until the time is up, not taken as the guest's."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            command(dom, "guest-ping", max(0.1, deadline - time.monotonic()))
        except AgentError as exc:
            if "not connected" in str(exc) and time.monotonic() + 0.1 < deadline:
                time.sleep(0.1)
                continue
            return False
        return True


def freeze(dom: libvirt.virDomain, timeout: float) -> int:
    """Freeze every filesystem of the guest; the number frozen."""
    return int(command(dom, "guest-fsfreeze-freeze", timeout) or 0)


def thaw(dom: libvirt.virDomain, timeout: float) -> int:
    return int(command(dom, "guest-fsfreeze-thaw", timeout) or 0)


def frozen(dom: libvirt.virDomain, timeout: float) -> bool:
    """Is the guest frozen? (AgentError when the agent cannot tell.)"""
    return command(dom, "guest-fsfreeze-status", timeout) == "frozen"


class FreezeWindow:
    """The guest's filesystems frozen for at most ``max_frozen`` seconds.

    ``freeze()`` starts a timer that thaws the guest at the deadline even if the caller is stuck
    (a backup that does not start); ``close()`` thaws at once and tells how long it lasted.
    ``expired`` says the timer had to step in: what ran after that was not quiesced.
    """

    THAW_ATTEMPTS = 5

    def __init__(self, dom: libvirt.virDomain, max_frozen: float) -> None:
        self._dom = dom
        self._max = max_frozen
        self._lock = threading.Lock()
        self._frozen = False
        self._t0 = 0.0
        self._t1 = 0.0
        self._timer: threading.Timer | None = None
        self.expired = False
        self.thaw_error: AgentError | None = None

    def freeze(self) -> None:
        """Raises AgentError if the freeze failed (the guest is thawed again by ``close``)."""
        self._t0 = time.monotonic()
        with self._lock:
            self._frozen = True     # before the call: a timed-out freeze may still happen
        freeze(self._dom, timeout=self._max)
        # The timer starts once the freeze returned, so that its thaw cannot overtake the freeze.
        remaining = self._max - (time.monotonic() - self._t0)
        if remaining <= 0:
            self.expired = True
            return
        self._timer = threading.Timer(remaining, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        self.expired = True
        try:
            self._thaw()
        except AgentError as exc:
            self.thaw_error = exc    # close() tries again and reports it

    def _thaw(self) -> None:
        with self._lock:
            if not self._frozen:
                return
            last: AgentError | None = None
            for attempt in range(self.THAW_ATTEMPTS):
                try:
                    thaw(self._dom, timeout=3)
                    break
                except AgentError as exc:
                    last = exc
                    time.sleep(0.1 * (attempt + 1))
            else:
                raise AgentError(f"the guest may still be frozen: {last}")
            self._frozen = False
            self._t1 = time.monotonic()

    def close(self) -> float:
        """Thaw now (idempotent); the seconds the guest was frozen."""
        if self._timer is not None:
            self._timer.cancel()
        self._thaw()
        return max(0.0, self._t1 - self._t0)
