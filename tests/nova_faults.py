"""Nova's fault body, as the compute API answers every error:
``{"<faultName>": {"code": <status>, "message": ..., "request_id": ...}}`` (nova/api/openstack/wsgi.py
``Fault``; the request id beside ``X-OpenStack-Request-Id``)."""

from __future__ import annotations

from typing import Any

from freezeframe.common.web.errors import FAULT_NAMES


def nova_fault(resp) -> dict[str, Any]:
    """The inner object of a compute error answer, checked: one key, Nova's name for the status,
    the status as ``code``, a text ``message``, the request id."""
    body = resp.json()
    assert isinstance(body, dict) and len(body) == 1, body
    (name, inner), = body.items()
    assert name == FAULT_NAMES.get(resp.status_code, "computeFault"), body
    assert inner["code"] == resp.status_code and isinstance(inner["message"], str), body
    assert inner["request_id"] == resp.headers["x-openstack-request-id"], (body, resp.headers)
    return inner
