"""cancel requests, the cancelled attempt outcome, paused queues

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

_OUTCOMES = "'succeeded', 'error', 'failed', 'lost', 'interrupted', 'replayed'"


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('cancel_requested_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('cancel_reason', sa.Text(), nullable=True))
    with op.batch_alter_table('job_attempts') as batch:
        batch.drop_constraint(op.f('ck_job_attempts_outcome'), type_='check')
        batch.create_check_constraint(op.f('ck_job_attempts_outcome'), f"outcome IN ({_OUTCOMES}, 'cancelled')")
    op.create_table('queue_pauses',
    sa.Column('queue', sa.String(length=100), nullable=False),
    sa.Column('paused_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('queue', name=op.f('pk_queue_pauses'))
    )


def downgrade() -> None:
    op.drop_table('queue_pauses')
    op.execute("UPDATE job_attempts SET outcome = 'interrupted' WHERE outcome = 'cancelled'")
    with op.batch_alter_table('job_attempts') as batch:
        batch.drop_constraint(op.f('ck_job_attempts_outcome'), type_='check')
        batch.create_check_constraint(op.f('ck_job_attempts_outcome'), f"outcome IN ({_OUTCOMES})")
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('cancel_reason')
        batch.drop_column('cancel_requested_at')
