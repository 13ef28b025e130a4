"""`--auth keystone`: tokens of a real Keystone (installed from PyPI by scripts/ensure-keystone,
bootstrapped here on SQLite with fernet tokens, served by gunicorn) work on the image and
compute APIs with the right project and roles; bad tokens are refused; the service-token
pattern works with a Keystone service token."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests.conftest import LiveServer, free_port, start_server

pytestmark = pytest.mark.keystone
ROOT = Path(__file__).resolve().parents[2]
WSGI = """import sys
sys.argv = sys.argv[:1]     # keystone parses sys.argv with oslo.config: hide gunicorn's arguments
from keystone.wsgi.api import application  # noqa: E402
"""
ADMIN_PASSWORD = "ks-admin-password"
PASSWORDS = {"alice": "alice-password", "rita": "rita-password", "freezeframe": "service-password"}


def keystone_venv() -> Path:
    try:
        out = subprocess.run([str(ROOT / "scripts" / "ensure-keystone")], capture_output=True, text=True,
                             timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"Keystone could not be installed from PyPI (scripts/ensure-keystone): {exc}")
    if out.returncode != 0:
        pytest.skip("Keystone could not be installed from PyPI (scripts/ensure-keystone): "
                    + (out.stderr.strip().splitlines() or ["no output"])[-1])
    return Path(out.stdout.strip().splitlines()[-1])


class Keystone:
    def __init__(self, venv: Path, workdir: Path) -> None:
        self.venv, self.dir, self.port = venv, workdir, free_port()
        self.url = f"http://127.0.0.1:{self.port}/v3"
        self.conf = workdir / "keystone.conf"
        self.process: subprocess.Popen | None = None

    def manage(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([str(self.venv / "bin" / "keystone-manage"), "--config-file", str(self.conf), *args],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=self.env())

    def env(self) -> dict:
        return {**os.environ, "OS_KEYSTONE_CONFIG_FILES": str(self.conf), "PYTHONWARNINGS": "ignore"}

    def bootstrap(self) -> None:
        # The key repositories as keystone-manage fernet_setup / credential_setup make them (a
        # staged key 0 and a primary key 1, 32 random bytes in urlsafe base64), without two
        # more start-ups of keystone-manage.
        keys = {name: self.dir / name for name in ("fernet-keys", "fernet-receipts", "credential-keys")}
        for path in keys.values():
            path.mkdir(mode=0o700)
            for index in ("0", "1"):
                (path / index).write_bytes(base64.urlsafe_b64encode(os.urandom(32)))
                (path / index).chmod(0o600)
        self.conf.write_text(f"""[DEFAULT]
log_file = {self.dir / 'keystone.log'}
[database]
connection = sqlite:///{self.dir / 'keystone.db'}
[token]
provider = fernet
expiration = 3600
[identity]
# bcrypt's fewest rounds: the test's passwords need no strength, and each costs a login
password_hash_rounds = 4
[fernet_tokens]
key_repository = {keys['fernet-keys']}
[fernet_receipts]
key_repository = {keys['fernet-receipts']}
[credential]
key_repository = {keys['credential-keys']}
""")
        self._check(self.manage("db_sync"))
        self._check(self.manage("bootstrap", "--bootstrap-password", ADMIN_PASSWORD, "--bootstrap-region-id",
                                "RegionOne", "--bootstrap-public-url", self.url))

    @staticmethod
    def _check(step: subprocess.Popen) -> None:
        out, _ = step.communicate(timeout=120)
        assert step.returncode == 0, f"{step.args[3:]} failed:\n{out.decode(errors='replace')[-3000:]}"

    def start(self) -> None:
        (self.dir / "ks_wsgi.py").write_text(WSGI)
        log = open(self.dir / "gunicorn.log", "ab")
        self.process = subprocess.Popen([str(self.venv / "bin" / "gunicorn"), "-b", f"127.0.0.1:{self.port}", "-w", "1",
                                         "--pythonpath", str(self.dir), "ks_wsgi:application"],
                                        stdout=log, stderr=subprocess.STDOUT, env=self.env(), cwd=self.dir)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (self.dir / "gunicorn.log").read_text()[-3000:]
            try:
                if httpx.get(self.url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("Keystone did not start:\n" + (self.dir / "gunicorn.log").read_text()[-3000:])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def session(self, user: str, password: str, project: str):
        from keystoneauth1 import session
        from keystoneauth1.identity import v3
        return session.Session(auth=v3.Password(auth_url=self.url, username=user, password=password,
                                                project_name=project, user_domain_id="default",
                                                project_domain_id="default"))

    def populate(self) -> dict[str, str]:
        """proj-a with alice (member) and rita (reader); the service user freezeframe (role
        service in project service). Returns the projects' ids."""
        admin = self.session("admin", ADMIN_PASSWORD, "admin")
        ep = {"endpoint_override": self.url}
        roles = {r["name"]: r["id"] for r in admin.get("/roles", **ep).json()["roles"]}
        projects = {}
        for name in ("proj-a", "service"):
            projects[name] = admin.post("/projects", json={"project": {"name": name, "domain_id": "default"}},
                                        **ep).json()["project"]["id"]
        for user, project, role in (("alice", "proj-a", "member"), ("rita", "proj-a", "reader"),
                                    ("freezeframe", "service", "service")):
            uid = admin.post("/users", json={"user": {"name": user, "domain_id": "default",
                                                      "password": PASSWORDS[user]}}, **ep).json()["user"]["id"]
            admin.put(f"/projects/{projects[project]}/users/{uid}/roles/{roles[role]}", **ep)
        return projects


