"""health heartbeat

Revision ID: 0003
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('health_heartbeat',
    sa.Column('id', sa.String(length=255), nullable=False),
    sa.Column('beat_at', sa.DateTime(), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.Column('beats', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_health_heartbeat'))
    )


def downgrade() -> None:
    op.drop_table('health_heartbeat')
