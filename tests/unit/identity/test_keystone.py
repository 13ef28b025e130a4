"""The Keystone validator's cache: at most cache_ttl, never past the token's expiry, refusals
and failures never cached (a real Keystone: tests/compat/test_keystone.py)."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

pytest.importorskip("keystoneauth1")
from keystoneauth1 import exceptions as ks_errors  # noqa: E402

from freezeframe.common import errors  # noqa: E402
from freezeframe.identity.keystone import KeystoneValidator  # noqa: E402


class Resp:
    def __init__(self, body):
        self.body, self.headers, self.status_code = body, {"X-Subject-Token": "t"}, 200

    def json(self):
        return self.body


class FakeSession:
    def __init__(self):
        self.calls, self.answer = 0, None

    def get(self, url, headers, authenticated):
        self.calls += 1
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def body(expires_in: float) -> dict:
    now = dt.datetime.now(dt.timezone.utc)
    fmt = "%Y-%m-%dT%H:%M:%S.%fZ"
    return {"token": {"methods": ["password"], "issued_at": now.strftime(fmt),
                      "expires_at": (now + dt.timedelta(seconds=expires_in)).strftime(fmt),
                      "user": {"id": "u1", "name": "alice", "domain": {"id": "default", "name": "Default"}},
                      "project": {"id": "p1", "name": "a", "domain": {"id": "default", "name": "Default"}},
                      "roles": [{"id": "r", "name": "member"}]}}


@pytest.fixture
def validator():
    session = FakeSession()
    v = KeystoneValidator("http://ks:5000", user="svc", password="pw", project="service", session=session)
    yield v, session
    v.close()


def test_cached_until_ttl_or_expiry(validator):
    v, session = validator
    session.answer = Resp(body(3600))
    actor = asyncio.run(v.actor("tok"))
    assert (actor.user_id, actor.project_id, actor.roles) == ("u1", "p1", {"member"})
    assert v.cached_actor("tok") == actor and asyncio.run(v.actor("tok")) == actor and session.calls == 1
    session.answer = Resp(body(-1))                       # already expired: never cached
    asyncio.run(v.actor("old"))
    assert v.cached_actor("old") is None
    v.cache_ttl = 0
    session.answer = Resp(body(3600))
    asyncio.run(v.actor("brief"))
    assert v.cached_actor("brief") is None


def test_refusals_and_failures_are_not_cached(validator):
    v, session = validator
    session.answer = ks_errors.NotFound()
    assert asyncio.run(v.actor("gone")) is None
    session.answer = ks_errors.ConnectFailure("down")
    with pytest.raises(errors.BackendUnavailable):
        asyncio.run(v.actor("gone"))
    session.answer = ks_errors.Forbidden()
    with pytest.raises(errors.BackendUnavailable, match="lacks the right"):
        asyncio.run(v.actor("gone"))
    assert session.calls == 3 and v.cached_actor("gone") is None
    assert v.url == "http://ks:5000/v3"