@pytest.fixture(scope="module")
def keystone(tmp_path_factory) -> Iterator[tuple[Keystone, dict]]:
    ks = Keystone(keystone_venv(), tmp_path_factory.mktemp("keystone"))
    ks.bootstrap()
    ks.start()
    try:
        yield ks, ks.populate()
    finally:
        ks.stop()


@pytest.fixture(scope="module")
def server(keystone, tmp_path_factory) -> Iterator[LiveServer]:
    ks, _projects = keystone
    srv = start_server(tmp_path_factory.mktemp("ff-keystone"), auth="keystone", env={
        "FREEZEFRAME_AUTH__KEYSTONE_URL": ks.url, "FREEZEFRAME_AUTH__KEYSTONE_USER": "freezeframe",
        "FREEZEFRAME_AUTH__KEYSTONE_PASSWORD": PASSWORDS["freezeframe"]})
    yield srv
    srv.stop()


def token(keystone, user: str, project: str) -> str:
    ks, _ = keystone
    return ks.session(user, PASSWORDS[user], project).get_token()


def test_keystone_token_on_image_and_compute(keystone, server):
    _, projects = keystone
    headers = {"X-Auth-Token": token(keystone, "alice", "proj-a")}
    created = httpx.post(server.image_url + "/v2/images", headers=headers,
                         json={"name": "from-keystone", "disk_format": "raw", "container_format": "bare"})
    assert created.status_code == 201, created.text
    assert created.json()["owner"] == projects["proj-a"]
    assert httpx.get(server.url + "/compute/v2.1/servers", headers=headers).status_code == 200
    reader = {"X-Auth-Token": token(keystone, "rita", "proj-a")}
    listed = httpx.get(server.image_url + "/v2/images", headers=reader)
    assert listed.status_code == 200
    assert created.json()["id"] in [i["id"] for i in listed.json()["images"]]      # same project
    refused = httpx.post(server.image_url + "/v2/images", headers=reader, json={"name": "x"})
    assert refused.status_code == 403                                             # a reader may not write
    # the identity service of `serve` is not there in keystone mode: Keystone is the identity
    # (an unknown path: 401 without a token, as any path that is not public; 404 with one)
    assert httpx.get(server.url + "/identity/v3").status_code == 401
    assert httpx.get(server.url + "/identity/v3", headers=reader).status_code == 404


def test_bad_tokens_are_401(server):
    for bad in ("gAAAAABbogus", "fft_" + "x" * 43, "x" * 6000, "x" * 9000):
        resp = httpx.get(server.image_url + "/v2/images", headers={"X-Auth-Token": bad})
        assert resp.status_code == 401, resp.text
    assert httpx.get(server.image_url + "/v2/images").status_code == 401


def test_service_token_pattern_with_a_keystone_service_token(keystone, server):
    _, projects = keystone
    user, service = token(keystone, "alice", "proj-a"), token(keystone, "freezeframe", "service")
    both = httpx.get(server.image_url + "/v2/images", headers={"X-Auth-Token": user, "X-Service-Token": service})
    assert both.status_code == 200
    acting = {"X-Service-Token": service, "X-User-Id": "alice-id", "X-Project-Id": projects["proj-a"],
              "X-Roles": "member"}
    created = httpx.post(server.image_url + "/v2/images", headers=acting, json={"name": "for-alice"})
    assert created.status_code == 201 and created.json()["owner"] == projects["proj-a"]
    # a user's token is no service token
    assert httpx.get(server.image_url + "/v2/images", headers={**acting, "X-Service-Token": user}).status_code == 401


def test_the_tokens_file_still_works(server):
    import json
    tokens = json.loads((server.data_dir / "tokens.json").read_text())
    admin = next(t for t, ident in tokens.items() if "admin" in ident["roles"])
    assert httpx.get(server.image_url + "/v2/images", headers={"X-Auth-Token": admin}).status_code == 200


def test_validated_tokens_are_cached_failures_are_not(keystone, server):
    """Last (it stops Keystone): a token validated once is answered from the cache; one never
    seen cannot be validated and is a 503, not a 401 and not remembered."""
    ks, _ = keystone
    seen, unseen = token(keystone, "alice", "proj-a"), token(keystone, "rita", "proj-a")
    assert httpx.get(server.image_url + "/v2/images", headers={"X-Auth-Token": seen}).status_code == 200
    ks.stop()
    assert httpx.get(server.image_url + "/v2/images", headers={"X-Auth-Token": seen}).status_code == 200
    down = httpx.get(server.image_url + "/v2/images", headers={"X-Auth-Token": unseen})
    assert down.status_code == 503 and "Keystone" in down.json()["error"]["message"]
    assert down.headers["Retry-After"] == "1"
