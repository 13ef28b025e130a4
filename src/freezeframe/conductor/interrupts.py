"""How a running step is stopped without being reverted (a polite stop, a lost lease)."""

from __future__ import annotations


class Interrupted(BaseException):
    """The conductor is stopping (SIGTERM/SIGINT): the running step stops where it is, and is
    *not* reverted. A BaseException on purpose: taskflow wraps only ``Exception`` in a Failure
    (which would revert the flow), so this one leaves ``engine.run()`` with the step still
    RUNNING in persistence — exactly what a kill -9 leaves — and the flow resumes from there."""


class HostAway(Interrupted):
    """The host a host-bound step needs is down, or unreachable from this conductor: the step
    stops where it is (nothing reverted, as after a kill -9), the claim is given back, and a
    conductor that reaches the host resumes it once it is back."""


class Waiting(Interrupted):
    """The step waits for another service (compute's report on an assisted volume snapshot):
    it stops where it is (nothing reverted), the claim is given back, and the workflow is
    looked at again after ``retry_in`` seconds — or at once when a post wakes it (the report
    posts it). The step itself owns the deadline: past it, it fails (and reverts) instead of
    waiting again. No thread waits meanwhile."""

    def __init__(self, reason: str, retry_in: float) -> None:
        super().__init__(reason)
        self.retry_in = retry_in
