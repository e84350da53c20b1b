"""``jobctl`` as an operator runs it: the real CLI in subprocesses, against the real database and Redis."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from sqlalchemy import delete, update

from jobs import db, errors, models, store
from jobs.models import AttemptOutcome, JobStatus
from tests.acceptance.conftest import (
    COMMAND_TIMEOUT_SECONDS,
    REPO_ROOT,
    cli_env,
    embedded_defaults_env,
    jobctl_command,
)
from worker import cli, devmode

#: Longest ``jobctl dev`` may take to answer, and a job posted to it to finish.
DEV_READY_SECONDS = 60.0
#: Longest ``jobctl dev`` may take to stop its children (the worker waits for running jobs).
DEV_STOP_SECONDS = 120.0
#: Longest ``jobctl demo --rows 100`` may take, start to end.
DEMO_SECONDS = 240.0


def _history(fetch, job_id):
    row, attempts = fetch(job_id)
    return row, [a.outcome for a in attempts]


# --- replay: selecting ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "selector",
    [["{target}"], ["--kind", "fail"], ["--since", "1d"], ["--error-contains", "disk full"]],
    ids=["by-id", "by-kind", "by-since", "by-error-text"],
)
def test_replay_puts_back_only_the_failed_jobs_its_selector_matches(
    selector, jobctl, make_failed_job, fetch, queued_messages
):
    target = make_failed_job("fail", message="disk full on /data")
    other = make_failed_job("test.note", message="the bank timed out", failed_ago=dt.timedelta(days=3))
    before = queued_messages()
    args = [part.format(target=target) for part in selector]

    result = jobctl("replay", *args, "--yes", "--reason", "disk cleaned")

    assert result.returncode == 0, result.stderr
    assert "replayed 1, skipped 0" in result.stdout
    row, outcomes = _history(fetch, target)
    assert (row.status, row.replay_count) == (JobStatus.QUEUED, 1)
    assert outcomes == [AttemptOutcome.FAILED, AttemptOutcome.REPLAYED]
    assert fetch(target)[1][-1].error_message == "disk cleaned"  # the reason, kept in the history
    assert fetch(other)[0].status == JobStatus.FAILED
    assert queued_messages() - before == 1  # the replayed job's ID, sent once


def test_dry_run_shows_the_selection_and_changes_nothing(jobctl, make_failed_job, fetch, queued_messages):
    job_id = make_failed_job("fail", message="disk full")
    before = queued_messages()

    result = jobctl("replay", "--kind", "fail", "--dry-run")

    assert result.returncode == 0, result.stderr
    assert str(job_id) in result.stdout and "disk full" in result.stdout
    row, outcomes = _history(fetch, job_id)
    assert (row.status, row.replay_count, row.error_message) == (JobStatus.FAILED, 0, "disk full")
    assert outcomes == [AttemptOutcome.FAILED]
    assert queued_messages() == before


@pytest.mark.brokers  # the replay sends the job to the broker
def test_a_job_that_is_not_failed_is_skipped_and_counted(jobctl, make_failed_job, make_job, fetch):
    failed = make_failed_job()
    queued = make_job("noop")

    result = jobctl("replay", str(failed), str(queued), "--yes", "--json")

    assert result.returncode == 1, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["replayed"], summary["skipped"]) == ([str(failed)], [str(queued)])
    assert fetch(failed)[0].status == JobStatus.QUEUED
    row, outcomes = _history(fetch, queued)
    assert (row.status, row.replay_count, outcomes) == (JobStatus.QUEUED, 0, [])


@pytest.mark.brokers  # the replay sends the job to the broker
def test_a_named_job_that_does_not_exist_is_reported_missing_not_skipped(jobctl, make_failed_job, make_job, fetch):
    failed, queued, unknown = make_failed_job(), make_job("noop"), uuid.uuid4()

    as_json = jobctl("replay", str(unknown), str(queued), "--yes", "--json")

    assert as_json.returncode == 1, as_json.stderr
    summary = json.loads(as_json.stdout)
    assert (summary["skipped"], summary["missing"]) == ([str(queued)], [str(unknown)])

    as_text = jobctl("replay", str(unknown), str(failed), "--yes")

    assert as_text.returncode == 1, as_text.stderr
    assert f"no such job: {unknown}" in as_text.stdout
    assert "replayed 1, skipped 0 (not failed, or no longer), missing 1 (no such job)" in as_text.stdout
    assert fetch(failed)[0].status == JobStatus.QUEUED


@pytest.mark.parametrize(
    "command",
    [["replay", "--kind", "fail", "--dry-run"], ["events", "rebuild", "orgs", "--dry-run"]],
    ids=["replay", "events-rebuild"],
)
def test_a_dry_run_says_that_nothing_was_changed(command, jobctl, make_failed_job, fetch):
    job_id = make_failed_job("fail", message="disk full")

    result = jobctl(*command)

    assert result.returncode == 0, result.stderr
    assert "dry run: nothing was changed" in result.stdout
    assert fetch(job_id)[0].status == JobStatus.FAILED


def test_durations_take_weeks(jobctl, make_failed_job, fetch):
    recent = make_failed_job("fail", message="recent", failed_ago=dt.timedelta(days=3))
    older = make_failed_job("fail", message="older", failed_ago=dt.timedelta(days=10))
    oldest = make_failed_job("fail", message="oldest", failed_ago=dt.timedelta(days=20))

    selected = _json(jobctl("replay", "--since", "2w", "--until", "1w", "--dry-run", "--json"))
    assert selected["selected"] == [str(older)]

    pruned = _json(jobctl("prune", "--succeeded-older-than", "1w", "--failed-older-than", "2w", "--json"))
    assert pruned["deleted"] == 1
    with pytest.raises(errors.JobNotFound):
        fetch(oldest)
    assert fetch(recent)[0].status == fetch(older)[0].status == JobStatus.FAILED


def test_a_job_replayed_by_someone_else_while_confirming_is_skipped(database, make_failed_job, fetch, queued_messages):
    job_id = make_failed_job()
    before = queued_messages()
    with subprocess.Popen(
        jobctl_command("replay", str(job_id)),
        cwd=REPO_ROOT,
        env=cli_env(),
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        try:
            prompt = _read_until(process.stderr, "Replay 1 job(s)?")
            assert "Replay 1 job(s)?" in prompt, prompt
            with db.session_scope(database.sessions) as session:  # another operator, meanwhile
                assert store.replay_jobs(session, [job_id], reason="the other operator") == [job_id]
            stdout, stderr = process.communicate("y\n", timeout=COMMAND_TIMEOUT_SECONDS)
        finally:
            _kill_if_running(process)

    assert process.returncode == 1, stderr
    assert "replayed 0, skipped 1" in stdout
    row, outcomes = _history(fetch, job_id)
    assert (row.replay_count, outcomes) == (1, [AttemptOutcome.FAILED, AttemptOutcome.REPLAYED])
    assert queued_messages() - before == 1  # the other operator's send only


def test_two_concurrent_replays_of_the_same_selection_enqueue_each_job_once(make_failed_job, fetch, queued_messages):
    job_ids = {str(make_failed_job("fail", message="disk full")) for _ in range(30)}
    before = queued_messages()
    prompt = f"Replay {len(job_ids)} job(s)?"
    # Without --yes each replay stops at its prompt after selecting: once both have asked, both hold
    # the whole selection, and answering both at once makes their updates race. (Two `--yes` runs
    # started together almost never overlap: interpreter start-up dwarfs the replay itself.)
    processes = [
        subprocess.Popen(
            jobctl_command("replay", "--kind", "fail", "--json"),
            cwd=REPO_ROOT,
            env=cli_env(),
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    try:
        for process in processes:
            asked = _read_until(process.stderr, prompt)
            assert prompt in asked, asked
        for process in processes:
            process.stdin.write("y\n")
            process.stdin.flush()
        outputs = [process.communicate(timeout=COMMAND_TIMEOUT_SECONDS) for process in processes]
    finally:
        for process in processes:
            _kill_if_running(process)

    summaries = [json.loads(stdout) for stdout, _ in outputs]
    assert [set(summary["selected"]) for summary in summaries] == [job_ids, job_ids]
    first, second = (set(summary["replayed"]) for summary in summaries)
    assert first.isdisjoint(second) and first | second == job_ids
    for process, summary, (_, stderr) in zip(processes, summaries, outputs, strict=True):
        # What the other replay took first is counted as skipped, and the exit code says so.
        assert set(summary["skipped"]) == job_ids - set(summary["replayed"])
        assert process.returncode == (1 if summary["skipped"] else 0), stderr
    assert {fetch(uuid.UUID(i))[0].replay_count for i in job_ids} == {1}
    assert queued_messages() - before == len(job_ids)


# --- usage and exit codes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["replay"],
        ["replay", "--kind", "fail", "--no-such-option"],
        ["replay", "--since", "yesterday"],
        ["jobs", "show", "not-a-job-id"],
    ],
    ids=["replay-without-selector", "unknown-option", "bad-since", "bad-job-id"],
)
def test_bad_usage_exits_2_without_a_traceback(args, jobctl, make_failed_job, fetch):
    job_id = make_failed_job()

    result = jobctl(*args)

    assert result.returncode == 2, (result.stdout, result.stderr)
    [line] = result.stderr.splitlines()  # one line, no traceback
    assert line.startswith("error: ")
    assert fetch(job_id)[0].status == JobStatus.FAILED


def test_unknown_job_is_one_line_error_and_exit_1(jobctl):
    missing = uuid.uuid4()

    result = jobctl("jobs", "show", str(missing))

    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"error: no job {missing}"]
    assert result.stdout == ""


def test_verbose_shows_the_traceback(jobctl):
    missing = uuid.uuid4()

    result = jobctl("-v", "jobs", "show", str(missing))

    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "JobNotFound" in result.stderr
    assert result.stderr.rstrip().splitlines()[-1] == f"error: no job {missing}"


@pytest.mark.parametrize("group", [[], ["jobs"], ["events"]], ids=["jobctl", "jobs", "events"])
def test_a_group_without_a_command_prints_its_help(group, jobctl):
    result = jobctl(*group)

    assert result.returncode == 2  # as Click does for a group without a command
    assert result.stderr.startswith(f"Usage: {' '.join(['jobctl', *group])} [OPTIONS] COMMAND [ARGS]...")
    assert "Commands:" in result.stderr and "Error" not in result.stderr
    listed = {line.split()[0] for line in result.stderr.split("Commands:")[1].splitlines() if line.strip()}
    command: Any = _click_tree()
    for name in group:
        command = command.commands[name]
    assert listed == set(command.commands)


def _click_tree() -> Any:
    return typer.main.get_command(cli.app)


def _command_paths(command: Any = None, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and group of jobctl, as the words that name it (the root is ``()``)."""
    command = _click_tree() if command is None else command
    paths = [path]
    for name, sub in getattr(command, "commands", {}).items():
        paths += _command_paths(sub, (*path, name))
    return paths


