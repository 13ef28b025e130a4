"""images/states.py: Glance's statuses and moves (glance/domain/__init__.py, Image.valid_state_targets)
on the one mechanism, SQLite and PostgreSQL."""

import pytest

from freezeframe.common import errors
from freezeframe.common.statemachine import LostRace
from freezeframe.images.model import Image
from freezeframe.images.states import COUNTS, IMAGE, TRANSITIONS, ImageStatus, allowed, transition

S = ImageStatus

# glance/domain/__init__.py, Image.valid_state_targets (Glance's words, its table)
GLANCE_TABLE = {
    "queued": ("saving", "uploading", "importing", "active", "deleted"),
    "saving": ("active", "killed", "deleted", "queued"),
    "uploading": ("importing", "queued", "deleted"),
    "importing": ("active", "deleted", "queued"),
    "active": ("pending_delete", "deleted", "deactivated"),
    "killed": ("deleted",),
    "pending_delete": ("deleted", "active"),
    "deleted": (),
    "deactivated": ("active", "deleted"),
}
# Freezeframe's extensions (docs/state-machines.md): the reaper or a giving-up workflow kills an
# image stuck before or while its data arrives.
EXTENSIONS = {("queued", "killed"), ("uploading", "killed"), ("importing", "killed")}


def test_statuses_are_glances_words():
    assert {str(s) for s in ImageStatus} == set(GLANCE_TABLE)


def test_table_is_glance_plus_documented_extensions():
    glance = {(f, t) for f, targets in GLANCE_TABLE.items() for t in targets}
    ours = {(str(f), str(t)) for f, t in TRANSITIONS}
    assert ours == glance | EXTENSIONS
    assert IMAGE.transitions == TRANSITIONS and IMAGE.terminal == {S.DELETED}


def test_nothing_leaves_deleted_and_active_never_goes_back_to_saving():
    assert not any(f == S.DELETED for f, _ in TRANSITIONS)
    assert not allowed("active", "saving")
    assert not allowed("active", "queued")
    assert not allowed("bogus", "queued")


def add(db, image_id, status, upload_id=None):
    db.run_sync(lambda s: s.add(Image(id=image_id, status=status, visibility="private", protected=False,
                                      os_hidden=False, min_disk=0, min_ram=0, upload_id=upload_id)))


def get(db, image_id):
    return db.run_sync(lambda s: s.get(Image, image_id))


def test_transition_persists_counts_and_timestamps(db):
    add(db, "a", "queued")
    created = get(db, "a").status_changed_at
    before = COUNTS["queued->saving"]
    db.run_sync(lambda s: transition(s, "a", S.QUEUED, S.SAVING, reason="t", values={"upload_id": "u"}))
    image = get(db, "a")
    assert image.status == "saving" and image.upload_id == "u"
    assert image.status_changed_at == image.updated_at and image.status_changed_at >= created
    assert COUNTS["queued->saving"] == before + 1
    assert COUNTS is IMAGE.counts


def test_invalid_transition_is_refused_before_touching_the_row(db):
    add(db, "b", "active")
    with pytest.raises(errors.InvalidState, match="Image status transition from active to saving is not allowed "
                                                  r"\(from active only to deactivated, deleted, pending_delete\)"):
        db.run_sync(lambda s: transition(s, "b", S.ACTIVE, S.SAVING, reason="t"))
    assert get(db, "b").status == "active"


def test_compare_and_set_loser_gets_conflict(db):
    add(db, "c", "queued")
    db.run_sync(lambda s: transition(s, "c", S.QUEUED, S.SAVING, reason="winner"))
    with pytest.raises(LostRace, match="Image c is saving now, not queued"):
        db.run_sync(lambda s: transition(s, "c", S.QUEUED, S.SAVING, reason="loser"))


def test_upload_id_guards_the_owner(db):
    add(db, "d", "queued")
    db.run_sync(lambda s: transition(s, "d", S.QUEUED, S.SAVING, reason="t", values={"upload_id": "mine"}))
    with pytest.raises(errors.InvalidState, match="being changed by another request.*upload_id"):
        db.run_sync(lambda s: transition(s, "d", S.SAVING, S.ACTIVE, reason="t", upload_id="someone-else"))
    db.run_sync(lambda s: transition(s, "d", S.SAVING, S.ACTIVE, reason="t", upload_id="mine"))
    assert get(db, "d").status == "active"


def test_missing_image_is_not_found(db):
    with pytest.raises(errors.NotFound, match="No image found with ID nope"):
        db.run_sync(lambda s: transition(s, "nope", S.QUEUED, S.SAVING, reason="t"))
