"""``freezeframe image ...`` end to end: the CLI against a real server (and a lying fake Glance)."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import re
import select
import shutil
import stat
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import yaml

from freezeframe.common.httpclient import error_from
from freezeframe.cli.main import main
from tests.conftest import free_port, new_image

REQUEST_ID = re.compile(r"request id req-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


@pytest.fixture(autouse=True)
def isolated(client_env_isolated) -> None:
    """Every CLI test runs without the developer's OS_* variables or clouds.yaml."""


@pytest.fixture
def ff(live_server, capsys):
    """Run ``freezeframe image ARGS`` in-process as the member, against the live server."""
    def run(*args: str, auth: bool = True) -> Result:
        argv = ["image", *args]
        if auth:
            argv += ["--os-image-url", live_server.image_url, "--os-token", live_server.member_token]
        capsys.readouterr()
        code = main(argv)
        out, err = capsys.readouterr()
        return Result(code, out, err)
    return run


def payload(size: int) -> bytes:
    """Several download blocks and an odd tail, so chunking mistakes show."""
    return os.urandom(size)


def subprocess_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    home = tmp_path / "home"
    return {**env, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), **extra}


def test_create_upload_wait_show_download_delete(ff, tmp_path):
    data = payload(3 * (1 << 20) + 12345)
    src = tmp_path / "disk.raw"
    src.write_bytes(data)
    name = f"cli-{uuid.uuid4()}"

    created = ff("create", name, "--file", str(src), "--wait", "--property", "os_distro=debian",
                 "--tag", "t1", "--tag", "t2", "--min-disk", "2", "-f", "json")
    assert created.code == 0, created.err
    image = created.json()
    assert image["status"] == "active"
    assert image["size"] == len(data)
    assert image["checksum"] == hashlib.md5(data).hexdigest()
    assert image["os_hash_algo"] == "sha512" and image["os_hash_value"] == hashlib.sha512(data).hexdigest()
    assert image["os_distro"] == "debian" and sorted(image["tags"]) == ["t1", "t2"] and image["min_disk"] == 2
    assert image["disk_format"] == "raw"  # detected (qemu-img says raw) or defaulted
    assert created.err == ""  # stderr is not a terminal: no progress output

    by_id = ff("show", image["id"], "-f", "json")
    by_name = ff("show", name, "-f", "json")
    assert by_id.code == by_name.code == 0
    assert by_id.json()["id"] == by_name.json()["id"] == image["id"]

    target = tmp_path / "out" / "copy.raw"
    target.parent.mkdir()
    got = ff("download", name, "--file", str(target))
    assert got.code == 0, got.err
    assert target.read_bytes() == data
    assert os.listdir(target.parent) == ["copy.raw"]  # the temporary was renamed, not left behind

    assert ff("delete", image["id"]).code == 0
    gone = ff("show", image["id"])
    assert gone.code == 1 and f"No image found with ID {image['id']}" in gone.err


def test_table_output(ff, member):
    image = new_image(member, name=f"tbl-{uuid.uuid4()}", os_distro="[not-markup]")
    shown = ff("show", image["id"])
    assert shown.code == 0
    assert re.search(r"os_distro\s*│\s*\[not-markup\]", shown.out)  # rich markup is not interpreted
    listed = ff("list", "--name", image["name"], "--long")
    assert listed.code == 0
    row = next(line for line in listed.out.splitlines() if image["id"] in line)
    assert image["name"] in row and "queued" in row and "project-a" in row


def test_list_json_filters_and_pagination(ff, member):
    run = uuid.uuid4().hex
    ids = {new_image(member, name=f"page-{i}", run=run)["id"] for i in range(5)}
    listed = ff("list", "--property", f"run={run}", "-f", "json")
    assert listed.code == 0
    assert {i["id"] for i in listed.json()} == ids
    # Two per request: only following the 'next' links finds all five.
    paged = ff("list", "--property", f"run={run}", "--page-size", "2", "-f", "json").json()
    assert sorted(i["id"] for i in paged) == sorted(ids)
    limited = ff("list", "--property", f"run={run}", "--page-size", "2", "--limit", "3", "-f", "json").json()
    assert len(limited) == 3 and {i["id"] for i in limited} <= ids
    named = ff("list", "--property", f"run={run}", "--name", "page-3", "--status", "queued", "-f", "json")
    named = named.json()
    assert [i["name"] for i in named] == ["page-3"]
    assert ff("list", "--property", f"run={run}", "--status", "active", "-f", "json").json() == []


