"""The shop's Alembic history and jobrunner's live in one database without touching each other:
the shop's revision in ``alembic_version``, jobrunner's in ``jobrunner_alembic_version``."""

from __future__ import annotations

from pathlib import Path

from alembic.script import ScriptDirectory
from conftest import new_database, upgrade_both
from sqlalchemy import inspect, text

from jobs import db, migrate
from shopapp import migrate as shop_migrate


def _state(url: str) -> tuple[set[str], dict[str, list[str]]]:
    """The tables of interest, and each version table's revisions."""
    engine = db.make_engine(url, pool_size=1)
    try:
        with engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
            versions = {
                table: sorted(conn.execute(text(f"SELECT version_num FROM {table}")).scalars())
                for table in ("alembic_version", "jobrunner_alembic_version")
                if table in tables
            }
    finally:
        engine.dispose()
    return tables & {"orders", "jobs", "job_attempts"}, versions


def _jobrunner_head(url: str) -> str:
    (head,) = ScriptDirectory.from_config(migrate.alembic_config(url)).get_heads()
    return head


def test_both_histories_upgrade_and_downgrade_on_one_database(tmp_path: Path):
    url, private = new_database(tmp_path)
    try:
        head = _jobrunner_head(url)
        upgrade_both(url)
        both = {"alembic_version": ["shop_0001"], "jobrunner_alembic_version": [head]}
        assert _state(url) == ({"orders", "jobs", "job_attempts"}, both)

        shop_migrate.downgrade(url)  # the shop's tables go; jobrunner's stay, its revision too
        assert _state(url) == ({"jobs", "job_attempts"}, {"alembic_version": [], "jobrunner_alembic_version": [head]})

        shop_migrate.upgrade(url)
        migrate.downgrade(url, "base")  # jobrunner's go; the shop's stay
        assert _state(url) == ({"orders"}, {"alembic_version": ["shop_0001"], "jobrunner_alembic_version": []})

        migrate.upgrade(url)  # and back, twice over: nothing left to do
        upgrade_both(url)
        assert _state(url) == ({"orders", "jobs", "job_attempts"}, both)
    finally:
        if private is not None:
            private.drop()


def test_a_database_migrated_into_alembic_version_before_moves_jobrunners_revision(tmp_path: Path):
    url, private = new_database(tmp_path)
    try:
        head = _jobrunner_head(url)
        migrate.upgrade(url)
        engine = db.make_engine(url, pool_size=1)
        with engine.begin() as conn:  # as jobrunner left it before it had a version table of its own
            conn.execute(text("DROP TABLE jobrunner_alembic_version"))
            conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)"))
            conn.execute(text("INSERT INTO alembic_version VALUES (:head)"), {"head": head})
        engine.dispose()

        migrate.upgrade(url)
        assert _state(url) == ({"jobs", "job_attempts"}, {"jobrunner_alembic_version": [head]})

        shop_migrate.upgrade(url)  # the shop's history now starts in alembic_version
        assert _state(url)[1] == {"alembic_version": ["shop_0001"], "jobrunner_alembic_version": [head]}
    finally:
        if private is not None:
            private.drop()
