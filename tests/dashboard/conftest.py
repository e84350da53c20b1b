"""Fixtures of the dashboard tests: the real app with or without a token, jobs in given states."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from api.app import create_app
from jobs import db, models, operator_log, store
from jobs.config import Settings, get_settings

#: The tokens of the tests that log in.
TOKEN = "operator-token-0123456789"
READONLY_TOKEN = "readonly-token-0123456789"


def csrf_of(html: str) -> str:
    """The CSRF token a page's forms carry."""
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "the page has no form with a CSRF token"
    return match.group(1)


def count_in(html: str) -> int:
    """The count a confirmation page shows (its ``data-count``)."""
    match = re.search(r'data-count="(\d+)"', html)
    assert match, html
    return int(match.group(1))


def operator_actions(database: db.Database) -> list[operator_log.OperatorAction]:
    """The operator log, newest first."""
    with database.readers() as session:
        return operator_log.recent_actions(session)


@pytest.fixture
def guarded_client(settings: Settings, database: db.Database, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """The real app with JOBRUNNER_API_TOKEN and JOBRUNNER_DASHBOARD_READONLY_TOKEN set."""
    monkeypatch.setenv("JOBRUNNER_API_TOKEN", TOKEN)
    monkeypatch.setenv("JOBRUNNER_DASHBOARD_READONLY_TOKEN", READONLY_TOKEN)
    get_settings.cache_clear()
    with TestClient(create_app(get_settings())) as test_client:
        yield test_client
    get_settings.cache_clear()


@pytest.fixture
def make_jobs(database: db.Database) -> Callable[..., list[uuid.UUID]]:
    """Commit ``count`` jobs of ``kind`` and put them in ``status`` (with the given column values);
    their IDs, oldest first (no worker runs in these tests)."""

    def make(count: int = 1, *, kind: str = "noop", status: str = "queued", **values: Any) -> list[uuid.UUID]:
        ids = []
        with db.session_scope(database.sessions) as session:
            for _ in range(count):
                ids.append(store.create_job(session, kind, None).id)
            now = store.utcnow()
            defaults: dict[str, Any] = {"status": status}
            if status in ("failed", "succeeded", "cancelled"):
                defaults["finished_at"] = now
            if status == "failed":
                defaults.update(error_type="tests.kinds.Boom", error_message="boom", attempts=3)
            if status == "retrying":
                defaults.update(next_retry_at=now + dt.timedelta(hours=1), attempts=1)
            session.execute(update(models.Job).where(models.Job.id.in_(ids)).values({**defaults, **values}))
        return ids

    return make
