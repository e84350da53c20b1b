"""The shop's test fixtures: its own database (both Alembic histories upgraded), jobrunner's
in-process runner (``worker.testing``) and the real app.

The database is the run's own, as jobrunner's tests make it: a private database on the PostgreSQL
server (dropped at the end), or a SQLite file with JOBRUNNER_TEST_DATABASE=sqlite.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, delete

import jobs
from jobs import db, migrate, models
from shopapp import migrate as shop_migrate
from shopapp import models as shop_models
from shopapp.app import KIND_MODULES, create_app
from tests import servers
from worker.testing import InProcessJobs

BACKEND = os.environ.get("JOBRUNNER_TEST_DATABASE", "postgresql")
PG_ADMIN_URL = os.environ.get("JOBRUNNER_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def new_database(tmp_path: Path) -> tuple[str, servers.PrivateDatabase | None]:
    """An empty database of the test's own: (URL, the PostgreSQL one to drop, or None for SQLite)."""
    if BACKEND == "sqlite":
        return f"sqlite:///{tmp_path / 'shop.db'}", None
    private = servers.PrivateDatabase(PG_ADMIN_URL, prefix="shop_test")
    return private.url, private


def upgrade_both(url: str) -> None:
    """jobrunner's history (``jobctl db upgrade``) and the shop's (``alembic upgrade head``)."""
    migrate.upgrade(url)
    shop_migrate.upgrade(url)


@pytest.fixture(scope="session")
def shop_database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url, private = new_database(tmp_path_factory.mktemp("shop"))
    try:
        upgrade_both(url)
        yield url
    finally:
        if private is not None:
            private.drop()


@pytest.fixture
def shop_settings(shop_database_url: str, monkeypatch: pytest.MonkeyPatch) -> jobs.Settings:
    """jobrunner's settings for the shop's tests (also in the environment, for the app)."""
    monkeypatch.setenv("JOBRUNNER_DATABASE_URL", shop_database_url)
    monkeypatch.setenv("JOBRUNNER_RETRY_BACKOFF_SECONDS", "0.01")
    monkeypatch.setenv("JOBRUNNER_JOB_MODULES", ",".join(KIND_MODULES))
    _empty(shop_database_url)
    return jobs.Settings()


def _empty(url: str) -> None:
    engine = db.make_engine(url, pool_size=1)
    with engine.begin() as conn:
        conn.execute(delete(shop_models.Order.__table__))
        for table in reversed(models.Base.metadata.sorted_tables):
            conn.execute(delete(table))
    engine.dispose()


@pytest.fixture
def jobrunner(shop_settings: jobs.Settings) -> Iterator[InProcessJobs]:
    """jobrunner's in-process runner over the shop's database and kinds."""
    with InProcessJobs(shop_settings, jobs.load_registry(shop_settings)) as runner:
        yield runner


@pytest.fixture
def shop(shop_database_url: str, jobrunner: InProcessJobs) -> Iterator[TestClient]:
    """The shop's real app; its job IDs go to the in-process runner."""
    with TestClient(create_app(database_url=shop_database_url, sender=jobrunner.sender)) as client:
        yield client


@pytest.fixture
def shop_engine(shop_database_url: str) -> Iterator[object]:
    engine = create_engine(db.normalize_url(shop_database_url))
    yield engine
    engine.dispose()