def test_show_missing_image_reports_server_message_and_request_id(ff):
    missing = str(uuid.uuid4())
    shown = ff("show", missing)
    assert shown.code == 1
    assert shown.out == ""
    assert f"No image found with ID {missing}" in shown.err
    assert "HTTP 404" in shown.err and REQUEST_ID.search(shown.err), shown.err


def test_show_ambiguous_name(ff, member):
    name = f"twin-{uuid.uuid4()}"
    new_image(member, name=name)
    new_image(member, name=name)
    shown = ff("show", name)
    assert shown.code == 1 and "more than one image" in shown.err


def test_unreachable_endpoint_exits_3(ff):
    result = ff("list", "--os-image-url", f"http://127.0.0.1:{free_port()}/image", auth=False)
    assert result.code == 3
    assert "cannot reach the image service" in result.err and "--os-image-url" in result.err


def test_no_endpoint_exits_2(ff):
    result = ff("list", auth=False)
    assert result.code == 2
    assert "no image service endpoint" in result.err


def test_bad_token_is_the_servers_401(ff, live_server):
    result = ff("list", "--os-image-url", live_server.image_url, "--os-token", "wrong", auth=False)
    assert result.code == 1
    assert "HTTP 401" in result.err and "not valid" in result.err


def test_clouds_yaml_in_cwd_selected_by_os_cloud(ff, live_server, member, tmp_path, monkeypatch):
    image = new_image(member, name=f"cloud-{uuid.uuid4()}")
    (tmp_path / "clouds.yaml").write_text(yaml.safe_dump({"clouds": {
        "ff": {"auth_type": "admin_token", "auth": {"endpoint": live_server.image_url,
                                                    "token": live_server.member_token}},
        "anon": {"auth_type": "none", "auth": {"endpoint": "http://127.0.0.1:1"},
                 "image_endpoint_override": live_server.image_url},
    }}))
    monkeypatch.setenv("OS_CLOUD", "ff")
    shown = ff("show", image["id"], "-f", "json", auth=False)
    assert shown.code == 0, shown.err
    assert shown.json()["name"] == image["name"]
    # --os-cloud beats OS_CLOUD; 'anon' sends no token, so our server answers 401.
    anon = ff("show", image["id"], "--os-cloud", "anon", auth=False)
    assert anon.code == 1 and "HTTP 401" in anon.err
    unknown = ff("show", image["id"], "--os-cloud", "nope", auth=False)
    assert unknown.code == 2 and "cloud 'nope' not found" in unknown.err


def test_clouds_yaml_from_os_client_config_file(ff, live_server, member, tmp_path, monkeypatch):
    image = new_image(member, name=f"cfg-{uuid.uuid4()}")
    config = tmp_path / "elsewhere" / "my-clouds.yaml"
    config.parent.mkdir()
    config.write_text(yaml.safe_dump({"clouds": {"mine": {
        "auth_type": "admin_token", "auth": {"endpoint": live_server.image_url + "/v2",
                                             "token": live_server.member_token}}}}))
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(config))
    result = ff("list", "--os-cloud", "mine", "--name", image["name"], "-f", "json", auth=False)
    assert result.code == 0, result.err
    assert [i["id"] for i in result.json()] == [image["id"]]


def test_wait_needs_a_file(ff):
    result = ff("create", f"w-{uuid.uuid4()}", "--wait")
    assert result.code == 2 and "--wait needs --file" in result.err


def test_missing_file_is_a_usage_error_and_creates_nothing(ff, tmp_path):
    name = f"nofile-{uuid.uuid4()}"
    result = ff("create", name, "--file", str(tmp_path / "absent.img"))
    assert result.code == 2 and "cannot read" in result.err
    assert ff("list", "--name", name, "-f", "json").json() == []


def test_bad_property_syntax_is_a_usage_error(ff):
    with pytest.raises(SystemExit) as exit_info:
        ff("create", "x", "--property", "novalue")
    assert exit_info.value.code == 2


