"""metadefs

Revision ID: 0009
Revises: 0008

The image service's metadata definitions (Glance's metadefs): namespaces, resource types and
the namespaces' associations with them, objects, properties and tags. New tables; the default
catalog (``freezeframe.images.metadef_catalog``: the resource types, OS::Freezeframe::Workflow,
OS::Freezeframe::Quiesce) is loaded once, here.
"""
from alembic import op
import sqlalchemy as sa

from freezeframe.images import metadef_catalog


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def _stamps() -> list[sa.Column]:
    return [sa.Column('created_at', sa.DateTime(), nullable=False),
            sa.Column('updated_at', sa.DateTime(), nullable=False)]


def upgrade() -> None:
    op.create_table(
        'metadef_namespaces',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('namespace', sa.String(length=80), nullable=False),
        sa.Column('display_name', sa.String(length=80), nullable=True),
        sa.Column('description', sa.Text(), nullable=True),
        sa.Column('visibility', sa.String(length=32), nullable=False),
        sa.Column('protected', sa.Boolean(), nullable=False),
        sa.Column('owner', sa.String(length=255), nullable=True),
        *_stamps(),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('namespace', name='uq_metadef_namespaces_namespace'),
    )
    op.create_table(
        'metadef_resource_types',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('name', sa.String(length=80), nullable=False),
        sa.Column('protected', sa.Boolean(), nullable=False),
        *_stamps(),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('name', name='uq_metadef_resource_types_name'),
    )
    op.create_table(
        'metadef_namespace_resource_types',
        sa.Column('namespace_id', sa.Integer(), nullable=False),
        sa.Column('resource_type_id', sa.Integer(), nullable=False),
        sa.Column('prefix', sa.String(length=80), nullable=True),
        sa.Column('properties_target', sa.String(length=80), nullable=True),
        *_stamps(),
        sa.ForeignKeyConstraint(['namespace_id'], ['metadef_namespaces.id']),
        sa.ForeignKeyConstraint(['resource_type_id'], ['metadef_resource_types.id']),
        sa.PrimaryKeyConstraint('namespace_id', 'resource_type_id'),
    )
    for table, extra in (('metadef_objects', [sa.Column('description', sa.Text(), nullable=True),
                                              sa.Column('required_json', sa.Text(), nullable=False),
                                              sa.Column('properties_json', sa.Text(), nullable=False)]),
                         ('metadef_properties', [sa.Column('schema_json', sa.Text(), nullable=False)]),
                         ('metadef_tags', [])):
        op.create_table(
            table,
            sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
            sa.Column('namespace_id', sa.Integer(), nullable=False),
            sa.Column('name', sa.String(length=80), nullable=False),
            *extra,
            *_stamps(),
            sa.ForeignKeyConstraint(['namespace_id'], ['metadef_namespaces.id']),
            sa.PrimaryKeyConstraint('id'),
            sa.UniqueConstraint('namespace_id', 'name', name=f'uq_{table}_namespace_id_name'),
        )
    metadef_catalog.seed(op.get_bind())


def downgrade() -> None:
    for table in ('metadef_tags', 'metadef_properties', 'metadef_objects', 'metadef_namespace_resource_types',
                  'metadef_resource_types', 'metadef_namespaces'):
        op.drop_table(table)