#: A Typer type label: ``<bool>``, ``<str>``, ``<int range>``, ``<list[str]>`` (not a choice list
#: such as ``<queued|running|...>``).
TYPE_LABEL = re.compile(r"<\w+(\[[\w, \[\]]*\])?( range)?>")


@pytest.mark.parametrize("path", _command_paths(), ids=lambda path: " ".join(path) or "jobctl")
def test_help_shows_no_type_labels(path, jobctl):
    result = jobctl(*path, "--help")

    assert result.returncode == 0, result.stderr
    assert TYPE_LABEL.search(result.stdout) is None, result.stdout
    assert result.stdout.startswith(f"Usage: {' '.join(['jobctl', *path])} ")


def test_help_names_what_an_option_takes(jobctl):
    result = jobctl("replay", "--help")

    assert "Usage: jobctl replay [OPTIONS] [ID]..." in result.stdout
    for option in ("--kind KIND", "--since WHEN", "--limit N", "--reason TEXT"):
        assert option in result.stdout
    assert "1w" in result.stdout  # durations in weeks, said where they are taken


def test_a_bad_setting_is_one_line_in_the_validators_own_words(tmp_path):
    env = {**cli_env(), "JOBRUNNER_DATABASE_URL": "mysql://localhost/jobs"}

    result = subprocess.run(
        jobctl_command("stats"),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=COMMAND_TIMEOUT_SECONDS,
    )

    assert result.returncode == 2
    assert result.stderr.splitlines() == ["error: bad setting: database_url: only PostgreSQL and SQLite are supported"]


