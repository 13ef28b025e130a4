"""volumes

Revision ID: 0007
Revises: 0006

The volume service (seeds 002, 003): ``volumes``, ``volume_snapshots``, seed 002's
``snapshot_admin_metadata`` (one row per key; compute's part of an assisted snapshot is its
``compute_snapshot_status`` row) and ``volume_attachments``; compute's ``block_device_mappings``
(a server's attached volumes and extra local disks). New tables only: nothing to backfill.
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'volumes',
        sa.Column('id', sa.String(length=36), nullable=False),
        sa.Column('name', sa.String(length=255), nullable=True),
        sa.Column('description', sa.Text(), nullable=True),
        sa.Column('project_id', sa.String(length=255), nullable=True),
        sa.Column('user_id', sa.String(length=255), nullable=True),
        sa.Column('size', sa.Integer(), nullable=False),
        sa.Column('status', sa.String(length=30), nullable=False),
        sa.Column('attach_status', sa.String(length=30), nullable=False),
        sa.Column('availability_zone', sa.String(length=255), nullable=False),
        sa.Column('volume_type', sa.String(length=255), nullable=False),
        sa.Column('bootable', sa.Boolean(), nullable=False),
        sa.Column('readonly', sa.Boolean(), nullable=False),
        sa.Column('snapshot_id', sa.String(length=36), nullable=True),
        sa.Column('source_volid', sa.String(length=36), nullable=True),
        sa.Column('image_id', sa.String(length=36), nullable=True),
        sa.Column('host', sa.String(length=255), nullable=True),
        sa.Column('provider_location', sa.Text(), nullable=True),
        sa.Column('metadata_json', sa.Text(), nullable=False),
        sa.Column('image_metadata_json', sa.Text(), nullable=False),
        sa.Column('fault', sa.Text(), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('updated_at', sa.DateTime(), nullable=False),
        sa.Column('status_changed_at', sa.DateTime(), nullable=False),
        sa.Column('deleted_at', sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_volumes_project_id', 'volumes', ['project_id'])
    op.create_index('ix_volumes_status', 'volumes', ['status'])
    op.create_table(
        'volume_snapshots',
        sa.Column('id', sa.String(length=36), nullable=False),
        sa.Column('volume_id', sa.String(length=36), nullable=False),
        sa.Column('name', sa.String(length=255), nullable=True),
        sa.Column('description', sa.Text(), nullable=True),
        sa.Column('project_id', sa.String(length=255), nullable=True),
        sa.Column('user_id', sa.String(length=255), nullable=True),
        sa.Column('volume_size', sa.Integer(), nullable=False),
        sa.Column('status', sa.String(length=30), nullable=False),
        sa.Column('progress', sa.String(length=10), nullable=False),
        sa.Column('metadata_json', sa.Text(), nullable=False),
        sa.Column('owner_image_id', sa.String(length=36), nullable=True),
        sa.Column('fault', sa.Text(), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('updated_at', sa.DateTime(), nullable=False),
        sa.Column('status_changed_at', sa.DateTime(), nullable=False),
        sa.Column('deleted_at', sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(['volume_id'], ['volumes.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_volume_snapshots_volume_id', 'volume_snapshots', ['volume_id'])
    op.create_index('ix_volume_snapshots_project_id', 'volume_snapshots', ['project_id'])
    op.create_index('ix_volume_snapshots_status', 'volume_snapshots', ['status'])
    op.create_index('ix_volume_snapshots_owner_image_id', 'volume_snapshots', ['owner_image_id'])
    op.create_table(
        'snapshot_admin_metadata',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('snapshot_id', sa.String(length=36), nullable=False),
        sa.Column('key', sa.String(length=255), nullable=False),
        sa.Column('value', sa.Text(), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('updated_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['snapshot_id'], ['volume_snapshots.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('snapshot_id', 'key', name='uq_snapshot_admin_metadata_key'),
    )
    op.create_table(
        'volume_attachments',
        sa.Column('id', sa.String(length=36), nullable=False),
        sa.Column('volume_id', sa.String(length=36), nullable=False),
        sa.Column('instance_uuid', sa.String(length=36), nullable=True),
        sa.Column('attach_status', sa.String(length=30), nullable=False),
        sa.Column('attach_mode', sa.String(length=4), nullable=False),
        sa.Column('mountpoint', sa.String(length=255), nullable=True),
        sa.Column('attached_host', sa.String(length=255), nullable=True),
        sa.Column('connector_json', sa.Text(), nullable=True),
        sa.Column('connection_info_json', sa.Text(), nullable=True),
        sa.Column('attach_time', sa.DateTime(), nullable=True),
        sa.Column('detach_time', sa.DateTime(), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('updated_at', sa.DateTime(), nullable=False),
        sa.Column('deleted_at', sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(['volume_id'], ['volumes.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_volume_attachments_volume_id', 'volume_attachments', ['volume_id'])
    op.create_index('ix_volume_attachments_instance_uuid', 'volume_attachments', ['instance_uuid'])
    op.create_index('ix_volume_attachments_status', 'volume_attachments', ['volume_id', 'attach_status'])
    op.create_table(
        'block_device_mappings',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('instance_uuid', sa.String(length=36), nullable=False),
        sa.Column('device_name', sa.String(length=20), nullable=False),
        sa.Column('source_type', sa.String(length=20), nullable=False),
        sa.Column('destination_type', sa.String(length=20), nullable=False),
        sa.Column('boot_index', sa.Integer(), nullable=True),
        sa.Column('volume_id', sa.String(length=36), nullable=True),
        sa.Column('attachment_id', sa.String(length=36), nullable=True),
        sa.Column('volume_size', sa.Integer(), nullable=True),
        sa.Column('disk_path', sa.Text(), nullable=True),
        sa.Column('connection_info', sa.Text(), nullable=True),
        sa.Column('tag', sa.String(length=255), nullable=True),
        sa.Column('delete_on_termination', sa.Boolean(), nullable=False),
        sa.Column('status', sa.String(length=20), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('updated_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['instance_uuid'], ['instances.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_block_device_mappings_instance_uuid', 'block_device_mappings', ['instance_uuid'])
    op.create_index('ix_block_device_mappings_volume_id', 'block_device_mappings', ['volume_id'])
    op.create_index('ux_bdm_instance_device', 'block_device_mappings', ['instance_uuid', 'device_name'], unique=True)


def downgrade() -> None:
    op.drop_table('block_device_mappings')
    op.drop_table('volume_attachments')
    op.drop_table('snapshot_admin_metadata')
    op.drop_table('volume_snapshots')
    op.drop_table('volumes')
