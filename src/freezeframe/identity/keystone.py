"""Validating tokens against an existing Keystone, for deployments that already run OpenStack.

keystonemiddleware's ``auth_token`` is a WSGI (webob) filter: on an ASGI stack it would hold a
worker thread per request and cannot stream bodies through. It does two things here that
matter — validate a token as the service user (``GET /v3/auth/tokens`` with
``X-Subject-Token``) and cache the answer — and this module does exactly those with the same
library underneath (keystoneauth1): a session authenticated as the service user (it renews its
own token), a cache of validated tokens for at most ``cache_ttl`` (<= 300 s, never past the
token's expiry; refusals are not cached, so a token is usable as soon as Keystone issues it),
and the calls on a bounded pool of their own, never on the event loop.

As with keystonemiddleware's cache, a token revoked in Keystone stays usable here until its
cache entry ends (``auth.keystone_cache_ttl``).
"""

from __future__ import annotations

import collections
import hashlib
import logging
import threading
import time
from typing import Any

from freezeframe.common import errors
from freezeframe.common.context import Actor
from freezeframe.common.pools import BoundedPool

LOG = logging.getLogger(__name__)
CACHE_SIZE = 10000
_MAX_TOKEN = 8192        # Keystone's own limit is far lower (255 for fernet tokens)


def v3_url(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/v3") else url + "/v3"


class KeystoneValidator:
    def __init__(self, url: str, *, user: str, password: str, project: str, user_domain: str = "Default",
                 project_domain: str = "Default", cache_ttl: float = 300.0, timeout: float = 10.0,
                 session: Any = None) -> None:
        try:
            from keystoneauth1 import session as ks_session
            from keystoneauth1.identity import v3
        except ImportError:
            raise errors.Invalid("auth.mode 'keystone' needs keystoneauth1: pip install 'freezeframe[keystone]'") \
                from None
        self.url = v3_url(url)
        self._session = session or ks_session.Session(auth=v3.Password(
            auth_url=self.url, username=user, password=password, project_name=project,
            user_domain_name=user_domain, project_domain_name=project_domain), timeout=timeout)
        self.cache_ttl = min(cache_ttl, 300.0)
        self._cache: collections.OrderedDict[str, tuple[Actor, float]] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._pool = BoundedPool("keystone", workers=4, queue=64, serves_requests=False)

    def close(self) -> None:
        self._pool.shutdown(wait=False)

    def cached_actor(self, token: str) -> Actor | None:
        key = hashlib.sha256(token.encode()).hexdigest()
        with self._lock:
            hit = self._cache.get(key)
            if hit is None:
                return None
            if time.time() >= hit[1]:
                del self._cache[key]
                return None
            return hit[0]

    async def actor(self, token: str) -> Actor | None:
        if not token or len(token) > _MAX_TOKEN:
            return None
        return self.cached_actor(token) or await self._pool.run(self._validate, token)

    def _validate(self, token: str) -> Actor | None:
        from keystoneauth1 import access
        from keystoneauth1 import exceptions as ks_errors

        try:
            resp = self._session.get(self.url + "/auth/tokens", headers={"X-Subject-Token": token},
                                     authenticated=True)
        except (ks_errors.NotFound, ks_errors.Unauthorized):
            return None                       # unknown, expired or revoked: not cached
        except ks_errors.Forbidden as exc:
            LOG.error("Keystone refuses to let the service user validate tokens (needs role service or "
                      "admin): %s", exc)
            raise errors.BackendUnavailable("Tokens cannot be validated: the service user lacks the right to "
                                            "(see the server log)") from None
        except ks_errors.HttpError as exc:
            if exc.http_status is not None and 400 <= exc.http_status < 500:
                return None                   # a token Keystone will not even read: invalid
            LOG.warning("Keystone at %s: %s", self.url, exc)
            raise errors.BackendUnavailable(f"Keystone is unavailable: {exc}") from None
        except ks_errors.ClientException as exc:
            LOG.warning("Keystone at %s: %s", self.url, exc)
            raise errors.BackendUnavailable(f"Keystone is unavailable: {exc}") from None
        body: Any = resp.json()
        ref = access.create(resp=resp, body=body)
        actor = Actor(ref.user_id, ref.project_id, frozenset(ref.role_names or ()))
        until = time.time() + self.cache_ttl
        if ref.expires is not None:
            until = min(until, ref.expires.timestamp())
        if until > time.time():
            key = hashlib.sha256(token.encode()).hexdigest()
            with self._lock:
                self._cache[key] = (actor, until)
                while len(self._cache) > CACHE_SIZE:
                    self._cache.popitem(last=False)
        return actor