# --- JSON for scripts -----------------------------------------------------------------------------


@pytest.mark.brokers  # the replay sends the job to the broker
def test_listing_commands_print_json_that_parses(jobctl, make_failed_job, make_job):
    failed = make_failed_job("fail", message="disk full")
    queued = make_job("noop")

    listed = _json(jobctl("jobs", "list", "--json"))
    assert [job["id"] for job in listed] == [str(queued), str(failed)]  # newest first
    assert listed[1]["status"] == "failed" and listed[1]["error_message"] == "disk full"

    shown = _json(jobctl("jobs", "show", str(failed), "--json"))
    assert (shown["id"], shown["status"]) == (str(failed), "failed")
    assert [attempt["outcome"] for attempt in shown["history"]] == ["failed"]
    assert "PermanentError" in shown["error_traceback"]

    stats = _json(jobctl("stats", "--json"))
    counts = {(c["kind"], c["status"]): c["count"] for c in stats["counts"]}
    assert counts == {("fail", "failed"): 1, ("noop", "queued"): 1}
    assert stats["oldest_queued_age_seconds"] >= 0

    dry = _json(jobctl("replay", "--all-failed", "--dry-run", "--json"))
    assert dry == {"selected": [str(failed)], "replayed": [], "skipped": [], "missing": [], "dry_run": True}
    replayed = _json(jobctl("replay", "--all-failed", "--yes", "--json"))
    assert replayed == {
        "selected": [str(failed)],
        "replayed": [str(failed)],
        "skipped": [],
        "missing": [],
        "dry_run": False,
    }

    swept = _json(jobctl("sweep", "--json"))
    assert swept["ran"] is True
    assert {"requeued", "quarantined", "resent"} <= swept.keys()


