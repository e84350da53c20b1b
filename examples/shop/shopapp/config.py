"""The shop's settings: its database is jobrunner's too (one database, two Alembic histories)."""

from __future__ import annotations

import os

import jobs


def database_url() -> str:
    """``SHOP_DATABASE_URL``, else the database jobrunner uses (``JOBRUNNER_DATABASE_URL``)."""
    return os.environ.get("SHOP_DATABASE_URL") or jobs.Settings().database_url
