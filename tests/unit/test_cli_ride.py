"""cli/ride.py: the --wait loops' polls ride through the service's absence, for a bounded time."""

import io

import httpx
import pytest

from freezeframe.cli.ride import Ride, away
from freezeframe.compute.client import ComputeError, Unreachable, WaitTimeout
from freezeframe.images.client import Unreachable as ImageUnreachable
from tests.fakeclock import Clock


def lost_connection():
    try:
        raise httpx.ReadError("connection reset")
    except httpx.TransportError:
        raise ComputeError("GET http://x/v1/workflows/1 failed: connection reset") from None


def outcomes(*results):
    """A poll that raises or returns each of ``results`` in turn."""
    results = list(results)

    def poll():
        item = results.pop(0)
        if isinstance(item, BaseException):
            raise item
        if callable(item):
            return item()
        return item
    return poll


def test_what_counts_as_away():
    assert away(Unreachable("refused")) and away(ImageUnreachable("refused"))
    assert away(ComputeError("busy", status=503)) and away(ComputeError("gw", status=502))
    for real in (ComputeError("no", status=404), ComputeError("conflict", status=409), ComputeError("bad body"),
                 WaitTimeout("too slow"), ValueError("x")):
        assert away(real) is None, real
    try:
        lost_connection()
    except ComputeError as exc:
        assert away(exc) == "the connection was lost"


def test_rides_through_a_restart_and_says_so():
    clock, out = Clock(), io.StringIO()
    ride = Ride("workflow w1", connected=True, out=out, clock=clock, sleep=clock.sleep)
    poll = outcomes(Unreachable("refused"), ComputeError("starting", status=503), Unreachable("refused"), "done")
    assert ride.call(poll) == "done"
    assert clock.slept == [0.5, 1.0, 2.0]                      # backoff
    text = out.getvalue()
    assert text.count("waiting for it to come back") == 1 and "the service is back after 4s" in text
    assert "workflow w1 goes on on the server" in text
    # another absence later: said again
    assert ride.call(outcomes(Unreachable("refused"), "again")) == "again"
    assert ride.waits == 2


def test_gives_up_after_its_patience_with_a_clear_message():
    clock, out = Clock(), io.StringIO()
    ride = Ride("workflow w1", connected=True, patience=60, out=out, clock=clock, sleep=clock.sleep)
    with pytest.raises(Unreachable) as raised:
        ride.call(lambda: (_ for _ in ()).throw(Unreachable("connection refused")))
    assert 60 <= clock.now < 66 and max(clock.slept) == 5.0
    assert "gave up waiting for the service: unavailable for 60s" in str(raised.value)
    assert "workflow w1 goes on on the server" in str(raised.value)


def test_the_callers_timeout_still_holds():
    clock = Clock()
    ride = Ride("workflow w1", connected=True, out=io.StringIO(), clock=clock, sleep=clock.sleep)
    with pytest.raises(WaitTimeout):
        ride.call(lambda: (_ for _ in ()).throw(Unreachable("refused")), deadline=3.0)
    assert clock.now <= 3.5


def test_a_first_call_and_real_errors_are_not_ridden():
    clock = Clock()
    ride = Ride("workflow w1", out=io.StringIO(), clock=clock, sleep=clock.sleep)
    with pytest.raises(Unreachable):              # a wrong URL fails at once
        ride.call(outcomes(Unreachable("refused")))
    assert ride.call(outcomes("first")) == "first"
    with pytest.raises(ComputeError) as raised:   # a real answer is not retried
        ride.call(outcomes(ComputeError("gone", status=404)))
    assert raised.value.status == 404 and clock.slept == []
