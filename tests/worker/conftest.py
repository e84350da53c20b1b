"""Fixtures of the worker tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.worker.processes import WorkerProcess


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start ``jobctl worker`` processes; every one still running is killed after the test."""
    started: list[WorkerProcess] = []

    def start(**options: Any) -> WorkerProcess:
        process = WorkerProcess(tmp_path, **options)
        started.append(process)
        return process

    yield start
    for process in started:
        process.clean_up()
