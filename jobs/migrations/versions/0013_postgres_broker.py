"""jobs.taken_until and the index of waiting jobs: the PostgreSQL broker's queue is the jobs table

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None

WAITING = "status IN ('queued', 'retrying', 'scheduled')"


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch_op:
        batch_op.add_column(sa.Column('taken_until', sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        'ix_jobs_waiting',
        'jobs',
        ['queue', 'enqueued_at'],
        unique=False,
        postgresql_where=sa.text(WAITING),
        sqlite_where=sa.text(WAITING),
    )


def downgrade() -> None:
    op.drop_index('ix_jobs_waiting', table_name='jobs')
    # Not in batch mode: on SQLite that recreates the table, which the attempt-counting trigger of
    # 0011 (on job_attempts, reading jobs) refuses; SQLite (3.35+) drops a column in place.
    op.drop_column('jobs', 'taken_until')
