"""The ASGI entry point (``api.main:app``), as uvicorn loads it: in a process of its own."""

from __future__ import annotations

import subprocess
import sys


def test_the_entry_point_builds_the_app_and_freezes_what_it_made(settings):
    # Objects alive once the app is built live as long as the process: frozen (gc.freeze), a full
    # garbage collection does not walk them, which paused a request by about 100 ms.
    probe = "import gc, api.main; print(type(api.main.app).__name__, gc.get_freeze_count())"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    name, frozen = out.stdout.split()
    assert name == "FastAPI"
    assert int(frozen) > 10_000, "the app's objects were not frozen"
