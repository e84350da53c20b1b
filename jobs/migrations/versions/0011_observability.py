"""observability: attempt counters kept by a trigger, named counters, worker beats, the job's
trace context, and partial indexes for the scrape

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07

The trigger on ``job_attempts`` adds each attempt row to ``attempt_counters`` in the transaction
that writes the row, whatever code path writes it. Existing attempts are counted once here.

SQLite drops a table's triggers when it recreates the table (Alembic batch mode does, to change a
constraint): a later migration that recreates ``job_attempts`` on SQLite must call
``create_sqlite_trigger()`` again (``jobctl check`` would not notice; the metrics tests would).
"""

import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

#: As jobs.observe.models.DURATION_BUCKETS_SECONDS when this migration was written (frozen here).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
SHARDS = 16
TERMINAL = ('succeeded', 'failed', 'cancelled')
WORKER_LOST = 'jobs.errors.WorkerLost'


def _bucket_sql(seconds: str, outcome: str, started_at: str) -> str:
    """The bucket index of an attempt lasting ``seconds`` (-1: no meaningful duration)."""
    cases = ' '.join(f'WHEN {seconds} <= {bound} THEN {index}' for index, bound in enumerate(BUCKETS))
    return (
        f"CASE WHEN {started_at} IS NULL OR {outcome} IN ('lost', 'replayed') THEN -1 "
        f'{cases} ELSE {len(BUCKETS)} END'
    )


def _lost_sql(outcome: str, error_type: str) -> str:
    return f"CASE WHEN {outcome} = 'lost' OR ({outcome} = 'failed' AND {error_type} = '{WORKER_LOST}') THEN 1 ELSE 0 END"


_PG_SECONDS = 'GREATEST(EXTRACT(EPOCH FROM (a.finished_at - a.started_at)), 0)::float8'
_PG_NEW_SECONDS = 'coalesce(GREATEST(EXTRACT(EPOCH FROM (NEW.finished_at - NEW.started_at)), 0)::float8, 0)'
_SQLITE_SECONDS = 'MAX((julianday(NEW.finished_at) - julianday(NEW.started_at)) * 86400.0, 0)'

# A row trigger: the worker's path inserts one attempt per statement, and a row trigger costs less
# there than a statement trigger with its transition table.
_PG_FUNCTION = f"""
CREATE FUNCTION count_job_attempts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO attempt_counters AS c (shard, kind, outcome, worker_lost, bucket, count, seconds)
    VALUES (pg_backend_pid() % {SHARDS}, (SELECT kind FROM jobs WHERE id = NEW.job_id), NEW.outcome,
            {_lost_sql('NEW.outcome', 'NEW.error_type')},
            {_bucket_sql(_PG_NEW_SECONDS, 'NEW.outcome', 'NEW.started_at')}, 1, {_PG_NEW_SECONDS})
    ON CONFLICT (shard, kind, outcome, worker_lost, bucket)
    DO UPDATE SET count = c.count + 1, seconds = c.seconds + EXCLUDED.seconds;
    RETURN NULL;
END $$
"""
_PG_TRIGGER = """
CREATE TRIGGER count_job_attempts AFTER INSERT ON job_attempts
FOR EACH ROW EXECUTE FUNCTION count_job_attempts()
"""


def create_sqlite_trigger() -> None:
    """The SQLite trigger: one upsert per attempt row (one shard: SQLite has one writer at a time)."""
    kind = '(SELECT kind FROM jobs WHERE id = NEW.job_id)'
    bucket = _bucket_sql(_SQLITE_SECONDS, 'NEW.outcome', 'NEW.started_at')
    seconds = f'CASE WHEN NEW.started_at IS NULL THEN 0 ELSE {_SQLITE_SECONDS} END'
    op.execute(f"""
CREATE TRIGGER count_job_attempts AFTER INSERT ON job_attempts FOR EACH ROW BEGIN
    INSERT INTO attempt_counters (shard, kind, outcome, worker_lost, bucket, count, seconds)
    VALUES (0, {kind}, NEW.outcome, {_lost_sql('NEW.outcome', 'NEW.error_type')}, {bucket}, 1, {seconds})
    ON CONFLICT (shard, kind, outcome, worker_lost, bucket)
    DO UPDATE SET count = count + 1, seconds = seconds + excluded.seconds;
END
""")