def test_check_says_ok_on_a_sound_database_and_exits_1_naming_each_violation(jobctl, database, make_failed_job):
    failed = make_failed_job("fail", message="disk full")

    result = jobctl("check")
    assert (result.returncode, result.stderr) == (0, "")
    assert len(result.stdout.splitlines()) == 1 and result.stdout.startswith("OK: every invariant holds")
    assert _json(jobctl("check", "--json"))["ok"] is True

    with database.engine.begin() as conn:  # the failure without its failed attempt (finding 5)
        conn.execute(delete(models.JobAttempt.__table__).where(models.JobAttempt.job_id == failed))
        conn.execute(
            update(models.Job.__table__).where(models.Job.id == failed).values(lease_expires_at=store.utcnow())
        )
    result = jobctl("check")
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith(f"final-attempt: job {failed}: failed, but 0 `failed` attempt(s)") for line in lines)
    assert any(line.startswith(f"running-lease: job {failed}: failed, but holds a lease") for line in lines)
    assert any(line.startswith(f"attempt-count: job {failed}:") for line in lines)
    assert lines[-1].startswith("3 violation(s)")

    as_json = jobctl("check", "--json")
    assert as_json.returncode == 1
    report = json.loads(as_json.stdout)
    assert report["ok"] is False and report["truncated"] == []
    assert {(v["invariant"], v["subject"]) for v in report["violations"]} == {
        (invariant, f"job {failed}") for invariant in ("final-attempt", "running-lease", "attempt-count")
    }
    assert "check_batch_counters" in report["checks"] and "check_file_counts" in report["checks"]


