"""The default metadata-definition catalog: loaded by migration 0009, once; loading again adds
nothing; the migration goes down and up again."""

from sqlalchemy import func, select

from freezeframe.db.migrate import downgrade, upgrade
from freezeframe.images import metadef_catalog
from freezeframe.images.metadef_model import MetadefAssociation, MetadefNamespace, MetadefProperty, MetadefResourceType


def _counts(db):
    def count(session):
        return tuple(session.scalar(select(func.count()).select_from(m)) for m in
                     (MetadefNamespace, MetadefProperty, MetadefAssociation, MetadefResourceType))
    return db.run_sync(count)


def test_seeded_once_and_idempotent(db):
    first = _counts(db)
    assert first == (len(metadef_catalog.CATALOG), sum(len(d["properties"]) for d in metadef_catalog.CATALOG),
                     len(metadef_catalog.CATALOG), len(metadef_catalog.RESOURCE_TYPES))
    with db.engine.begin() as conn:
        metadef_catalog.seed(conn)
    assert _counts(db) == first
    names = db.run_sync(lambda s: set(s.scalars(select(MetadefNamespace.namespace))))
    assert names == {"OS::Freezeframe::Workflow", "OS::Freezeframe::Quiesce"}


def test_downgrade_and_upgrade_again(db):
    downgrade(db.engine, "0008")
    upgrade(db.engine)
    assert _counts(db)[0] == len(metadef_catalog.CATALOG)