def test_upload_command_then_wait(ff, member, tmp_path):
    image = new_image(member, name=f"up-{uuid.uuid4()}")
    data = payload(1 << 20)
    (tmp_path / "d").write_bytes(data)
    result = ff("upload", image["name"], "--file", str(tmp_path / "d"), "--wait")
    assert result.code == 0, result.err
    shown = ff("show", image["id"], "-f", "json").json()
    assert shown["status"] == "active" and shown["checksum"] == hashlib.md5(data).hexdigest()
    again = ff("upload", image["id"], "--file", str(tmp_path / "d"))
    assert again.code == 1 and "HTTP 409" in again.err and REQUEST_ID.search(again.err)


def test_refused_data_leaves_a_queued_image_and_says_so(ff, tmp_path):
    if shutil.which("qemu-img") is None:
        pytest.skip("qemu-img is needed to make a qcow2 file")
    disk = tmp_path / "d.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    # Claimed raw, but the data is qcow2: the server's format check refuses it.
    result = ff("create", f"lie-{uuid.uuid4()}", "--disk-format", "raw", "--file", str(disk), "-f", "json")
    assert result.code == 1
    assert "HTTP 415" in result.err and "was created but its data was not uploaded" in result.err
    assert result.out == ""


def test_disk_format_detected_with_qemu_img(ff, tmp_path):
    if shutil.which("qemu-img") is None:
        pytest.skip("qemu-img not installed")
    disk = tmp_path / "d.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    result = ff("create", f"q-{uuid.uuid4()}", "--file", str(disk), "--wait", "-f", "json")
    assert result.code == 0, result.err
    assert result.json()["disk_format"] == "qcow2"
    assert result.json()["virtual_size"] == 16 << 20


def test_delete_several_continues_past_a_failure(ff, member):
    image = new_image(member, name=f"del-{uuid.uuid4()}")
    missing = str(uuid.uuid4())
    result = ff("delete", missing, image["id"])
    assert result.code == 1
    assert missing in result.err and "1 of 2 images were not deleted" in result.err
    assert ff("show", image["id"]).code == 1


def test_subprocess_create_from_stdin_and_download_to_stdout(live_server, tmp_path):
    data = payload(2 * (1 << 20) + 7)
    env = subprocess_env(tmp_path, OS_IMAGE_URL=live_server.image_url, OS_TOKEN=live_server.member_token)
    cmd = [sys.executable, "-m", "freezeframe", "image"]
    # From stdin: no length known, so the upload goes chunked.
    created = subprocess.run([*cmd, "create", f"sp-{uuid.uuid4()}", "--file", "-", "--wait", "-f", "json"],
                             input=data, env=env, capture_output=True, timeout=120)
    assert created.returncode == 0, created.stderr
    assert created.stderr == b""
    image = json.loads(created.stdout)
    assert image["size"] == len(data) and image["checksum"] == hashlib.md5(data).hexdigest()
    got = subprocess.run([*cmd, "download", image["id"]], env=env, capture_output=True, timeout=120)
    assert got.returncode == 0, got.stderr
    assert got.stdout == data and got.stderr == b""