def test_jobs_show_prints_args_as_indented_json(jobctl, make_job):
    args = {"message": "disk full on /data", "fail_times": 2}
    job_id = make_job("fail", args)

    result = jobctl("jobs", "show", str(job_id))

    assert result.returncode == 0, result.stderr
    assert "args: {\n  " in result.stdout  # indented, one key a line
    shown = result.stdout.split("args: ", 1)[1]
    shown = shown[: shown.index("\n}") + 2]
    assert args.items() <= json.loads(shown).items()  # with the defaults the kind filled in


def _json(result: subprocess.CompletedProcess[str]) -> object:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# --- dev and demo, on the embedded defaults ----------------------------------------------------


def test_dev_serves_runs_a_job_and_leaves_no_process_behind_on_sigterm(tmp_path):
    port = devmode.free_port()
    api = f"http://127.0.0.1:{port}"
    log = (tmp_path / "dev.log").open("wb")
    dev = subprocess.Popen(
        jobctl_command("dev", "--port", str(port)),
        cwd=tmp_path,
        env=embedded_defaults_env(),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    tree: dict[int, str] = {}
    try:
        with httpx.Client(base_url=api, timeout=5) as client:
            _wait_for(lambda: _healthy(client), dev, tmp_path, "dev to answer /healthz")
            response = client.post("/jobs", json={"kind": "noop", "args": {}})
            assert response.status_code == 202, response.text
            job_url = f"/jobs/{response.json()['job_id']}"
            _wait_for(lambda: client.get(job_url).json()["status"] == "succeeded", dev, tmp_path, "the job")
        tree = descendants(dev.pid)
        names = {_name(pid) for pid in tree}
        assert "redis-server" in names and len(tree) >= 3, names  # Redis, API, worker (and its children)
        assert (tmp_path / "var" / "jobrunner.db").exists()  # SQLite under ./var

        dev.send_signal(signal.SIGTERM)
        assert dev.wait(timeout=DEV_STOP_SECONDS) == 0, _logs(tmp_path)
        left = wait_until_gone(tree, timeout=10.0)
        assert left == {}, f"still running after SIGTERM: {left}"
    finally:
        _kill_if_running(dev)
        for pid, start in tree.items():
            if is_running(pid, start):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.brokers  # dev mode on the test's broker: Redis, RabbitMQ or PostgreSQL only
def test_dev_with_a_broker_set_runs_a_job_on_it_and_starts_no_redis(tmp_path, settings, database):
    port = devmode.free_port()
    log = (tmp_path / "dev.log").open("wb")
    dev = subprocess.Popen(
        jobctl_command("dev", "--port", str(port)),
        cwd=tmp_path,
        # The test's database and broker (exported by the settings fixture); tests.kinds importable.
        env=cli_env({**os.environ, "PYTHONPATH": str(REPO_ROOT)}),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            _wait_for(lambda: _healthy(client), dev, tmp_path, "dev to answer /healthz")
            response = client.post("/jobs", json={"kind": "test.note", "args": {"text": "dev"}})
            assert response.status_code == 202, response.text
            job_url = f"/jobs/{response.json()['job_id']}"
            _wait_for(lambda: client.get(job_url).json()["status"] == "succeeded", dev, tmp_path, "the job")
        names = {_name(pid) for pid in descendants(dev.pid)}
        assert "redis-server" not in names, names
        assert not (tmp_path / "var" / "jobrunner.db").exists()  # the test's database, not one of its own
        dev.send_signal(signal.SIGTERM)
        assert dev.wait(timeout=DEV_STOP_SECONDS) == 0, _logs(tmp_path)
    finally:
        if dev.poll() is None:
            stop_session(dev)


def test_demo_runs_to_the_end_and_stops_its_processes(tmp_path):
    result = subprocess.run(
        jobctl_command("demo", "--rows", "100"),
        cwd=tmp_path,
        env=embedded_defaults_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=DEMO_SECONDS,
    )

    assert result.returncode == 0, (result.stdout, result.stderr, _logs(tmp_path / "var" / "demo"))
    assert "demo finished" in result.stdout
    assert "jobctl replay " in result.stdout
    assert _processes_in(tmp_path) == [], "the demo left processes running"


# --- helpers --------------------------------------------------------------------------------------


def _healthy(client: httpx.Client) -> bool:
    try:
        return client.get("/healthz").status_code == 200
    except httpx.TransportError:
        return False


def _wait_for(ready, process: subprocess.Popen, tmp_path: Path, what: str) -> None:
    """Poll ``ready`` until true; fail if ``process`` exits first or the deadline passes."""
    deadline = time.monotonic() + DEV_READY_SECONDS
    while time.monotonic() < deadline:
        assert process.poll() is None, f"exited with {process.returncode} waiting for {what}:\n{_logs(tmp_path)}"
        if ready():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}:\n{_logs(tmp_path)}")


def _logs(directory: Path) -> str:
    logs = sorted(directory.rglob("*.log"))
    return "\n".join(f"--- {path}\n{path.read_text(errors='replace')[-3000:]}" for path in logs)


def _read_until(stream, text: str) -> str:
    """Read ``stream`` (a pipe) until ``text`` shows up, for at most COMMAND_TIMEOUT_SECONDS."""
    seen = ""
    deadline = time.monotonic() + COMMAND_TIMEOUT_SECONDS
    fd = stream.fileno()
    while text not in seen and time.monotonic() < deadline:
        readable, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not readable:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        seen += chunk.decode(errors="replace")
    return seen


def stop_session(process: subprocess.Popen, *, timeout: float = 60) -> None:
    """SIGTERM the process group of ``process`` (started in a session of its own), wait up to
    ``timeout`` seconds, then SIGKILL the group."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _kill_if_running(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()


def _proc_stat(pid: int) -> tuple[str, int, str] | None:
    """(state, parent PID, start time) from /proc/PID/stat, or None if there is no such process."""
    try:
        text = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces or parentheses: split after its last ")".
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), fields[19]


def descendants(root: int) -> dict[int, str]:
    """Every process below ``root``, by PID, with its start time (so a reused PID is not mistaken
    for it)."""
    children: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _proc_stat(int(entry.name))) is not None:
            children[stat[1]].append((int(entry.name), stat[2]))
    found: dict[int, str] = {}
    pending = [root]
    while pending:
        for pid, start in children.get(pending.pop(), []):
            found[pid] = start
            pending.append(pid)
    return found


def is_running(pid: int, start: str) -> bool:
    # A zombie has exited; only its exit status is left for a parent to collect.
    stat = _proc_stat(pid)
    return stat is not None and stat[2] == start and stat[0] != "Z"


def wait_until_gone(processes: dict[int, str], timeout: float) -> dict[int, str]:
    """Wait (bounded) for every process to end; returns those still running, with their names."""
    deadline = time.monotonic() + timeout
    while True:
        left = {pid: _name(pid) for pid, start in processes.items() if is_running(pid, start)}
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.1)


def _name(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "comm").read_text().strip()
    except OSError:
        return "?"


def _processes_in(directory: Path) -> list[int]:
    """Live processes whose working directory is ``directory`` (the demo's children run there)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:
            continue
        if cwd == directory or directory in cwd.parents:
            found.append(int(entry.name))
    return found


def test_events_rebuild_reports_the_projection_equal_to_live(jobctl, client, drain):
    org = {"type": "user_registered", "payload": {"org_id": "acme", "user_id": "u1", "email": "a@acme.io"}}
    assert client.post("/events", json=[org]).status_code == 202
    drain()
    result = jobctl("events", "rebuild", "orgs", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["matched"] is True and report["rows"] == 1
    unknown = jobctl("events", "rebuild", "nonsense")
    assert unknown.returncode == 1 and unknown.stderr.startswith("error:")


def test_a_database_without_tables_gets_a_hint_not_a_traceback(tmp_path, redis_url):
    # The default database (SQLite under ./var, here empty); the run's Redis, not the default one.
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBRUNNER_")}
    env["JOBRUNNER_BROKER_URL"] = redis_url
    result = subprocess.run(
        [sys.executable, "-m", "worker", "stats"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert result.stderr.strip() == "error: the database has no jobrunner tables yet: run `jobctl db upgrade` first"
