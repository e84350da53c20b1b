"""The dashboard in a real browser: Debian's Chromium driven by Playwright (never a downloaded
browser), against a real uvicorn API and a real worker process, on PostgreSQL.

Screenshots of every page go to the test's ``screenshots/`` directory (and, when
``JOBRUNNER_DASHBOARD_SCREENSHOTS`` names a directory, the overview and job pages there too: that
is how docs/dashboard-*.png are made).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Locator, Page, Route, expect, sync_playwright

from jobs import db, store
from jobs.kinds.batches import service as batches
from tests.dashboard.conftest import TOKEN
from tests.worker.processes import WorkerProcess, wait_until

pytestmark = pytest.mark.postgres_only  # one pass is enough for the browser; the routes run on both

#: Debian's Chromium (`apt-get install chromium`; .ci/run installs it when missing).
CHROMIUM = "/usr/bin/chromium"
#: Longest a page waits for something to appear (jobs to finish, a live refresh).
WAIT_MS = 60_000
REPO_ROOT = Path(__file__).resolve().parents[2]

expect.set_options(timeout=WAIT_MS)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def api_url(database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real API (uvicorn, ``api.main:app``) on a free port, with JOBRUNNER_API_TOKEN set, on the
    run's database and Redis (each test still starts from empty tables: see ``database``). One for
    the module: it starts in seconds, not in no time."""
    home = tmp_path_factory.mktemp("api")
    settings = {
        "DATABASE_URL": database_url,
        "BROKER_URL": redis_url,
        "STORAGE_DIR": str(home / "uploads"),
        "JOB_MODULES": "tests.kinds",
        "API_TOKEN": TOKEN,
    }
    env = {key: value for key, value in os.environ.items() if not key.startswith("JOBRUNNER_")}
    env.update({f"JOBRUNNER_{key}": value for key, value in settings.items()})
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = (home / "api.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(url, process), timeout=60, what="the API to answer /healthz")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def _answers(url: str, process: subprocess.Popen[bytes]) -> bool:
    assert process.poll() is None, "the API exited at start (see api.log)"
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def worker_process(settings, database, tmp_path: Path) -> Iterator[Callable[[], WorkerProcess]]:
    """Start ``jobctl worker`` (one process, 4 threads) when called; stopped after the test."""
    started: list[WorkerProcess] = []

    def start() -> WorkerProcess:
        started.append(WorkerProcess(tmp_path, threads=4))
        return started[-1]

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def page(browser: Browser, tmp_path: Path) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    yield page
    context.close()


@pytest.fixture
def shoot(tmp_path: Path) -> Callable[[Page, str], None]:
    """Save a screenshot of the page under the test's artifacts (and docs/ when asked, see above)."""
    shots = tmp_path / "screenshots"
    shots.mkdir()
    published = os.environ.get("JOBRUNNER_DASHBOARD_SCREENSHOTS")

    def take(page: Page, name: str) -> None:
        path = shots / f"{name}.png"
        page.screenshot(path=path, full_page=True)
        if published and name in ("overview", "job"):
            shutil.copy(path, Path(published) / f"dashboard-{name}.png")

    return take


def _log_in(page: Page, url: str) -> None:
    page.goto(f"{url}/dashboard/")
    expect(page).to_have_url(f"{url}/dashboard/login?next=/dashboard/")
    page.fill("input[name=token]", TOKEN)
    page.fill("input[name=name]", "playwright")
    page.click("button:has-text('Log in')")
    expect(page).to_have_url(f"{url}/dashboard/")


def _cell(page: Page, kind: str, status: str) -> Locator:
    """The overview's count of ``kind`` jobs in ``status``."""
    return page.locator(f"[data-cell='{kind}:{status}']")


# On Redis only: the module shares one API process, on the run's Redis; what the pages show does
# not depend on the broker, and the actions it clicks run on every broker in test_actions.py.
def test_an_operator_runs_the_dashboard_against_a_real_api_and_worker(
    page: Page,
    api_url: str,
    database: db.Database,
    make_job,
    make_records,
    worker_process: Callable[[], WorkerProcess],
    tmp_path: Path,
    shoot: Callable[[Page, str], None],
) -> None:
    _log_in(page, api_url)

    # A batch cancelled before any worker runs: its plan job never starts.
    _, record_ids = make_records([{"name": f"r{i}"} for i in range(5)])
    with db.session_scope(database.sessions) as session:
        batch_id = batches.create_batch(session, "validate", record_ids=record_ids, chunk_size=2)[0].id
    page.goto(f"{api_url}/dashboard/batches")
    page.click(f"[data-batch='{batch_id}'] [data-action=batch-cancel]")
    expect(page.locator("[data-count]")).to_have_text("1")
    page.fill("input[name=reason]", "wrong records")
    shoot(page, "confirm")
    page.click("[data-action=confirm]")
    expect(page.locator(".flash")).to_contain_text("batch.cancel: 1 of 1 changed (wrong records)")
    expect(page.locator(f"[data-batch='{batch_id}'] .badge")).to_have_text("cancelled")
    shoot(page, "batches")

    # Jobs queued while no worker runs; the overview counts them, then sees them finish (live).
    fix = tmp_path / "fixed"
    for _ in range(6):
        make_job("test.wait", {"seconds": 0.2})
    single = make_job("test.fixable", {"fixed_when": str(fix), "label": "single"})
    bulk = [make_job("test.fixable", {"fixed_when": str(fix), "label": "bulk"}) for _ in range(3)]
    page.goto(f"{api_url}/dashboard/")
    expect(_cell(page, "test.wait", "queued")).to_have_text("6")
    expect(_cell(page, "test.fixable", "queued")).to_have_text("4")
    page.evaluate("window.notReloaded = true")
    worker_process()
    expect(_cell(page, "test.wait", "succeeded")).to_have_text("6")
    expect(_cell(page, "test.fixable", "failed")).to_have_text("4")
    assert page.evaluate("window.notReloaded") is True, "the counts changed by a reload, not a live refresh"
    shoot(page, "overview")
    page.set_viewport_size({"width": 390, "height": 844})
    shoot(page, "overview-phone")
    page.set_viewport_size({"width": 1280, "height": 900})

    # Open the failed job, fix the bug, replay it from its page: it succeeds.
    page.goto(f"{api_url}/dashboard/jobs?status=failed&error=single")
    shoot(page, "jobs")
    page.click(f"a[href='/dashboard/jobs/{single}']")
    expect(page.locator("h1 .badge")).to_have_text("failed")
    shoot(page, "job-failed")
    fix.touch()
    page.click("[data-action=replay]")
    expect(page.locator("[data-count]")).to_have_text("1")
    page.fill("input[name=reason]", "bug fixed")
    page.click("[data-action=confirm]")
    expect(page.locator("h1 .badge")).to_have_text("succeeded")  # by the live refresh
    expect(page.locator(".timeline .reason")).to_have_text("reason: bug fixed")
    shoot(page, "job")

    # Replay every job matching a filter, after the confirmation says how many.
    page.goto(f"{api_url}/dashboard/jobs?status=failed&error=bulk")
    page.click("[data-action=replay-filter]")
    expect(page.locator("[data-count]")).to_have_text("3")
    page.fill("input[name=reason]", "bulk fix")
    page.click("[data-action=confirm]")
    expect(page.locator(".flash")).to_contain_text("replay: 3 of 3 changed (bulk fix)")
    with database.readers() as session:
        wait_until(lambda: all(store.get_job(session, i).status == "succeeded" for i in bulk) or session.expire_all())

    for name in ["failures", "running", "queues", "files", "events", "log"]:
        page.goto(f"{api_url}/dashboard/{name}")
        shoot(page, name)
    expect(page.locator("tbody tr")).to_have_count(3)  # the log: the cancel and both replays
    expect(page.locator("tbody")).to_contain_text("playwright@")

    page.click("button:has-text('log out')")
    expect(page).to_have_url(f"{api_url}/dashboard/login")
    shoot(page, "login")
    page.goto(f"{api_url}/dashboard/jobs")
    expect(page).to_have_url(f"{api_url}/dashboard/login?next=/dashboard/jobs")


def test_docs_render_with_the_network_blocked(page: Page, api_url: str, shoot: Callable[[Page, str], None]) -> None:
    refused: list[str] = []

    def local_only(route: Route) -> None:
        if route.request.url.startswith(api_url):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort()

    page.route("**/*", local_only)
    page.goto(f"{api_url}/docs")
    expect(page.locator(".opblock-summary-path", has_text="/jobs/{job_id}/replay").first).to_be_visible()
    shoot(page, "docs")
    page.goto(f"{api_url}/redoc")
    expect(page.get_by_text("Put a failed job back to queued").first).to_be_attached()
    shoot(page, "redoc")
    # ReDoc's bundle always asks for one image, the logo of its "API docs by Redocly" credit, and
    # hides it when it cannot load: nothing the page needs comes from elsewhere.
    assert set(refused) <= {"https://cdn.redoc.ly/redoc/logo-mini.svg"}, refused