def _run_on_pty(cmd: list[str], env: dict, *, stdout_tty: bool) -> tuple[int, bytes, bytes]:
    """Run with stderr (and optionally stdout) on a pseudo-terminal; what the terminal showed."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stderr=slave,
                            stdout=slave if stdout_tty else subprocess.PIPE)
    os.close(slave)
    shown = bytearray()
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            proc.kill()
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    out = proc.stdout.read() if proc.stdout else b""
    return proc.wait(timeout=60), out, bytes(shown)


def test_progress_only_on_a_terminal_and_no_binary_to_a_terminal(live_server, member, tmp_path):
    data = payload(3 << 20)
    image = new_image(member, name=f"tty-{uuid.uuid4()}")
    assert member.put(f"/v2/images/{image['id']}/file", content=data,
                      headers={"Content-Type": "application/octet-stream"}).status_code == 204
    env = subprocess_env(tmp_path, OS_IMAGE_URL=live_server.image_url, OS_TOKEN=live_server.member_token,
                         TERM="xterm", COLUMNS="120")
    cmd = [sys.executable, "-m", "freezeframe", "image", "download", image["id"]]
    code, _, shown = _run_on_pty([*cmd, "-o", str(tmp_path / "copy")], env, stdout_tty=False)
    assert code == 0, shown
    assert (tmp_path / "copy").read_bytes() == data
    assert b"MB/s" in shown and b"3.1/3.1 MB" in shown  # bytes and rate on the terminal
    code, _, shown = _run_on_pty(cmd, env, stdout_tty=True)
    assert code == 2 and b"refusing to write image data to a terminal" in shown


# -- a fake Glance that lies about checksums, and answers errors as Glance does ---------------


class FakeGlance(BaseHTTPRequestHandler):
    image_id = str(uuid.uuid4())
    data = b"the real bytes" * 1000

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, body: bytes, ctype: str, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-openstack-request-id", "req-11111111-2222-3333-4444-555555555555")
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path == f"/v2/images/{self.image_id}":
            doc = {"id": self.image_id, "name": "liar", "status": "active", "size": len(self.data),
                   "checksum": hashlib.md5(b"other bytes").hexdigest(), "os_hash_algo": "sha512",
                   "os_hash_value": hashlib.sha512(self.data).hexdigest()}
            self._send(200, json.dumps(doc).encode(), "application/json")
        elif self.path == f"/v2/images/{self.image_id}/file":
            self._send(200, self.data, "application/octet-stream")
        elif self.path.startswith("/v2/images?"):  # a lookup by name finds nothing
            self._send(200, b'{"images": []}', "application/json")
        else:  # what Glance (webob) sends for a JSON client
            message = f"No image found with ID {self.path.rsplit('/', 1)[-1]}<br /><br />\n\n\n"
            body = {"message": message, "code": "404 Not Found", "title": "Not Found"}
            self._send(404, json.dumps(body).encode(), "application/json")


@pytest.fixture
def fake_glance() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeGlance)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_checksum_mismatch_fails_and_writes_nothing(capsys, fake_glance, tmp_path):
    target = tmp_path / "dl"
    target.mkdir()
    code = main(["image", "download", FakeGlance.image_id, "-o", str(target / "img"),
                 "--os-image-url", fake_glance])
    err = capsys.readouterr().err
    assert code == 1
    assert "checksum (md5) mismatch" in err and "was not written" in err
    assert os.listdir(target) == []  # neither the file nor its temporary


def test_glance_html_error_becomes_a_one_line_message(capsys, fake_glance):
    missing = str(uuid.uuid4())
    code = main(["image", "show", missing, "--os-image-url", fake_glance])
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip() == (f"freezeframe: No image found with ID {missing} (HTTP 404 Not Found; "
                           "request id req-11111111-2222-3333-4444-555555555555)")


def test_glance_html_error_page_becomes_its_message():
    """Glance answers non-JSON clients (and its proxies) with an HTML page."""
    page = ("<html>\n <head>\n  <title>409 Conflict</title>\n </head>\n <body>\n  <h1>409 Conflict</h1>\n"
            "  Image status transition from active to saving is not allowed<br /><br />\n\n\n\n"
            " </body>\n</html>")
    response = httpx.Response(409, text=page, headers={"Content-Type": "text/html; charset=UTF-8",
                                                       "x-openstack-request-id": "req-1"})
    error = error_from(response)
    assert (error.status, error.request_id) == (409, "req-1")
    assert error.message == "Image status transition from active to saving is not allowed"


def test_download_into_a_fifo_writes_through_it(ff, member, tmp_path):
    """A device or FIFO target is written in place, never replaced by a renamed temporary."""
    data = payload((1 << 20) + 3)
    image = new_image(member, name=f"fifo-{uuid.uuid4()}")
    assert member.put(f"/v2/images/{image['id']}/file", content=data,
                      headers={"Content-Type": "application/octet-stream"}).status_code == 204
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = bytearray()
    reader = threading.Thread(target=lambda: received.extend(fifo.read_bytes()), daemon=True)
    reader.start()
    result = ff("download", image["id"], "-o", str(fifo))
    reader.join(30)
    assert result.code == 0, result.err
    assert bytes(received) == data
    assert stat.S_ISFIFO(fifo.stat().st_mode)
