"""Part-way uploads parked in memory between parts: bounded, and a suspended one still resumes."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import uuid

from freezeframe.assembly import build_services
from freezeframe.common.context import RequestContext
from freezeframe.images import data as data_module
from freezeframe.images.data import Resume
from freezeframe.settings import Settings, StoreSettings

SERVICE = RequestContext(user_id="freezeframe", project_id="service", roles=frozenset({"service", "admin"}))


async def body(data: bytes):
    for i in range(0, len(data), 65536):
        yield data[i:i + 65536]


def test_parked_uploads_are_bounded_and_still_resume(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "PARKED_MAX", 2)
    services = build_services(Settings(data_dir=tmp_path, store=StoreSettings(fsync=False)))
    payloads = {}

    async def scenario() -> None:
        ids = []
        for _ in range(5):        # five uploads stop after their first part (cancelled snapshots)
            image = await services.images.create(SERVICE, {"disk_format": "raw", "container_format": "bare"})
            upload_id, data = str(uuid.uuid4()), os.urandom(3 << 20)
            payloads[image["id"]] = (upload_id, data)
            kept = await services.data.upload(SERVICE, image["id"], body(data[: 1 << 20]), 1 << 20,
                                              Resume(upload_id, 0, final=False))
            assert kept == 1 << 20
            ids.append(image["id"])
        assert len(services.data._parked) == 2                      # the oldest three were suspended
        assert {key[0] for key in services.data._parked} == set(ids[-2:])
        for _ in range(100):      # the suspended ones' hash and write threads are gone
            pipeline_threads = [t for t in threading.enumerate() if t.name.startswith(("ff-hash", "ff-write"))]
            if len(pipeline_threads) <= 2 * 3:
                break
            await asyncio.sleep(0.02)
        assert len(pipeline_threads) <= 2 * 3, [t.name for t in pipeline_threads]
        for image_id in ids:      # every one still finishes: parked ones go on, suspended ones re-hash
            upload_id, data = payloads[image_id]
            assert await services.data.upload(SERVICE, image_id, body(data[1 << 20:]), len(data) - (1 << 20),
                                              Resume(upload_id, 1 << 20, final=True)) is None
            shown = await services.images.show(SERVICE, image_id)
            assert shown["status"] == "active" and shown["os_hash_value"] == hashlib.sha512(data).hexdigest()
            assert shown["checksum"] == hashlib.md5(data).hexdigest()
        assert services.data._parked == {}

    asyncio.run(scenario())


def test_an_idle_part_way_upload_is_released_without_another_request(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "PARKED_IDLE_LIMIT", 0.3)
    services = build_services(Settings(data_dir=tmp_path, store=StoreSettings(fsync=False)))

    async def scenario() -> None:
        image = await services.images.create(SERVICE, {"disk_format": "raw", "container_format": "bare"})
        upload_id = str(uuid.uuid4())
        data = os.urandom(64 << 10) + bytes(4 << 20)       # the part ends in zeros (never written)
        assert await services.data.upload(SERVICE, image["id"], body(data), len(data),
                                          Resume(upload_id, 0, final=False)) == len(data)
        assert len(services.data._parked) == 1
        await asyncio.sleep(1.0)
        assert services.data._parked == {}                   # released by the timer alone
        # and the next part still goes on from the acknowledged offset, holes included
        assert await services.data.upload_offset(SERVICE, image["id"], upload_id) == len(data)
        assert await services.data.upload(SERVICE, image["id"], body(b"end"), 3,
                                          Resume(upload_id, len(data), final=True)) is None
        shown = await services.images.show(SERVICE, image["id"])
        assert shown["status"] == "active" and shown["os_hash_value"] == hashlib.sha512(data + b"end").hexdigest()
        await services.data.close()

    asyncio.run(scenario())
