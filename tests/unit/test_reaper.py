import datetime as dt


from freezeframe.images.model import Image, ImageProperty
from freezeframe.images.reaper import OWNER_PROPERTY, Reaper
from freezeframe.images.states import ImageStatus, transition
from freezeframe.settings import ReaperSettings

T0 = dt.datetime(2026, 1, 1, 12, 0, 0)
SETTINGS = ReaperSettings(queued_timeout=3600, saving_timeout=600, killed_grace=300)


def add(db, image_id, status, changed=T0, progress=None, upload_id=None, owner_workflow=None, key=None):
    def insert(s):
        image = Image(id=image_id, status=status, visibility="private", protected=False, os_hidden=False,
                      min_disk=0, min_ram=0, created_at=changed, updated_at=changed, status_changed_at=changed,
                      upload_progress_at=progress, upload_id=upload_id, store_key=key)
        if owner_workflow:
            image.properties.append(ImageProperty(name=OWNER_PROPERTY, value=owner_workflow))
        s.add(image)
    db.run_sync(insert)


def status(db, image_id):
    image = db.run_sync(lambda s: s.get(Image, image_id))
    return image.status if image else None


def test_stalled_upload_is_killed_but_progressing_one_is_not(db, store):
    add(db, "stalled", "saving", progress=T0, upload_id="u1")
    add(db, "moving", "saving", progress=T0 + dt.timedelta(seconds=590), upload_id="u2")
    reaper = Reaper(db, store, SETTINGS)
    done = reaper.reap_once(now=T0 + dt.timedelta(seconds=700))
    assert done == {"killed_stalled": 1}
    assert status(db, "stalled") == "killed"
    assert status(db, "moving") == "saving"
    assert reaper.counts["killed_stalled"] == 1


def test_queued_timeout_respects_live_owner(db, store):
    add(db, "orphan", "queued")
    add(db, "owned-dead", "queued", owner_workflow="wf-dead")
    add(db, "owned-alive", "queued", owner_workflow="wf-alive")
    add(db, "young", "queued", changed=T0 + dt.timedelta(seconds=3000))
    reaper = Reaper(db, store, SETTINGS, owner_alive=lambda wf: wf == "wf-alive")
    done = reaper.reap_once(now=T0 + dt.timedelta(seconds=3700))
    assert done == {"killed_queued": 2}
    assert [status(db, i) for i in ("orphan", "owned-dead", "owned-alive", "young")] == \
        ["killed", "killed", "queued", "queued"]


def test_unknown_liveness_leaves_image_alone(db, store):
    add(db, "owned", "queued", owner_workflow="wf")

    def broken(_wf):
        raise ConnectionError("coordination backend down")

    assert Reaper(db, store, SETTINGS, owner_alive=broken).reap_once(now=T0 + dt.timedelta(days=2)) == {}
    assert status(db, "owned") == "queued"


def test_killed_images_deleted_after_grace_with_data(db, store):
    writer = store.writer("img-data", "u1")
    writer.write(b"x" * 100, 0)
    writer.commit(100)
    add(db, "img-data", "killed", key="img-data")
    add(db, "recent", "killed", changed=T0 + dt.timedelta(seconds=200))
    reaper = Reaper(db, store, SETTINGS)
    assert reaper.reap_once(now=T0 + dt.timedelta(seconds=301)) == {"deleted_killed": 1}
    assert status(db, "img-data") is None
    assert store.stat("img-data") is None
    assert status(db, "recent") == "killed"


def test_kill_races_with_upload_completion(db, store):
    """The kill is a compare-and-set on the upload: if the upload finished first, nothing happens."""
    add(db, "racer", "saving", progress=T0, upload_id="u1")
    reaper = Reaper(db, store, SETTINGS)
    db.run_sync(lambda s: transition(s, "racer", ImageStatus.SAVING, ImageStatus.ACTIVE, reason="done",
                                     upload_id="u1"))
    assert reaper._kill("racer", ImageStatus.SAVING, "u1", "test") is False
    assert status(db, "racer") == "active"


def test_abandoned_partials_removed(db, store, tmp_path):
    import os
    import time
    writer = store.writer("abandoned", "u-dead")
    writer.write(b"y" * 10, 0)
    old = time.time() - 1000
    for entry in (store.root / ".partial").iterdir():
        os.utime(entry, (old, old))
    fresh = store.writer("fresh", "u-fresh")
    fresh.write(b"z", 0)
    store.writer("slow", "u-slow")  # an upload still owning its image, idle for long
    for entry in (store.root / ".partial").iterdir():
        if entry.name.endswith("u-slow"):
            os.utime(entry, (old, old))
    add(db, "slow", "saving", progress=T0, upload_id="u-slow")
    assert Reaper(db, store, SETTINGS).reap_once(now=T0) == {"partials_removed": 1}
    assert sorted(e.name.rsplit(".", 1)[1] for e in (store.root / ".partial").iterdir()) == ["u-fresh", "u-slow"]
