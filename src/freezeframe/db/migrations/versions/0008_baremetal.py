"""baremetal

Revision ID: 0008
Revises: 0007

The bare-metal service (seed 004): ``baremetal_nodes`` (Ironic's node, with the agent's token,
address and last heartbeat in their own columns), ``baremetal_ports`` (MACs the agent looks its
node up by) and ``baremetal_transfers`` (each node snapshot's WebDAV path and credential). New
tables, and compute's ``instances.node`` (a bare-metal server's node; NULL for every VM: nothing
to backfill).
"""
from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'baremetal_nodes',
        sa.Column('id', sa.String(length=36), nullable=False),
        sa.Column('name', sa.String(length=255), nullable=True),
        sa.Column('description', sa.Text(), nullable=True),
        sa.Column('driver', sa.String(length=255), nullable=False),
        sa.Column('power_interface', sa.String(length=255), nullable=False),
        sa.Column('boot_interface', sa.String(length=255), nullable=False),
        sa.Column('snapshot_interface', sa.String(length=255), nullable=False),
        sa.Column('other_interfaces_json', sa.Text(), nullable=False),
        sa.Column('provision_state', sa.String(length=20), nullable=False),
        sa.Column('target_provision_state', sa.String(length=20), nullable=True),
        sa.Column('provision_updated_at', sa.DateTime(), nullable=True),
        sa.Column('power_state', sa.String(length=20), nullable=True),
        sa.Column('target_power_state', sa.String(length=20), nullable=True),
        sa.Column('last_error', sa.Text(), nullable=True),
        sa.Column('maintenance', sa.Boolean(), nullable=False),
        sa.Column('maintenance_reason', sa.Text(), nullable=True),
        sa.Column('reservation', sa.String(length=255), nullable=True),
        sa.Column('conductor_group', sa.String(length=255), nullable=False),
        sa.Column('resource_class', sa.String(length=80), nullable=True),
        sa.Column('owner', sa.String(length=255), nullable=True),
        sa.Column('lessee', sa.String(length=255), nullable=True),
        sa.Column('instance_uuid', sa.String(length=36), nullable=True),
        sa.Column('properties_json', sa.Text(), nullable=False),
        sa.Column('instance_info_json', sa.Text(), nullable=False),
        sa.Column('driver_info_json', sa.Text(), nullable=False),
        sa.Column('driver_internal_info_json', sa.Text(), nullable=False),
        sa.Column('extra_json', sa.Text(), nullable=False),
        sa.Column('agent_token', sa.String(length=255), nullable=True),
        sa.Column('agent_url', sa.String(length=255), nullable=True),
        sa.Column('agent_version', sa.String(length=64), nullable=True),
        sa.Column('agent_last_heartbeat', sa.DateTime(), nullable=True),
        sa.Column('agent_status_json', sa.Text(), nullable=False),
        sa.Column('snapshot_image_id', sa.String(length=36), nullable=True),
        sa.Column('snapshot_workflow_id', sa.String(length=36), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('updated_at', sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('name', name='uq_baremetal_nodes_name'),
        sa.UniqueConstraint('instance_uuid', name='uq_baremetal_nodes_instance_uuid'),
    )
    op.create_index('ix_baremetal_nodes_provision_state', 'baremetal_nodes', ['provision_state'])
    op.create_table(
        'baremetal_ports',
        sa.Column('id', sa.String(length=36), nullable=False),
        sa.Column('node_id', sa.String(length=36), nullable=False),
        sa.Column('address', sa.String(length=18), nullable=False),
        sa.Column('extra_json', sa.Text(), nullable=False),
        sa.Column('pxe_enabled', sa.Boolean(), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('updated_at', sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(['node_id'], ['baremetal_nodes.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('address', name='uq_baremetal_ports_address'),
    )
    op.create_index('ix_baremetal_ports_node_id', 'baremetal_ports', ['node_id'])
    op.create_table(
        'baremetal_transfers',
        sa.Column('id', sa.String(length=36), nullable=False),
        sa.Column('node_id', sa.String(length=36), nullable=False),
        sa.Column('username', sa.String(length=64), nullable=False),
        sa.Column('password_sha256', sa.String(length=64), nullable=False),
        sa.Column('path', sa.String(length=255), nullable=False),
        sa.Column('size', sa.BigInteger(), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('removed_at', sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(['node_id'], ['baremetal_nodes.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('username', name='uq_baremetal_transfers_username'),
    )
    op.create_index('ix_baremetal_transfers_node_id', 'baremetal_transfers', ['node_id'])
    with op.batch_alter_table('instances') as batch:
        batch.add_column(sa.Column('node', sa.String(length=36), nullable=True))
        batch.create_index('ix_instances_node', ['node'])


def downgrade() -> None:
    with op.batch_alter_table('instances') as batch:
        batch.drop_index('ix_instances_node')
        batch.drop_column('node')
    op.drop_index('ix_baremetal_transfers_node_id', table_name='baremetal_transfers')
    op.drop_table('baremetal_transfers')
    op.drop_index('ix_baremetal_ports_node_id', table_name='baremetal_ports')
    op.drop_table('baremetal_ports')
    op.drop_index('ix_baremetal_nodes_provision_state', table_name='baremetal_nodes')
    op.drop_table('baremetal_nodes')
