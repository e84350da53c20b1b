"""records.file_id without a foreign key

A foreign key is checked row by row (one lookup of the file per inserted record): on a 1,000,000-row
import that check alone took 2.4 s of the server's 5.4 s. Records are only ever written by the
``file.process`` job, for the file row it has just read, and files are never deleted, so the key
guarded nothing those writes do not already ensure. Its ON DELETE CASCADE goes with it: a file row
deleted by hand leaves its records, to be deleted too.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25
"""

from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # batch mode: SQLite cannot drop a constraint in place; Alembic copies the table there.
    with op.batch_alter_table('records') as batch:
        batch.drop_constraint(op.f('fk_records_file_id_files'), type_='foreignkey')


def downgrade() -> None:
    with op.batch_alter_table('records') as batch:
        batch.create_foreign_key(
            op.f('fk_records_file_id_files'), 'files', ['file_id'], ['id'], ondelete='CASCADE'
        )
