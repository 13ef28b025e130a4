"""Liveness through tooz: a conductor's lock is held exactly as long as its process lives."""

import socket
import subprocess
import sys
import time

import pytest

from freezeframe.conductor.liveness import Liveness

HOLDER = """
import sys, time
from freezeframe.conductor.liveness import Liveness
holder = Liveness(sys.argv[1], sys.argv[2])   # kept referenced: a collected lock is released
holder.start()
print("up", flush=True)
time.sleep(120)
"""


def redis_url() -> str:
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=1).close()
    except OSError:
        pytest.skip("no Redis server on 127.0.0.1:6379")
    pytest.importorskip("redis", reason="the redis client is a test dependency")
    return "redis://127.0.0.1:6379?timeout=3"


@pytest.fixture(params=["file", "redis"])
def backend(request, tmp_path):
    return f"file://{tmp_path / 'coordination'}" if request.param == "file" else redis_url()


def test_a_live_conductor_is_alive_and_a_killed_one_is_not(backend, tmp_path):
    member = f"holder-{time.monotonic_ns()}"
    child = subprocess.Popen([sys.executable, "-c", HOLDER, backend, member], stdout=subprocess.PIPE)
    observer = Liveness(backend, f"observer-{time.monotonic_ns()}")
    observer.start()
    try:
        assert child.stdout.readline().strip() == b"up"
        assert observer.is_alive(member) is True
        assert observer.is_alive("never-started") is False
        assert observer.is_alive(None) is False
        child.kill()
        child.wait(10)
        deadline = time.monotonic() + 15          # redis: the lock expires ~3 s after its holder dies
        while observer.is_alive(member) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert observer.is_alive(member) is False
    finally:
        if child.poll() is None:
            child.kill()
        observer.stop()


def test_one_id_one_live_process(backend):
    """A second process cannot start as a conductor id that a live process holds."""
    member = f"same-{time.monotonic_ns()}"
    child = subprocess.Popen([sys.executable, "-c", HOLDER, backend, member], stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline().strip() == b"up"
        duplicate = Liveness(backend, member)
        with pytest.raises(RuntimeError, match="already in use"):
            duplicate.start()
        duplicate._coord.stop()
    finally:
        child.kill()
        child.wait(10)


def test_a_live_conductor_is_alive_again_after_a_redis_restart(tmp_path):
    """Redis keeps nothing on disk here: a restart drops every lock, and tooz would never take
    a live conductor's lock back. The watchdog does, within about a second."""
    from tests.redisd import private_redis

    with private_redis(tmp_path) as redis:
        url = f"redis://127.0.0.1:{redis.port}?timeout=3"
        member = f"holder-{time.monotonic_ns()}"
        child = subprocess.Popen([sys.executable, "-c", HOLDER, url, member], stdout=subprocess.PIPE)
        observer = Liveness(url, f"observer-{time.monotonic_ns()}")
        try:
            assert child.stdout.readline().strip() == b"up"
            observer.start()
            assert observer.is_alive(member) is True
            redis.restart()
            time.sleep(1.5)     # (the clients' first calls after the restart meet closed sockets)
            deadline = time.monotonic() + 10
            while not observer.is_alive(member) and time.monotonic() < deadline:
                time.sleep(0.1)
            for _ in range(10):         # and it stays so (without the watchdog: never again)
                assert observer.is_alive(member) is True
                time.sleep(0.1)
        finally:
            child.kill()
            child.wait(10)
            observer.stop()


# A backend that does not answer is a clear error at once (tooz alone retries for minutes).
def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]      # nothing listens there once closed


def test_an_unreachable_redis_is_a_clear_error_at_once():
    port = _closed_port()
    liveness = Liveness(f"redis://127.0.0.1:{port}?timeout=3", "c-test")
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=rf"redis://127.0.0.1:{port} does not answer"):
        liveness.start()
    assert time.monotonic() - started < 10


def test_the_file_backend_needs_no_network(tmp_path):
    liveness = Liveness(f"file://{tmp_path}", "c-file")
    liveness.start()
    try:
        assert liveness.is_alive("c-file")
    finally:
        liveness.stop()