def _count_existing_attempts(postgres: bool) -> None:
    seconds = (
        _PG_SECONDS
        if postgres
        else 'MAX((julianday(a.finished_at) - julianday(a.started_at)) * 86400.0, 0)'
    )
    op.execute(f"""
INSERT INTO attempt_counters (shard, kind, outcome, worker_lost, bucket, count, seconds)
SELECT 0, j.kind, a.outcome, {_lost_sql('a.outcome', 'a.error_type')},
       {_bucket_sql(seconds, 'a.outcome', 'a.started_at')},
       count(*), coalesce(sum(CASE WHEN a.started_at IS NULL THEN 0 ELSE {seconds} END), 0)
FROM job_attempts a JOIN jobs j ON j.id = a.job_id
GROUP BY 1, 2, 3, 4, 5
""")


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == 'postgresql'
    op.create_table('attempt_counters',
    sa.Column('shard', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=100), nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('worker_lost', sa.Integer(), nullable=False),
    sa.Column('bucket', sa.Integer(), nullable=False),
    sa.Column('count', sa.BigInteger(), nullable=False),
    sa.Column('seconds', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('shard', 'kind', 'outcome', 'worker_lost', 'bucket', name=op.f('pk_attempt_counters'))
    )
    op.create_table('named_counters',
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('value', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_named_counters'))
    )
    op.create_table('worker_beats',
    sa.Column('worker_id', sa.String(length=200), nullable=False),
    sa.Column('beat_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('worker_id', name=op.f('pk_worker_beats'))
    )
    op.create_index(op.f('ix_worker_beats_beat_at'), 'worker_beats', ['beat_at'], unique=False)
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('trace_parent', sa.String(length=55), nullable=True))
    # The scrape reads only the jobs not finished: partial indexes hold just those rows. The
    # predicate names the terminal states, so a new non-terminal state is indexed by itself.
    terminal = ', '.join(f"'{status}'" for status in TERMINAL)
    where = sa.text(f'status NOT IN ({terminal})')
    # Its columns answer every gauge from the index alone (an index-only scan).
    op.create_index('ix_jobs_unfinished', 'jobs',
                    ['status', 'queue', 'kind', 'replay_count', 'created_at', 'enqueued_at', 'lease_expires_at'],
                    postgresql_where=where, sqlite_where=where)
    batch_where = sa.text("status IN ('planning', 'running')")
    op.create_index('ix_batches_open', 'batches', ['status'], postgresql_where=batch_where, sqlite_where=batch_where)
    file_where = sa.text("status IN ('pending', 'processing')")
    op.create_index('ix_files_open', 'files', ['status'], postgresql_where=file_where, sqlite_where=file_where)
    _count_existing_attempts(postgres)
    if postgres:
        op.execute(_PG_FUNCTION)
        op.execute(_PG_TRIGGER)
    else:
        create_sqlite_trigger()


def downgrade() -> None:
    op.execute('DROP TRIGGER IF EXISTS count_job_attempts' + (' ON job_attempts' if op.get_bind().dialect.name == 'postgresql' else ''))
    if op.get_bind().dialect.name == 'postgresql':
        op.execute('DROP FUNCTION IF EXISTS count_job_attempts()')
    op.drop_index('ix_files_open', table_name='files')
    op.drop_index('ix_batches_open', table_name='batches')
    op.drop_index('ix_jobs_unfinished', table_name='jobs')
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('trace_parent')
    op.drop_index(op.f('ix_worker_beats_beat_at'), table_name='worker_beats')
    op.drop_table('worker_beats')
    op.drop_table('named_counters')
    op.drop_table('attempt_counters')
