"""scheduling: delayed jobs (scheduled, run_at), unique jobs (unique_key, idempotency_keys.duplicate), cron schedules and their fires

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

_UNFINISHED_UNIQUE = "unique_key IS NOT NULL AND status NOT IN ('succeeded', 'failed', 'cancelled')"


def _status_check(statuses: list[str]) -> str:
    return f"status IN ({', '.join(repr(status) for status in statuses)})"


_OLD_STATUSES = ['queued', 'running', 'retrying', 'succeeded', 'failed', 'cancelled']


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('run_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('unique_key', sa.String(length=200), nullable=True))
        batch.drop_constraint(op.f('ck_jobs_status'), type_='check')
        batch.create_check_constraint(op.f('ck_jobs_status'), _status_check([*_OLD_STATUSES, 'scheduled']))
    op.create_index(
        'uq_jobs_kind_unique_key', 'jobs', ['kind', 'unique_key'], unique=True,
        postgresql_where=sa.text(_UNFINISHED_UNIQUE), sqlite_where=sa.text(_UNFINISHED_UNIQUE),
    )
    with op.batch_alter_table('idempotency_keys') as batch:
        batch.add_column(sa.Column('duplicate', sa.Boolean(), server_default=sa.false(), nullable=False))
    op.create_table('schedules',
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=100), nullable=False),
    sa.Column('args', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('cron', sa.String(length=200), nullable=True),
    sa.Column('every_seconds', sa.Float(), nullable=True),
    sa.Column('timezone', sa.String(length=64), nullable=False),
    sa.Column('declared', sa.Boolean(), nullable=False),
    sa.Column('paused', sa.Boolean(), nullable=False),
    sa.Column('next_fire_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_fire_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('(cron IS NULL) <> (every_seconds IS NULL)', name=op.f('ck_schedules_one_timing')),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_schedules'))
    )
    op.create_table('schedule_fires',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('schedule_name', sa.String(length=200), nullable=False),
    sa.Column('fire_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('manual', sa.Boolean(), nullable=False),
    sa.Column('job_id', sa.Uuid(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['schedule_name'], ['schedules.name'], name=op.f('fk_schedule_fires_schedule_name_schedules'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_schedule_fires')),
    sa.UniqueConstraint('schedule_name', 'fire_at', name='uq_schedule_fires_schedule_name_fire_at')
    )
    op.create_index(op.f('ix_schedule_fires_created_at'), 'schedule_fires', ['created_at'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_schedule_fires_created_at'), table_name='schedule_fires')
    op.drop_table('schedule_fires')
    op.drop_table('schedules')
    with op.batch_alter_table('idempotency_keys') as batch:
        batch.drop_column('duplicate')
    op.drop_index('uq_jobs_kind_unique_key', table_name='jobs')
    op.execute("UPDATE jobs SET status = 'queued' WHERE status = 'scheduled'")  # run at once, not lost
    with op.batch_alter_table('jobs') as batch:
        batch.drop_constraint(op.f('ck_jobs_status'), type_='check')
        batch.create_check_constraint(op.f('ck_jobs_status'), _status_check(_OLD_STATUSES))
        batch.drop_column('unique_key')
        batch.drop_column('run_at')
