"""A process whose wall clock is minutes off: a small ``LD_PRELOAD`` library (``skew_clock.c``,
built here with ``cc``) that shifts ``CLOCK_REALTIME`` (``time.time()``, ``datetime.now()``) by
``SKEW_SECONDS`` and leaves the monotonic clock alone.

Why not the usual tools: a time namespace (``unshare --time``) shifts only the monotonic and boot-time
clocks, never the wall clock; libfaketime 0.9.10 (Debian 12) either makes Python's ``time.sleep``
fail with EINVAL (``FAKETIME_DONT_FAKE_MONOTONIC=1``: its ``clock_nanosleep`` on an absolute
monotonic deadline) or hangs ``threading.Event.wait`` (without it), and a worker needs both.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("skew_clock.c")


@functools.cache
def skew_library() -> Path:
    """Build the library once per run (into a temp dir) and return its path.

    Raises:
        RuntimeError: no C compiler (``apt-get install -y gcc``; ``.ci/run`` installs it).
    """
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler to build the clock-skew library: `apt-get install -y gcc`")
    library = Path(tempfile.mkdtemp(prefix="jobrunner-test-skew-")) / "skew_clock.so"
    subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(library), str(SOURCE)], check=True)
    return library


def skewed_clock_env(seconds: int) -> dict[str, str]:
    """Environment variables that shift a child process's wall clock by ``seconds``."""
    return {"LD_PRELOAD": str(skew_library()), "SKEW_SECONDS": str(seconds)}
