"""Logging in through an identity v3 service (Freezeframe's ``/identity`` or a Keystone) for a
clouds.yaml entry with ``auth_type`` password, v3password or v3applicationcredential, as
openstackclient does: one ``POST /v3/auth/tokens``, then the token and the service catalog's
endpoints (``interface``, default public, in ``region_name`` when set). One login per process
and cloud, however many endpoints are resolved from it.
"""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from typing import Any, Mapping

import httpx

KEYSTONE_AUTH_TYPES = ("password", "v3password", "v3applicationcredential")
_LOGINS: dict[str, "Login"] = {}


class LoginError(Exception):
    """The cloud's credentials could not be turned into a token (message says why)."""


@dataclass(frozen=True)
class Login:
    token: str
    catalog: tuple[Mapping[str, Any], ...]
    interface: str = "public"
    region: str | None = None

    def url(self, service_type: str) -> str | None:
        for service in self.catalog:
            if service.get("type") != service_type:
                continue
            for endpoint in service.get("endpoints") or ():
                if endpoint.get("interface") == self.interface and \
                        (self.region is None or endpoint.get("region_id", endpoint.get("region")) == self.region):
                    return str(endpoint["url"])
        return None


def _v3(auth_url: str) -> str:
    url = auth_url.rstrip("/")
    return url if url.endswith("/v3") else url + "/v3"


def _domain(auth: Mapping[str, Any], prefix: str) -> dict[str, str]:
    if auth.get(f"{prefix}_domain_id"):
        return {"id": str(auth[f"{prefix}_domain_id"])}
    return {"name": str(auth.get(f"{prefix}_domain_name") or "Default")}


def request_body(auth_type: str, auth: Mapping[str, Any]) -> dict[str, Any]:
    if auth_type == "v3applicationcredential":
        credential: dict[str, Any] = {"secret": str(auth.get("application_credential_secret", ""))}
        if auth.get("application_credential_id"):
            credential["id"] = str(auth["application_credential_id"])
        else:
            user = {"id": str(auth["user_id"])} if auth.get("user_id") else \
                {"name": str(auth.get("username", "")), "domain": _domain(auth, "user")}
            credential.update(name=str(auth.get("application_credential_name", "")), user=user)
        return {"auth": {"identity": {"methods": ["application_credential"], "application_credential": credential}}}
    user = {"id": str(auth["user_id"])} if auth.get("user_id") else \
        {"name": str(auth.get("username", "")), "domain": _domain(auth, "user")}
    user["password"] = str(auth.get("password", ""))
    body: dict[str, Any] = {"auth": {"identity": {"methods": ["password"], "password": {"user": user}}}}
    if auth.get("project_id"):
        body["auth"]["scope"] = {"project": {"id": str(auth["project_id"])}}
    elif auth.get("project_name"):
        body["auth"]["scope"] = {"project": {"name": str(auth["project_name"]), "domain": _domain(auth, "project")}}
    return body


def login(auth_type: str, cloud: Mapping[str, Any], verify: bool | ssl.SSLContext = True) -> Login:
    """A token and the catalog for this cloud; LoginError if refused or unreachable."""
    auth = cloud.get("auth") or {}
    if not auth.get("auth_url"):
        raise LoginError("auth.auth_url is missing")
    url = _v3(str(auth["auth_url"])) + "/auth/tokens"
    body = request_body(auth_type, auth)
    key = json.dumps([url, body, cloud.get("interface"), cloud.get("region_name")], sort_keys=True)
    if key in _LOGINS:
        return _LOGINS[key]
    try:
        resp = httpx.post(url, json=body, verify=verify, timeout=30)
    except httpx.HTTPError as exc:
        raise LoginError(f"cannot reach the identity service at {url}: {exc}") from None
    if resp.status_code != 201 or not resp.headers.get("X-Subject-Token"):
        try:
            message = resp.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = resp.text[:200]
        raise LoginError(f"the identity service at {url} refused the credentials ({resp.status_code}: {message})")
    token = resp.json().get("token") or {}
    found = Login(resp.headers["X-Subject-Token"], tuple(token.get("catalog") or ()),
                  str(cloud.get("interface") or "public"),
                  str(cloud["region_name"]) if cloud.get("region_name") else None)
    _LOGINS[key] = found
    return found
