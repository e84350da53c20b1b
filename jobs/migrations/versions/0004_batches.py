"""batches, their chunks, and the errors of a record

Revision ID: 0004
Revises: 0002
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0004'
down_revision = '0002'
branch_labels = None
depends_on = None

_json = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')
_key = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    # batch mode: SQLite cannot ALTER TABLE ... ADD COLUMN with every option; Alembic copies the table there.
    with op.batch_alter_table('records') as batch:
        batch.add_column(sa.Column('errors', _json, nullable=True))
    op.create_table('batches',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('operation', sa.String(length=100), nullable=False),
    sa.Column('file_id', sa.Uuid(), nullable=True),
    sa.Column('record_ids', _json, nullable=True),
    sa.Column('chunk_size', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=24), nullable=False),
    sa.Column('job_id', sa.Uuid(), nullable=True),
    sa.Column('total', sa.BigInteger(), nullable=False),
    sa.Column('processed', sa.BigInteger(), nullable=False),
    sa.Column('failed', sa.BigInteger(), nullable=False),
    sa.Column('chunks_total', sa.Integer(), nullable=False),
    sa.Column('chunks_done', sa.Integer(), nullable=False),
    sa.Column('run', sa.Integer(), nullable=False),
    sa.Column('completions', sa.Integer(), nullable=False),
    sa.Column('completed_run', sa.Integer(), nullable=True),
    sa.Column('error_message', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('cancelled_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("status IN ('planning', 'running', 'completed', 'completed_with_errors', 'cancelled', 'failed')", name=op.f('ck_batches_status')),
    sa.ForeignKeyConstraint(['file_id'], ['files.id'], name=op.f('fk_batches_file_id_files'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_batches_job_id_jobs'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_batches'))
    )
    op.create_index(op.f('ix_batches_file_id'), 'batches', ['file_id'], unique=False)
    op.create_table('batch_chunks',
    sa.Column('id', _key, autoincrement=True, nullable=False),
    sa.Column('batch_id', sa.Uuid(), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.Uuid(), nullable=True),
    sa.Column('first_id', sa.BigInteger(), nullable=True),
    sa.Column('last_id', sa.BigInteger(), nullable=True),
    sa.Column('record_ids', _json, nullable=True),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('processed', sa.Integer(), nullable=False),
    sa.Column('failed', sa.Integer(), nullable=False),
    sa.CheckConstraint("status IN ('pending', 'succeeded', 'failed', 'cancelled')", name=op.f('ck_batch_chunks_status')),
    sa.ForeignKeyConstraint(['batch_id'], ['batches.id'], name=op.f('fk_batch_chunks_batch_id_batches'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_batch_chunks_job_id_jobs'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_batch_chunks'))
    )
    op.create_index('ix_batch_chunks_batch_id_number', 'batch_chunks', ['batch_id', 'number'], unique=True)


def downgrade() -> None:
    op.drop_index('ix_batch_chunks_batch_id_number', table_name='batch_chunks')
    op.drop_table('batch_chunks')
    op.drop_index(op.f('ix_batches_file_id'), table_name='batches')
    op.drop_table('batches')
    with op.batch_alter_table('records') as batch:
        batch.drop_column('errors')
