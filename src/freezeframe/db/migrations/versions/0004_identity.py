"""identity tokens

Revision ID: 0004
Revises: 0003
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('identity_tokens',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('user_id', sa.String(length=64), nullable=False),
    sa.Column('project_id', sa.String(length=64), nullable=False),
    sa.Column('methods', sa.String(length=255), nullable=False),
    sa.Column('audit_id', sa.String(length=32), nullable=False),
    sa.Column('app_credential_id', sa.String(length=64), nullable=True),
    sa.Column('issued_at', sa.DateTime(), nullable=False),
    sa.Column('expires_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_identity_tokens'))
    )
    with op.batch_alter_table('identity_tokens', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_identity_tokens_expires_at'), ['expires_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('identity_tokens', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_identity_tokens_expires_at'))
    op.drop_table('identity_tokens')
