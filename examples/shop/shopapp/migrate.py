"""The shop's migrations, from code (its tests) or ``python -m shopapp.migrate upgrade|downgrade``."""

from __future__ import annotations

import sys
from pathlib import Path

from alembic import command
from alembic.config import Config

from shopapp import config as shop_config


def alembic_config(url: str | None = None) -> Config:
    """The shop's Alembic config (no ini file needed)."""
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    config.set_main_option("sqlalchemy.url", (url or shop_config.database_url()).replace("%", "%%"))
    return config


def upgrade(url: str | None = None, revision: str = "head") -> None:
    """The shop's tables up to ``revision``."""
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str | None = None, revision: str = "base") -> None:
    """The shop's tables down to ``revision`` (jobrunner's stay)."""
    command.downgrade(alembic_config(url), revision)


if __name__ == "__main__":
    {"upgrade": upgrade, "downgrade": downgrade}[sys.argv[1]]()
