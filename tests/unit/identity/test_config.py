"""The identity file: parsing, refusals that say where, reload on change; password hashes."""

from __future__ import annotations

import datetime as dt
import os

import pytest
import yaml

from freezeframe.common import errors
from freezeframe.identity import config, passwords
from freezeframe.identity.config import IdentityFile, parse

HASH = passwords.hash_secret("pw")


def doc(**extra):
    base = {"projects": [{"id": "p1", "name": "one"}, {"id": "p2", "name": "two", "enabled": False}],
            "users": [{"id": "u1", "name": "ann", "password_hash": HASH, "default_project": "one",
                       "roles": {"one": ["member"], "p2": ["admin"]}}]}
    base.update(extra)
    return base


def test_parse_resolves_names_and_roles():
    d = parse(doc(application_credentials=[{"id": "ac", "user": "ann", "project": "one", "secret_hash": HASH}]))
    user = d.user({"name": "ann", "domain": {"name": "Default"}})
    assert user is d.users["u1"] and user.default_project == "p1"
    assert d.roles(user, d.projects["p1"]) == {"member"}
    assert d.roles(user, d.projects["p2"]) == frozenset()               # disabled project
    assert [p.id for p in d.projects_of(user)] == ["p1"]
    assert d.app_credentials["ac"].roles == {"member"}                  # default: the user's roles
    assert d.app_credential({"name": "ac", "user": {"id": "u1"}}) is d.app_credentials["ac"]
    assert d.user({"name": "ann", "domain": {"name": "Other"}}) is None  # one domain only
    assert d.project({"name": "one"}).id == "p1"


@pytest.mark.parametrize("bad, where", [
    ({"users": [{"id": "u", "password": "plain"}]}, "plain 'password'"),
    ({"users": [{"id": "u", "password_hash": "md5$x"}]}, "password_hash"),
    ({"users": [{"id": "u", "roles": {"nope": ["member"]}}]}, "no project 'nope'"),
    ({"users": [{"id": "bad id!"}]}, "users[0].id"),
    ({"users": [{"id": "a", "name": "x"}, {"id": "b", "name": "x"}]}, "same name"),
    ({"application_credentials": [{"id": "ac", "user": "ghost", "project": "one", "secret_hash": HASH}]},
     "no user 'ghost'"),
    ({"application_credentials": [{"id": "ac", "user": "ann", "project": "one", "secret_hash": HASH,
                                   "expires_at": "soon"}]}, "ISO 8601"),
    ({"groups": []}, "unknown keys"),
])
def test_parse_refuses_clearly(bad, where):
    base = doc()
    base.update(bad)
    with pytest.raises(errors.Invalid, match=where.replace("[", r"\[").replace("]", r"\]")):
        parse(base)


def test_app_credential_expiry():
    d = parse(doc(application_credentials=[{"id": "ac", "user": "u1", "project": "p1", "secret_hash": HASH,
                                            "expires_at": "2020-01-01T00:00:00Z"}]))
    assert d.app_credentials["ac"].expired(dt.datetime(2021, 1, 1))


def test_generated_file_and_reload(tmp_path, monkeypatch):
    path = tmp_path / "identity.yaml"
    generated = config.write_default(path)
    assert set(generated) == {"admin", "demo", "freezeframe"}
    assert path.stat().st_mode & 0o777 == 0o600
    assert not any(pw in path.read_text() for pw in generated.values())
    monkeypatch.setattr(config, "RELOAD_INTERVAL", 0.0)
    ident = IdentityFile(path)
    demo = ident.current().users["demo"]
    assert passwords.check_secret(generated["demo"], demo.password_hash)
    assert ident.current().roles(demo, ident.current().projects["demo"]) == {"member"}
    content = yaml.safe_load(path.read_text())
    content["users"] = [u for u in content["users"] if u["id"] != "demo"]
    path.write_text(yaml.safe_dump(content))
    os.utime(path, ns=(1, 1))                 # a changed stamp whatever the clock's resolution
    assert "demo" not in ident.current().users
    path.write_text("users: [unclosed")        # a broken edit keeps the last good content
    os.utime(path, ns=(2, 2))
    assert "admin" in ident.current().users
    with pytest.raises(FileExistsError):
        config.write_default(path)


def test_password_hashes():
    assert passwords.check_secret("pw", HASH) and not passwords.check_secret("px", HASH)
    assert passwords.hash_secret("pw") != HASH                        # salted
    assert not passwords.check_secret("pw", "garbage") and not passwords.check_nothing("pw")
    import base64
    import hashlib
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()   # noqa: E731
    pbkdf2 = f"pbkdf2_sha256$1000${b64(b'salt')}${b64(hashlib.pbkdf2_hmac('sha256', b'pw', b'salt', 1000))}"
    assert passwords.valid_hash(pbkdf2) and passwords.check_secret("pw", pbkdf2)
