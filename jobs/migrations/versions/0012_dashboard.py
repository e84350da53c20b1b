"""the dashboard: the operator log, and indexes for its filtered lists, counts and chart

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None

_json = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')
_key = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')

_JOB_INDEXES = {
    'ix_jobs_status_created_at_id': ['status', 'created_at', 'id'],
    'ix_jobs_kind_created_at_id': ['kind', 'created_at', 'id'],
    'ix_jobs_status_queue_enqueued_at': ['status', 'queue', 'enqueued_at'],
    'ix_jobs_finished_at_status': ['finished_at', 'status'],
    'ix_jobs_error_type_created_at_id': ['error_type', 'created_at', 'id'],
}

_CREATED_AT_TABLES = ('batches', 'files', 'events')


def upgrade() -> None:
    op.create_table('operator_actions',
    sa.Column('id', _key, autoincrement=True, nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('actor', sa.String(length=200), nullable=False),
    sa.Column('action', sa.String(length=50), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('target', _json, nullable=False),
    sa.Column('selected', sa.Integer(), nullable=False),
    sa.Column('changed', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_operator_actions'))
    )
    op.create_index(op.f('ix_operator_actions_at'), 'operator_actions', ['at'], unique=False)
    for name, columns in _JOB_INDEXES.items():
        op.create_index(name, 'jobs', columns, unique=False)
    errored = sa.text('error_type IS NOT NULL')
    op.create_index('ix_jobs_errored_created_at_id', 'jobs', ['created_at', 'id'], unique=False,
                    postgresql_where=errored, sqlite_where=errored)
    for table in _CREATED_AT_TABLES:
        op.create_index(f'ix_{table}_created_at_id', table, ['created_at', 'id'], unique=False)


def downgrade() -> None:
    for table in _CREATED_AT_TABLES:
        op.drop_index(f'ix_{table}_created_at_id', table_name=table)
    op.drop_index('ix_jobs_errored_created_at_id', table_name='jobs')
    for name in _JOB_INDEXES:
        op.drop_index(name, table_name='jobs')
    op.drop_index(op.f('ix_operator_actions_at'), table_name='operator_actions')
    op.drop_table('operator_actions')
