"""The serve process: request ids in logs, graceful shutdown, restarts, the reaper at work."""

import re
import signal
import socket
import threading
import time


from tests.conftest import new_image, start_server
from tests.functional.test_images_data import OCTET, partial_files, wait_status

REAPER_ENV = {
    "FREEZEFRAME_REAPER__INTERVAL": "0.2",
    "FREEZEFRAME_REAPER__SAVING_TIMEOUT": "1.5",
    "FREEZEFRAME_REAPER__KILLED_GRACE": "1",
    "FREEZEFRAME_IMAGES__PROGRESS_INTERVAL": "0.2",
}


def open_upload(server, image_id, length, first):
    """Start an upload by hand and leave it hanging: the socket stays open, the rest unsent."""
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall((f"PUT /image/v2/images/{image_id}/file HTTP/1.1\r\nHost: x\r\n"
                  f"X-Auth-Token: {server.member_token}\r\nContent-Type: application/octet-stream\r\n"
                  f"Content-Length: {length}\r\n\r\n").encode() + first)
    return sock


def test_every_log_line_of_a_request_has_its_id(fresh_server):
    with fresh_server.client() as member:
        resp = member.post("/v2/images", json={"name": "logged"})
        rid = resp.headers["x-openstack-request-id"]
    deadline = time.monotonic() + 5  # the access line is written just after the response
    while "POST /image/v2/images 201" not in fresh_server.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = [line for line in fresh_server.log().splitlines() if rid in line]
    assert any("created (queued)" in line for line in lines)
    assert any("POST /image/v2/images 201" in line for line in lines)


def test_graceful_shutdown_lets_an_upload_finish(tmp_path):
    server = start_server(tmp_path / "ff")
    with server.client() as member:
        image = new_image(member)
        result = {}

        def body():
            yield b"a" * (1 << 20)
            server.process.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            yield b"b" * (1 << 20)

        def run():
            with server.client() as c:
                result["status"] = c.put(f"/v2/images/{image['id']}/file", content=body(), headers=OCTET).status_code

        t = threading.Thread(target=run)
        t.start()
        t.join(30)
        assert server.process.wait(30) == 0
    assert result["status"] == 204
    restarted = start_server(tmp_path / "ff")
    try:
        with restarted.client() as member:
            shown = member.get(f"/v2/images/{image['id']}").json()
            assert shown["status"] == "active" and shown["size"] == 2 << 20
            assert member.get(f"/v2/images/{image['id']}/file").content == b"a" * (1 << 20) + b"b" * (1 << 20)
    finally:
        restarted.stop()


def test_kill_9_mid_upload_is_reaped_after_restart(tmp_path):
    """A process that dies mid-upload leaves the image in saving: the reaper of the next process
    kills it (and removes the partial data), then deletes it after the grace period."""
    server = start_server(tmp_path / "ff", env=REAPER_ENV)
    with server.client() as member:
        image = new_image(member)
    sock = open_upload(server, image["id"], 100_000_000, b"x" * 5_000_000)
    with server.client() as member:
        assert wait_status(member, image["id"], "saving") == "saving"
        deadline = time.monotonic() + 10
        while not partial_files(server) and time.monotonic() < deadline:
            time.sleep(0.05)
    server.stop(signal.SIGKILL)
    sock.close()
    assert partial_files(server)  # the dead process left its partial file behind
    restarted = start_server(tmp_path / "ff", env=REAPER_ENV)
    try:
        with restarted.client() as member:
            assert wait_status(member, image["id"], "killed", timeout=15) == "killed"
            deadline = time.monotonic() + 15
            while member.get(f"/v2/images/{image['id']}").status_code != 404 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert member.get(f"/v2/images/{image['id']}").status_code == 404
        assert partial_files(restarted) == []
        assert re.search(r"reaper: image \S+ killed", restarted.log())
    finally:
        restarted.stop()


def test_reaper_spares_a_slow_upload_that_makes_progress(tmp_path):
    server = start_server(tmp_path / "ff", env=REAPER_ENV)
    try:
        with server.client() as member:
            image = new_image(member)

            def trickle():
                for _ in range(16):  # 4 s, well past the 1.5 s timeout, but progressing
                    yield b"t" * 65536
                    time.sleep(0.25)

            with server.client() as c:
                resp = c.put(f"/v2/images/{image['id']}/file", content=trickle(), headers=OCTET)
            assert resp.status_code == 204, resp.text
            assert member.get(f"/v2/images/{image['id']}").json()["status"] == "active"
    finally:
        server.stop()


def test_stalled_upload_killed_while_client_hangs(tmp_path):
    server = start_server(tmp_path / "ff", env={**REAPER_ENV, "FREEZEFRAME_REAPER__KILLED_GRACE": "600"})
    try:
        with server.client() as member:
            image = new_image(member)
            sock = open_upload(server, image["id"], 1_000_000, b"x" * 1000)
            assert wait_status(member, image["id"], "killed", timeout=15) == "killed"
            sock.sendall(b"y" * 999000)  # the client wakes up and finishes: too late
            sock.settimeout(10)
            reply = sock.recv(4096)
            sock.close()
            assert reply.startswith(b"HTTP/1.1 410"), reply[:200]
            assert member.get(f"/v2/images/{image['id']}").json()["status"] == "killed"
            assert not (server.data_dir / "images" / image["id"]).exists()
    finally:
        server.stop()


def test_serve_refuses_test_knobs_unless_testing_is_enabled(tmp_path):
    """A fault-injection knob left in a production environment stops `serve` at start."""
    try:
        start_server(tmp_path / "ff", env={"FREEZEFRAME_TESTING__ENABLED": "false",
                                           "FREEZEFRAME_TESTING__FAULT_KILL_AT": "PENDING"})
    except RuntimeError as exc:
        assert "configuration error: testing.fault_kill_at: a test-only knob" in str(exc)
        assert "FREEZEFRAME_TESTING__ENABLED=true" in str(exc)
    else:
        raise AssertionError("serve started with a test-only knob and testing disabled")


def test_start_log_names_every_api_url(fresh_server):
    """A new user reads where each API is in the serve log; every URL it names answers."""
    import httpx

    log = fresh_server.log()
    lines = log[log.index("freezeframe serving on"):].splitlines()
    assert lines[0].endswith(f"freezeframe serving on {fresh_server.url}:")
    urls = {}
    for line in lines[1:]:
        found = re.search(r"\]\s{3}(\S.*?)\s{2,}(http://\S+)$", line)
        if found is None:
            break
        urls[found.group(1).strip()] = found.group(2)
    base = fresh_server.url
    assert urls == {
        "image API (Glance v2)": f"{base}/image",
        "identity API (Keystone v3)": f"{base}/identity",
        "compute API (Nova v2.1)": f"{base}/compute/v2.1",
        "workflow API": f"{base}/v1/workflows",
        "volume API (Cinder v3)": f"{base}/volume/v3",
        "bare-metal API (Ironic v1)": f"{base}/baremetal",
        "health check": f"{base}/healthcheck",
        "OpenAPI documents": f"{base}/openapi",
        "Prometheus metrics": f"{base}/metrics",
    }
    for label, url in urls.items():
        token = fresh_server.admin_token if label == "Prometheus metrics" else fresh_server.member_token
        resp = httpx.get(url, headers={"X-Auth-Token": token}, follow_redirects=True)
        assert resp.status_code in (200, 300), (label, url, resp.status_code, resp.text[:200])
