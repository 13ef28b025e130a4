"""Tokens: issue, validate, expire, revoke; what they may do follows the identity file."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
import yaml

from freezeframe.common import errors
from freezeframe.identity import config
from freezeframe.identity.config import IdentityFile
from freezeframe.identity.model import IdentityToken
from freezeframe.identity.passwords import hash_secret
from freezeframe.identity.tokens import TokenService, token_key


def password(user, pw, project=None):
    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": user, "password": pw}}}}}
    if project:
        body["auth"]["scope"] = {"project": {"name": project}}
    return body


@pytest.fixture
def identity(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "RELOAD_INTERVAL", 0.0)
    path = tmp_path / "identity.yaml"
    path.write_text(yaml.safe_dump({
        "projects": [{"id": "pa", "name": "a"}, {"id": "pb", "name": "b"}],
        "users": [{"id": "ann", "password_hash": hash_secret("pw"), "default_project": "pa",
                   "roles": {"pa": ["admin"], "pb": ["reader"]}}],
        "application_credentials": [{"id": "ac", "user": "ann", "project": "pb", "roles": ["member"],
                                     "secret_hash": hash_secret("s3cret")}]}))
    return IdentityFile(path)


@pytest.fixture
def service(db, identity):
    svc = TokenService(db, identity, expiration=3600, cache_ttl=0)
    yield svc
    svc.close()


def test_issue_and_validate(service):
    async def go():
        secret, token = await service.issue(password("ann", "pw"))
        assert token.project.id == "pa" and token.roles == {"admin", "member", "reader"}   # implied roles
        found = await service.lookup(secret)
        assert found.user.id == "ann" and found.expires_at == token.expires_at
        stored = service.db.run_sync(lambda s: s.get(IdentityToken, token_key(secret)))
        assert stored is not None and secret not in (stored.id, stored.audit_id)   # only the hash is kept
        scoped, token = await service.issue(password("ann", "pw", "b"))
        assert token.roles == {"reader"}
        rescoped, token = await service.issue({"auth": {"identity": {"methods": ["token"], "token": {"id": scoped}},
                                                        "scope": {"project": {"id": "pa"}}}})
        assert token.project.id == "pa"
        assert await service.lookup("fft_unknown") is None and await service.lookup("not-ours") is None
    asyncio.run(go())


def test_app_credential_needs_its_users_roles(service, identity):
    body = {"auth": {"identity": {"methods": ["application_credential"],
                                  "application_credential": {"id": "ac", "secret": "s3cret"}}}}
    with pytest.raises(errors.NotAuthenticated, match="no access"):   # member, and ann is only a reader on b
        asyncio.run(service.issue(body))
    doc = yaml.safe_load(identity.path.read_text())
    doc["users"][0]["roles"]["pb"] = ["member"]
    identity.path.write_text(yaml.safe_dump(doc))
    import os
    os.utime(identity.path, ns=(1, 1))
    _secret, token = asyncio.run(service.issue(body))
    assert token.project.id == "pb" and token.app_credential.id == "ac" and token.roles == {"member", "reader"}
    assert token.methods == ("application_credential",)


@pytest.mark.parametrize("body", [password("ann", "wrong"), password("nobody", "pw"),
                                  password("ann", "pw", "nope")])
def test_refusals(service, body):
    with pytest.raises(errors.NotAuthenticated):
        asyncio.run(service.issue(body))


def test_malformed(service):
    for body in ({}, {"auth": {"identity": {"methods": "password"}}},
                 password("ann", 5)):
        with pytest.raises(errors.Invalid):
            asyncio.run(service.issue(body))


def test_expiry_revocation_and_the_file_deciding(service, identity):
    async def go():
        secret, _ = await service.issue(password("ann", "pw"))
        assert await service.revoke(secret) and await service.lookup(secret) is None
        assert not await service.revoke(secret)
        secret, _ = await service.issue(password("ann", "pw"))
        past = dt.datetime(2000, 1, 1)
        service.db.run_sync(lambda s: setattr(s.get(IdentityToken, token_key(secret)), "expires_at", past))
        assert await service.lookup(secret) is None
        secret, _ = await service.issue(password("ann", "pw"))
        doc = yaml.safe_load(identity.path.read_text())
        doc["users"][0]["enabled"] = False
        identity.path.write_text(yaml.safe_dump(doc))
        import os
        os.utime(identity.path, ns=(1, 1))
        assert await service.lookup(secret) is None          # a disabled user's tokens stop at once
    asyncio.run(go())
