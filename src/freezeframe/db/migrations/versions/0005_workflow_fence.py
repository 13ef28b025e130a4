"""workflow fence, lease and host; server host

Revision ID: 0005
Revises: 0004

``workflows.fence`` / ``heartbeat_at``: the owner's lease (conductor/lease.py); ``workflows.host``
and ``instances.host``: the host a server, and the host-bound work on it, belong to.

Backfill (workflows in flight when this is deployed still resume): every server gets the
compute host of the process that migrates (``compute.host``, default this host's name); every
workflow on a server gets its server's host; a workflow owned by a conductor gets a lease that
starts now — that conductor, restarted, takes it back at once, any other after one lease TTL.
"""
import datetime as dt
import socket

from alembic import context, op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('workflows', schema=None) as batch_op:
        batch_op.add_column(sa.Column('fence', sa.BigInteger(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('heartbeat_at', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('host', sa.String(length=255), nullable=True))
        batch_op.create_index(batch_op.f('ix_workflows_host'), ['host'], unique=False)
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.add_column(sa.Column('host', sa.String(length=255), nullable=True))
        batch_op.create_index(batch_op.f('ix_instances_host'), ['host'], unique=False)

    host = context.config.attributes.get("compute_host") or socket.gethostname()
    instances = sa.table('instances', sa.column('id', sa.String), sa.column('host', sa.String))
    workflows = sa.table('workflows', sa.column('resource_id', sa.String), sa.column('resource_type', sa.String),
                         sa.column('host', sa.String), sa.column('owner', sa.String),
                         sa.column('heartbeat_at', sa.DateTime))
    op.execute(instances.update().where(instances.c.host.is_(None)).values(host=host))
    server_host = (sa.select(instances.c.host).where(instances.c.id == workflows.c.resource_id)
                   .scalar_subquery())
    op.execute(workflows.update().where(workflows.c.host.is_(None), workflows.c.resource_type == 'server')
               .values(host=server_host))
    op.execute(workflows.update().where(workflows.c.owner.is_not(None), workflows.c.heartbeat_at.is_(None))
               .values(heartbeat_at=dt.datetime.now(dt.UTC).replace(tzinfo=None)))


def downgrade() -> None:
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_instances_host'))
        batch_op.drop_column('host')
    with op.batch_alter_table('workflows', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_workflows_host'))
        batch_op.drop_column('host')
        batch_op.drop_column('heartbeat_at')
        batch_op.drop_column('fence')
