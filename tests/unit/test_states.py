import pytest

from freezeframe.common import errors
from freezeframe.images.model import Image
from freezeframe.images.states import COUNTS, TRANSITIONS, ImageStatus, allowed, transition

S = ImageStatus

GLANCE_TABLE = {
    "queued": {"saving", "uploading", "importing", "active", "deleted"},
    "saving": {"active", "killed", "deleted", "queued"},
    "uploading": {"importing", "queued", "deleted"},
    "importing": {"active", "deleted", "queued"},
    "active": {"pending_delete", "deleted", "deactivated"},
    "killed": {"deleted"},
    "pending_delete": {"deleted", "active"},
    "deactivated": {"active", "deleted"},
}
EXTENSIONS = {("queued", "killed"), ("uploading", "killed"), ("importing", "killed")}


def test_table_is_glance_plus_documented_extensions():
    glance = {(f, t) for f, targets in GLANCE_TABLE.items() for t in targets}
    ours = {(str(f), str(t)) for f, t in TRANSITIONS}
    assert ours == glance | EXTENSIONS


def test_nothing_leaves_deleted_and_active_never_goes_back_to_saving():
    assert not any(f == S.DELETED for f, _ in TRANSITIONS)
    assert not allowed("active", "saving")
    assert not allowed("active", "queued")


def add(db, image_id, status):
    db.run_sync(lambda s: s.add(Image(id=image_id, status=status, visibility="private", protected=False,
                                      os_hidden=False, min_disk=0, min_ram=0)))


def test_transition_persists_counts_and_timestamps(db):
    add(db, "a", "queued")
    before = COUNTS["queued->saving"]
    db.run_sync(lambda s: transition(s, "a", S.QUEUED, S.SAVING, reason="t", values={"upload_id": "u"}))
    image = db.run_sync(lambda s: s.get(Image, "a"))
    assert image.status == "saving" and image.upload_id == "u"
    assert image.status_changed_at is not None
    assert COUNTS["queued->saving"] == before + 1


def test_invalid_transition_is_refused_before_touching_the_row(db):
    add(db, "b", "active")
    with pytest.raises(errors.InvalidState, match="from active to saving"):
        db.run_sync(lambda s: transition(s, "b", S.ACTIVE, S.SAVING, reason="t"))
    assert db.run_sync(lambda s: s.get(Image, "b")).status == "active"


def test_compare_and_set_loser_gets_conflict(db):
    add(db, "c", "queued")
    db.run_sync(lambda s: transition(s, "c", S.QUEUED, S.SAVING, reason="winner"))
    with pytest.raises(errors.InvalidState, match="from saving to saving"):
        db.run_sync(lambda s: transition(s, "c", S.QUEUED, S.SAVING, reason="loser"))


def test_upload_id_guards_the_owner(db):
    add(db, "d", "queued")
    db.run_sync(lambda s: transition(s, "d", S.QUEUED, S.SAVING, reason="t", values={"upload_id": "mine"}))
    with pytest.raises(errors.InvalidState):
        db.run_sync(lambda s: transition(s, "d", S.SAVING, S.ACTIVE, reason="t", upload_id="someone-else"))
    db.run_sync(lambda s: transition(s, "d", S.SAVING, S.ACTIVE, reason="t", upload_id="mine"))


def test_missing_image_is_not_found(db):
    with pytest.raises(errors.NotFound):
        db.run_sync(lambda s: transition(s, "nope", S.QUEUED, S.SAVING, reason="t"))
