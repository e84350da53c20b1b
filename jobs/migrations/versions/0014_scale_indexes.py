"""partial indexes that keep the sweeper, replay selections and pruning flat at millions of jobs

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07

Measured with ``tests/benchmarks/scale.py`` (10,000 against 10,000,000 jobs). The indexes on
``jobs`` are partial, over states a job is in only briefly or rarely, so the claim and the success
(which leave those states or never enter them) add few or no index entries:

- ``ix_jobs_running_lease``: running jobs by lease expiry, the sweeper's walk to expired leases
  (it read every running job's entry of ``ix_jobs_unfinished``);
- ``ix_jobs_claimable_enqueued_at``: queued and retrying jobs by last send, the sweeper's walk to
  overdue ones (it read every waiting job's entry of ``ix_jobs_waiting``, which leads with the queue);
- ``ix_jobs_failed_kind_finished_at``: failed jobs of a kind, oldest failure first, what a replay
  selects (``jobctl replay --kind K [--limit N]``) without reading and sorting every failed job of K;
- ``ix_batch_chunks_job_id``, ``ix_batches_job_id``: the ``ON DELETE SET NULL`` of a pruned job
  looked for its chunk with a scan of all of ``batch_chunks`` (and ``batches``), per deleted job.

Plain CREATE / DROP INDEX on both databases (no batch mode: a SQLite table recreate of ``jobs``
trips migration 0011's trigger).
"""

import sqlalchemy as sa
from alembic import op

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None

_PARTIAL_JOB_INDEXES = {
    'ix_jobs_running_lease': (['lease_expires_at'], "status = 'running'"),
    'ix_jobs_claimable_enqueued_at': (['enqueued_at'], "status IN ('queued', 'retrying')"),
    'ix_jobs_failed_kind_finished_at': (['kind', 'finished_at', 'id'], "status = 'failed'"),
}
_JOB_ID_TABLES = ('batch_chunks', 'batches')


def upgrade() -> None:
    for name, (columns, where) in _PARTIAL_JOB_INDEXES.items():
        op.create_index(name, 'jobs', columns, unique=False,
                        postgresql_where=sa.text(where), sqlite_where=sa.text(where))
    for table in _JOB_ID_TABLES:
        op.create_index(op.f(f'ix_{table}_job_id'), table, ['job_id'], unique=False)


def downgrade() -> None:
    for table in _JOB_ID_TABLES:
        op.drop_index(op.f(f'ix_{table}_job_id'), table_name=table)
    for name in _PARTIAL_JOB_INDEXES:
        op.drop_index(name, table_name='jobs')
