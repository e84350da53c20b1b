"""The README's blocks of HTTP requests and operator commands, run as shown: each ``curl`` line is
replayed through the real app (a URL or method the app does not serve fails), and the dashboard,
tracing and alert-rule blocks run in a shell. test_readme_blocks.py's ``RUN_BY`` names each test
with the block it runs."""

from __future__ import annotations

import http.server
import importlib.metadata
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.app import create_app
from tests.acceptance import test_cli
from tests.acceptance.conftest import REPO_ROOT, cli_env
from tests.acceptance.test_readme_blocks import _lines, _wait, shell_blocks
from worker import devmode


def _block(section: str, first_line: str) -> str:
    """The block of ``## section`` whose first command starts with ``first_line``."""
    (block,) = [b for b in shell_blocks(section) if _lines(b)[0].startswith(first_line)]
    return block


def _curl_requests(block: str, variables: dict[str, str]) -> list[dict[str, Any]]:
    """The block's ``curl`` lines as requests (``method``, ``url``, ``headers``, ``content``), each
    ``$NAME`` replaced from ``variables``. An option this reading does not know fails the test."""
    requests = []
    for line in _lines(block.replace("\\\n", " ")):
        if not line.startswith("curl "):
            continue
        line = re.sub(r"\$(\w+)", lambda name: variables[name.group(1)], line)
        tokens = iter(shlex.split(line)[1:])
        method, url, headers, content = None, None, {}, None
        for token in tokens:
            if token == "-X":
                method = next(tokens)
            elif token == "-H":
                name, value = next(tokens).split(":", 1)
                headers[name.strip()] = value.strip()
            elif token == "-d":
                content = next(tokens)
            elif token in ("-s", "-sf"):
                pass
            else:
                assert not token.startswith("-") and url is None, f"{token!r} of {line!r} is not read here"
                url = token if "://" in token else f"http://{token}"
        assert url is not None, line
        parts = urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        requests.append(
            {"method": method or ("POST" if content else "GET"), "url": path, "headers": headers, "content": content}
        )
    return requests


def test_the_cancel_block_cancels_the_sleep_job_it_started(client: TestClient):
    block = _block("Cancel, pause, limits", "curl -X POST localhost:8000/jobs ")
    start, cancel = _curl_requests(block, {"JOB_ID": "{job_id}"})
    started = client.request(**start)
    assert started.status_code == 202, started.text
    job_id = started.json()["job_id"]
    cancel["url"] = cancel["url"].replace("{job_id}", job_id)
    cancelled = client.request(**cancel)
    assert cancelled.status_code == 202, cancelled.text
    assert cancelled.json() == {"job_id": job_id, "status": "cancelled", "stopping": False}  # no worker: still queued
    shown = client.get(f"/jobs/{job_id}").json()
    assert (shown["kind"], shown["status"], shown["cancel_reason"]) == ("sleep", "cancelled", "not needed")


def test_the_queues_block_lists_pauses_and_resumes_the_default_queue(client: TestClient):
    listed, paused, resumed = (
        client.request(**request) for request in _curl_requests(_block("Cancel, pause, limits", "curl localhost"), {})
    )
    assert [listed.status_code, paused.status_code, resumed.status_code] == [200, 200, 200], (paused.text, resumed.text)
    assert "default" in {queue["name"] for queue in listed.json()}
    assert (paused.json()["paused"], paused.json()["changed"]) == (True, True)
    assert (resumed.json()["paused"], resumed.json()["changed"]) == (False, True)
    assert not {queue["name"]: queue for queue in client.get("/queues").json()}["default"]["paused"]


def test_the_metrics_block_scrapes_with_the_metrics_token(settings, database):
    token = "scrape-" + uuid.uuid4().hex
    (scrape,) = _curl_requests(_block("Monitoring", "curl -s -H"), {"JOBRUNNER_METRICS_TOKEN": token})
    with TestClient(create_app(settings.model_copy(update={"metrics_token": SecretStr(token)}))) as client:
        answer = client.request(**scrape)
        assert answer.status_code == 200, answer.text
        assert "jobrunner_" in answer.text
        assert client.get("/metrics").status_code == 401


def test_the_alert_rules_block_runs_promtool_as_shown():
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed (Debian's prometheus package ships it; .ci/run installs it)")
    block = _block("Monitoring", "cd deploy/prometheus")
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 4 rules found" in result.stdout and "SUCCESS" in result.stdout.rsplit("rules found", 1)[1]


def _start(block: str, port: int, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """``block`` in bash, its ``--port 8000`` made ``port``, with this interpreter's scripts first on PATH."""
    block = block.replace("--port 8000", f"--port {port}")
    env = {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"}
    with log_path.open("wb") as log:
        return subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", block],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _answers(process: subprocess.Popen[bytes], url: str, log_path: Path) -> bool:
    """Whether ``url`` answers 200; fails at once if the block ended (a command it names is wrong)."""
    assert process.poll() is None, f"the block ended ({process.returncode}): {log_path.read_text()}"
    return httpx.get(url).status_code == 200


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts (each in a session of its own), stopped at its end."""
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            test_cli.stop_session(process)


def test_the_dashboard_block_serves_the_dashboard_behind_the_api_token(settings, database, tmp_path, started):
    (block,) = shell_blocks("Dashboard")
    port = devmode.free_port()
    log_path = tmp_path / "api.log"
    started.append(_start(block, port, cli_env(), log_path))
    api = f"http://127.0.0.1:{port}"
    _wait(lambda: _answers(started[0], f"{api}/healthz", log_path), f"jobctl api to answer ({log_path})")
    page = httpx.get(f"{api}/dashboard/jobs")
    assert page.status_code == 303 and page.headers["location"].startswith("/dashboard/login")
    assert httpx.get(f"{api}/dashboard/login").status_code == 200
    assert httpx.get(f"{api}/jobs").status_code == 401
    assert httpx.get(f"{api}/jobs", headers={"Authorization": "Bearer s3cret"}).status_code == 200


class _Collector(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint that keeps what it is sent."""

    received: list[tuple[str, bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_the_tracing_block_exports_the_api_spans_to_the_collector(settings, database, tmp_path, started):
    block = _block("Monitoring", "pip install 'jobrunner[otel]'")
    (install, *rest) = [line for line in block.splitlines() if line.strip()]
    # The extra it installs is the one installed here (the test extra includes it).
    assert shlex.split(install) == ["pip", "install", "jobrunner[otel]"]
    extras = importlib.metadata.metadata("jobrunner").get_all("Provides-Extra") or []
    assert "otel" in extras
    collector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    _Collector.received = []
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    try:
        endpoint = f"http://127.0.0.1:{collector.server_address[1]}"
        shown = "\n".join(rest).replace("http://collector:4318", endpoint)
        port = devmode.free_port()
        env = {**cli_env(), "OTEL_BSP_SCHEDULE_DELAY": "100"}
        log_path = tmp_path / "api.log"
        started.append(_start(shown, port, env, log_path))
        api = f"http://127.0.0.1:{port}"
        _wait(lambda: _answers(started[0], f"{api}/jobs", log_path), f"jobctl api to answer ({log_path})")
        _wait(lambda: any(path == "/v1/traces" for path, _ in _Collector.received), "spans at the collector")
        assert any(b"billing" in body for path, body in _Collector.received if path == "/v1/traces")
    finally:
        collector.shutdown()
        collector.server_close()
