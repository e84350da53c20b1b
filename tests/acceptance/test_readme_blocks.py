"""Every shell block of the README is run by a test: the blocks that only show ``jobctl``, ``make``
and ``honcho`` lines are parsed line by line (test_readme.py); every other block is named in
:data:`RUN_BY` with the test that runs it for real, and a block added without one fails
:func:`test_every_shell_block_of_the_readme_is_run_by_a_test`."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests import servers
from tests.acceptance import test_cli
from tests.acceptance.conftest import REPO_ROOT, embedded_defaults_env, jobctl_command
from tests.conftest import BACKEND, PG_ADMIN_URL
from worker import devmode

README = (REPO_ROOT / "README.md").read_text()
#: Lines of a block that the parsing tests of test_readme.py check one by one.
PARSED_PREFIXES = ("jobctl ", "make ", "honcho ")
#: The other blocks, by their first line (its comment left out), and the test that runs each.
RUN_BY = {
    "make install && . .venv/bin/activate": "test_the_quickstart_runs_against_jobctl_dev",
    "API=http://127.0.0.1:8000": "test_the_quickstart_runs_against_jobctl_dev",
    'export JOBRUNNER_DATABASE_URL="sqlite:///$PWD/var/jobrunner.db" '
    'JOBRUNNER_BROKER_URL="unix://$PWD/var/redis.sock?db=0"': "test_the_quickstart_runs_against_jobctl_dev",
    "export PYTHONPATH=examples/shop": "test_the_use_it_in_your_service_block_runs_the_shop",
    # test_readme_requests.py: the curl lines through the real app, the other blocks in a shell.
    "curl -X POST localhost:8000/jobs -H 'content-type: application/json' "
    """-d '{"kind": "sleep", "args": {"seconds": 600}}'""": "test_the_cancel_block_cancels_the_sleep_job_it_started",
    "curl localhost:8000/queues": "test_the_queues_block_lists_pauses_and_resumes_the_default_queue",
    "JOBRUNNER_API_TOKEN=s3cret jobctl api --port 8000": (
        "test_the_dashboard_block_serves_the_dashboard_behind_the_api_token"
    ),
    'curl -s -H "Authorization: Bearer $JOBRUNNER_METRICS_TOKEN" http://127.0.0.1:8000/metrics': (
        "test_the_metrics_block_scrapes_with_the_metrics_token"
    ),
    "cd deploy/prometheus && promtool check rules alerts.yml && promtool test rules alerts_test.yml": (
        "test_the_alert_rules_block_runs_promtool_as_shown"
    ),
    "pip install 'jobrunner[otel]'": "test_the_tracing_block_exports_the_api_spans_to_the_collector",
    # Real `jobctl worker` processes on an amqp:// JOBRUNNER_BROKER_URL (every other worker test: redis://).
    "export JOBRUNNER_BROKER_URL=redis://127.0.0.1:6379/0": (
        "test_workers_reconnect_when_every_connection_of_the_vhost_is_closed"
    ),
    # Real `jobctl worker` processes whose JOBRUNNER_BROKER_URL is the jobs database (PostgreSQL only).
    "export JOBRUNNER_DATABASE_URL=postgresql://app:secret@db.internal:5432/jobs": (
        "test_worker_on_the_postgresql_broker_survives_a_postgresql_restart"
    ),
}
#: Longest a block may run.
BLOCK_TIMEOUT_SECONDS = 120


def _lines(block: str) -> list[str]:
    lines = [line.split("  #")[0].rstrip() for line in block.splitlines()]
    return [line for line in lines if line.strip() and not line.lstrip().startswith("#")]


def shell_blocks(section: str | None = None) -> list[str]:
    """The README's ``sh``/``bash`` blocks (only those under the ``## section`` heading, if named)."""
    text = README
    if section is not None:
        text = README.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(?:sh|bash)\n(.*?)```", text, flags=re.S)


def test_every_shell_block_of_the_readme_is_run_by_a_test():
    tests_source = "\n".join(path.read_text() for path in (REPO_ROOT / "tests").rglob("test_*.py"))
    unchecked = []
    for block in shell_blocks():
        lines = _lines(block)
        if all(line.startswith(PARSED_PREFIXES) for line in lines):
            continue
        test = RUN_BY.get(lines[0])
        if test is None or f"def {test}(" not in tests_source:
            unchecked.append(lines[0])
    assert unchecked == [], f"README shell blocks no test runs (name each in RUN_BY with its test): {unchecked}"
    assert len(shell_blocks()) >= 6  # the check sees the blocks


def test_the_readme_shows_the_procfile_as_it_is():
    shown = README.split("The `Procfile`", 1)[1].split("```\n", 1)[1].split("```", 1)[0]
    assert shown == (REPO_ROOT / "Procfile").read_text()


def _env(**extra: str) -> dict[str, str]:
    """The embedded defaults' environment with this interpreter's scripts (jobctl, alembic) first on PATH."""
    env = embedded_defaults_env()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **extra}


def _run_block(block: str, *, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=BLOCK_TIMEOUT_SECONDS,
        start_new_session=True,
    )


def _wait(predicate: Callable[[], object], what: str, *, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def dev_stack(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``jobctl dev`` as the quickstart's first block starts it, in ``tmp_path``, on a free port."""
    (dev_line,) = [line for line in _lines(shell_blocks("Five-minute quickstart")[0]) if line.startswith("jobctl dev")]
    port = devmode.free_port()
    log_path = tmp_path / "dev.log"
    with log_path.open("wb") as log:
        dev = subprocess.Popen(
            [*jobctl_command(*shlex.split(dev_line)[1:]), "--port", str(port)],
            cwd=tmp_path,
            env=_env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    api = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: httpx.get(f"{api}/healthz").status_code == 200, "jobctl dev to answer")
        _wait(lambda: "export JOBRUNNER_DATABASE_URL" in log_path.read_text(), "jobctl dev to print its settings")
        yield api, log_path
    finally:
        dev.send_signal(signal.SIGTERM)
        try:
            dev.wait(timeout=90)
        except subprocess.TimeoutExpired:
            dev.kill()
            dev.wait()


@pytest.mark.skipif(BACKEND != "sqlite", reason="the quickstart runs on the embedded defaults: the SQLite pass runs it")
def test_the_quickstart_runs_against_jobctl_dev(dev_stack: tuple[str, Path], tmp_path: Path):
    api, log_path = dev_stack
    _, requests, cli = shell_blocks("Five-minute quickstart")
    port = api.rsplit(":", 1)[1]

    posted = _run_block(requests.replace("127.0.0.1:8000", f"127.0.0.1:{port}"), cwd=tmp_path, env=_env())
    assert posted.returncode == 0, posted.stderr
    assert posted.stdout.count('"job_id"') >= 3 and '"file_id"' in posted.stdout  # noop, fail, the CSV
    assert '"status":"queued"' in posted.stdout.replace(" ", "").splitlines()[-1]  # the replay's answer

    def settled() -> bool:
        jobs = httpx.get(f"{api}/jobs", params={"limit": 100}).json()["items"]
        return all(job["status"] in ("succeeded", "failed") for job in jobs) and any(
            job["status"] == "failed" for job in jobs
        )

    _wait(settled, "the replayed job to fail again")

    # The URLs the block exports are those jobctl dev printed.
    printed = re.search(r"export (JOBRUNNER_DATABASE_URL=.*)$", log_path.read_text(), flags=re.M)
    assert printed is not None
    exported = _lines(cli)[0].removeprefix("export ")
    shown = _run_block(
        f"export {exported}; echo $JOBRUNNER_DATABASE_URL $JOBRUNNER_BROKER_URL", cwd=tmp_path, env=_env()
    )
    printed_values = _run_block(
        f"{printed.group(1)} bash -c 'echo $JOBRUNNER_DATABASE_URL $JOBRUNNER_BROKER_URL'", cwd=tmp_path, env=_env()
    )
    assert shown.stdout.split() == printed_values.stdout.split() and len(shown.stdout.split()) == 2

    replayed = _run_block(cli, cwd=tmp_path, env=_env())
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "fail" in replayed.stdout

    def replayed_twice_and_failed_again() -> bool:
        (job,) = httpx.get(f"{api}/jobs", params={"kind": "fail"}).json()["items"]
        return job["replay_count"] == 2 and job["status"] == "failed"  # by the API, then by jobctl

    _wait(replayed_twice_and_failed_again, "the job jobctl replayed to run again")


@pytest.fixture
def redis_url() -> Iterator[str]:
    server = servers.PrivateRedis()
    try:
        yield server.url
    finally:
        server.close()


@pytest.fixture
def shop_database(tmp_path: Path) -> Iterator[str]:
    """An empty database for the shop: the run's backend (a private PostgreSQL database, dropped
    afterwards, or a SQLite file)."""
    if BACKEND == "sqlite":
        yield f"sqlite:///{tmp_path / 'shop.db'}"
        return
    private = servers.PrivateDatabase(PG_ADMIN_URL, prefix="shop_readme")
    try:
        yield private.url
    finally:
        private.drop()


def test_the_use_it_in_your_service_block_runs_the_shop(tmp_path: Path, redis_url: str, shop_database: str):
    """The shop as deployed: its migrations beside jobrunner's, one real ``jobctl worker`` running
    its sync and async kinds, its API enqueueing from a sync and an async route."""
    (block,) = [b for b in shell_blocks("Use it in your service") if "alembic" in b]
    port = devmode.free_port()
    block = block.replace("sqlite:///var/shop.db", shop_database).replace("8001", str(port))
    env = _env(JOBRUNNER_BROKER_URL=redis_url, JOBRUNNER_SHUTDOWN_TIMEOUT_SECONDS="5")
    log_path = tmp_path / "block.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", f"{block}\nwait"],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        api = f"http://127.0.0.1:{port}"

        def both_ran() -> bool:
            receipt = httpx.get(f"{api}/orders/1").json().get("receipt_sent")
            return process.poll() is None and receipt and httpx.get(f"{api}/orders/2").json().get("invoice")

        _wait(both_ran, f"the worker to run both kinds; the block's output: {log_path}")
        assert httpx.get(f"{api}/orders/2").json()["invoice"] == "INVOICE order 2: 6 x cups"
    finally:
        tree = test_cli.descendants(process.pid)
        test_cli.stop_session(process)
        # The worker's children run in sessions of their own (the supervisor's setsid) and shut down
        # after the shell has gone: wait for them, so none consumes the run's Redis in the next tests.
        for pid in test_cli.wait_until_gone(tree, timeout=60):
            if test_cli.is_running(pid, tree[pid]):
                os.kill(pid, signal.SIGKILL)
