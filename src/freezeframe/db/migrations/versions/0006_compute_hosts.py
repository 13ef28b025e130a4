"""compute hosts

Revision ID: 0006
Revises: 0005

``compute_hosts``: every `freezeframe compute --host NAME` registers its host API URL and
heartbeats (compute/hosts.py). Nothing to backfill: a host registers itself when it starts;
until then its servers' host-bound work waits (a 409 for the API, a pending workflow).
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'compute_hosts',
        sa.Column('name', sa.String(length=255), nullable=False),
        sa.Column('url', sa.String(length=1024), nullable=False),
        sa.Column('driver', sa.String(length=30), nullable=False),
        sa.Column('started_at', sa.DateTime(), nullable=False),
        sa.Column('heartbeat_at', sa.DateTime(), nullable=False),
        sa.Column('disabled', sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint('name'),
    )


def downgrade() -> None:
    op.drop_table('compute_hosts')
