"""Partitions, clock skew and a frozen host, across network namespaces (tests/hosts/netbed.py): a
database and a broker on hosts of their own, an API host and two worker hosts. Each scenario runs
under load and ends with every job succeeded, each job's note written exactly once, and what
``jobctl check`` checks holding; each prints its recovery time (never asserted).

The partitions from the broker run on Redis and on RabbitMQ (the bed's node); the partition of a
worker from the database runs on Redis and on the PostgreSQL broker, where the database is the
broker too (so it is also that worker cut off from its broker); the others run on Redis."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import func, select

from api import responses
from jobs import models, store
from jobs.models import AttemptOutcome, JobStatus
from jobs.store import checking
from tests import kinds
from tests.hosts.conftest import broker_name
from tests.hosts.netbed import NetbedUnavailable, probe
from tests.skew import skewed_clock_env
from tests.worker.processes import create_notes, wait_until

pytestmark = [pytest.mark.multihost, pytest.mark.postgres_only]

#: Short leases and sweeps: a lease of 2 s, a sweep every 0.5 s, a lost message re-sent after 2 s.
FAST = {
    "JOBRUNNER_LEASE_SECONDS": "2",
    "JOBRUNNER_SWEEP_INTERVAL_SECONDS": "0.5",
    "JOBRUNNER_REQUEUE_AFTER_SECONDS": "2",
    "JOBRUNNER_RETRY_BACKOFF_SECONDS": "0.05",
}
#: How long a partition or a freeze lasts: longer than the lease.
FAULT_SECONDS = 5.0
SETTLE_SECONDS = 60.0


def _statuses(database, job_ids):
    with database.readers() as session:
        rows = session.execute(select(models.Job.id, models.Job.status).where(models.Job.id.in_(job_ids))).all()
    return dict(rows)


def _running_on(database, job_ids, worker):
    with database.readers() as session:
        rows = session.scalars(
            select(models.Job.worker_id).where(models.Job.id.in_(job_ids), models.Job.status == JobStatus.RUNNING)
        ).all()
    pids = {str(pid) for pid in worker.worker_pids()}
    return [w for w in rows if w and w.rsplit(":", 1)[-1] in pids]


def _settle(database, registry, job_ids, started, what, capsys, since="the fault began"):
    """Wait for every job to succeed, check each applied once and the invariants; print the time
    from ``started`` (the moment ``since`` names)."""
    wait_until(
        lambda: set(_statuses(database, job_ids).values()) == {JobStatus.SUCCEEDED},
        timeout=SETTLE_SECONDS,
        what=f"every job to succeed after {what}",
    )
    recovered = time.monotonic() - started
    with database.engine.connect() as conn:
        notes = dict(conn.execute(select(kinds.notes.c.job_id, func.count()).group_by(kinds.notes.c.job_id)).all())
    lost = [job_id for job_id in job_ids if notes.get(job_id, 0) == 0]
    doubled = [job_id for job_id in job_ids if notes.get(job_id, 0) > 1]
    assert lost == [] and doubled == [], f"{len(lost)} lost, {len(doubled)} applied twice"
    with database.readers() as session:
        report = checking.run_checks(session, checking.checks_of(registry))
        outcomes = dict(
            session.execute(
                select(models.JobAttempt.outcome, func.count())
                .where(models.JobAttempt.job_id.in_(job_ids))
                .group_by(models.JobAttempt.outcome)
            ).all()
        )
    assert report.ok, "jobctl check:\n" + "\n".join(map(str, report.violations))
    with capsys.disabled():
        print(
            f"\n[figure] multihost, {what}: {len(job_ids)} jobs, 0 lost, 0 doubled; attempts {outcomes}; "
            f"all done {recovered:.1f} s after {since}"
        )
    return outcomes


def _ready(worker):
    wait_until(lambda: "ready for action" in worker.log(), timeout=SETTLE_SECONDS, what="the worker to boot")


def _api_env(settings):
    """The environment of the API host: the bed's settings."""
    return {
        **os.environ,
        "JOBRUNNER_DATABASE_URL": settings.database_url,
        "JOBRUNNER_BROKER_URL": settings.broker_url,
        "JOBRUNNER_JOB_MODULES": "tests.kinds",
        "PYTHONPATH": os.pathsep.join(sys.path),
    }


def _api_host(netbed, *args):
    """The command running tests/hosts/api_host.py with ``args`` on the API host."""
    return ["ip", "netns", "exec", netbed.ns("api"), sys.executable, "-m", "tests.hosts.api_host", *args]


def _accepted(output, count):
    """The IDs of the jobs of ``output`` (api_host's lines), checking that all ``count`` were accepted."""
    answers = [line.split() for line in output.splitlines()]
    assert len(answers) == count and {(code, status) for code, _, status in answers} == {("202", "queued")}, output
    return [uuid.UUID(job_id) for _, job_id, _ in answers]


def _load(database, quick=60, slow=8):
    """``slow`` jobs of 4 s (sent first: each worker gets some), then ``quick`` ones."""
    slow_ids = create_notes(database, slow, sleep_seconds=4)
    return slow_ids + create_notes(database, quick)


def _brokers(*names):
    """Run the scenario once per broker of ``names`` (ids ``redis``, ``rabbitmq``, ``postgres``)."""
    return pytest.mark.parametrize("broker_url", names, indirect=True)


@_brokers("redis", "postgres")
def test_a_worker_cut_off_from_the_database_mid_job_has_its_late_commit_fenced_out(
    netbed, bed_database, bed_registry, bed_settings, host_workers, capsys
):
    w1, w2 = host_workers("w1", **FAST), host_workers("w2", **FAST)
    _ready(w1), _ready(w2)  # w2's sweeper takes w1's jobs back while w1 is cut off
    # More slow jobs than w2 prefetches, so that w1 gets some even when it starts consuming last.
    job_ids = _load(bed_database, slow=16)
    wait_until(
        lambda: _running_on(bed_database, job_ids[:16], w1), timeout=SETTLE_SECONDS, what="a slow job running on w1"
    )
    started = time.monotonic()
    netbed.partition("w1", "db")
    time.sleep(FAULT_SECONDS)  # the partition: w1's leases expire; w2's sweeper takes its jobs back
    netbed.heal("w1", "db")
    broker = broker_name(bed_settings.broker_url)
    what = "w1 cut off from PostgreSQL 5 s" + (" (its broker too)" if broker == "PostgreSQL" else f" (broker {broker})")
    _settle(bed_database, bed_registry, job_ids, started, what, capsys)
    # w1 finishes its handler once healed and tries to commit: the fence refuses it, and the attempt
    # the sweeper recorded as lost becomes an error (w1 was alive): no death counted.
    wait_until(lambda: "claim_lost" in w1.log(), timeout=SETTLE_SECONDS, what="w1's late commit to be refused")
    with bed_database.readers() as session:
        claim_lost = session.scalar(select(func.count()).where(models.JobAttempt.error_type == store.CLAIM_LOST_TYPE))
    assert claim_lost >= 1


@_brokers("redis", "rabbitmq")
def test_a_worker_cut_off_from_the_broker_loses_nothing(
    netbed, bed_database, bed_registry, bed_settings, host_workers, capsys
):
    w1, w2 = host_workers("w1", **FAST), host_workers("w2", **FAST)
    _ready(w1), _ready(w2)
    # More slow jobs than w2 prefetches, so that w1 gets some even when it starts consuming last.
    job_ids = _load(bed_database, slow=16)
    wait_until(
        lambda: _running_on(bed_database, job_ids[:16], w1), timeout=SETTLE_SECONDS, what="a slow job running on w1"
    )
    started = time.monotonic()
    netbed.partition("w1", "broker")
    time.sleep(FAULT_SECONDS)
    netbed.heal("w1", "broker")
    broker = broker_name(bed_settings.broker_url)
    _settle(bed_database, bed_registry, job_ids, started, f"w1 cut off from {broker} 5 s", capsys)


@_brokers("redis", "rabbitmq")
def test_jobs_posted_while_the_api_is_cut_off_from_the_broker_go_out_after_healing(
    netbed, bed_database, bed_registry, bed_settings, bed_queued, host_workers, capsys
):
    netbed.partition("api", "broker")
    api = subprocess.run(
        _api_host(netbed, "20"), env=_api_env(bed_settings), capture_output=True, text=True, timeout=120, check=True
    )
    job_ids = _accepted(api.stdout, 20)
    assert set(_statuses(bed_database, job_ids).values()) == {JobStatus.QUEUED}
    assert bed_queued("default") == 0, "a send got through the partition"
    started = time.monotonic()
    netbed.heal("api", "broker")
    host_workers("w1", **FAST)  # its sweeper sends the overdue jobs again
    broker = broker_name(bed_settings.broker_url)
    what = f"API cut off from {broker} at enqueue, then healed"
    _settle(bed_database, bed_registry, job_ids, started, what, capsys, since="healing (a worker starting meanwhile)")


@_brokers("redis", "postgres")
def test_the_api_cut_off_from_the_database_answers_503_and_accepts_nothing_it_could_lose(
    netbed, bed_database, bed_registry, bed_settings, host_workers, tmp_path, capsys
):
    # One API process: 10 posts while it is cut off from the database (on the PostgreSQL broker, its
    # broker too), then, once healed (the gate file), 20 more from the same app and its pool.
    gate, answers = tmp_path / "healed", tmp_path / "answers"
    netbed.partition("api", "db")
    with open(answers, "wb") as out, open(tmp_path / "api.log", "wb") as log:
        api = subprocess.Popen(
            _api_host(netbed, "10", str(gate), "20"), env=_api_env(bed_settings), stdout=out, stderr=log
        )
    try:
        wait_until(
            lambda: len(answers.read_text().splitlines()) >= 10 or api.poll() is not None,
            timeout=SETTLE_SECONDS,
            what="the API's 10 answers while cut off",
        )
        refused = [line.split() for line in answers.read_text().splitlines()]
        assert refused == [["503", "-", str(responses.RETRY_AFTER_SECONDS)]] * 10, (tmp_path / "api.log").read_text()
        with bed_database.readers() as session:
            assert session.scalar(select(func.count()).select_from(models.Job)) == 0, "a refused job was stored"
        started = time.monotonic()
        netbed.heal("api", "db")
        gate.touch()
        assert api.wait(timeout=120) == 0, (tmp_path / "api.log").read_text()
    finally:
        if api.poll() is None:
            api.kill()
            api.wait()
    job_ids = _accepted("\n".join(answers.read_text().splitlines()[10:]), 20)
    host_workers("w1", **FAST)
    broker = broker_name(bed_settings.broker_url)
    what = f"API cut off from PostgreSQL (broker {broker}) 10 posts refused, then healed"
    _settle(bed_database, bed_registry, job_ids, started, what, capsys, since="healing (a worker starting meanwhile)")


def test_worker_hosts_with_clocks_ten_minutes_off_lose_and_double_nothing(
    netbed, bed_database, bed_registry, host_workers, capsys
):
    job_ids = _load(bed_database)
    started = time.monotonic()
    host_workers("w1", **FAST, **skewed_clock_env(600))
    host_workers("w2", **FAST, **skewed_clock_env(-600))
    outcomes = _settle(bed_database, bed_registry, job_ids, started, "w1 +10 min, w2 -10 min", capsys)
    assert set(outcomes) == {AttemptOutcome.SUCCEEDED}, "a running job was taken back"


def test_a_frozen_worker_host_resumed_after_its_lease_commits_nothing_late(
    netbed, bed_database, bed_registry, host_workers, capsys
):
    w1, w2 = host_workers("w1", **FAST), host_workers("w2", **FAST)
    _ready(w1), _ready(w2)
    # More slow jobs than w2 prefetches, so that w1 gets some even when it starts consuming last.
    job_ids = _load(bed_database, slow=16)
    wait_until(
        lambda: _running_on(bed_database, job_ids[:16], w1), timeout=SETTLE_SECONDS, what="a slow job running on w1"
    )
    started = time.monotonic()
    pids = [
        int(pid)
        for pid in subprocess.run(
            ["ip", "netns", "pids", netbed.ns("w1")], capture_output=True, text=True, check=True
        ).stdout.split()
    ]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(FAULT_SECONDS)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    _settle(bed_database, bed_registry, job_ids, started, "w1 frozen (SIGSTOP) 5 s", capsys)


def test_the_bed_script_builds_the_bed_with_its_rabbitmq_node_and_tears_it_all_down():
    # `.venv/bin/python -m tests.hosts.netbed --rabbitmq`, as the README shows it.
    try:
        probe()
    except NetbedUnavailable as exc:
        pytest.skip(f"multi-host scenarios need network namespaces: {exc}")
    script = subprocess.run(
        [sys.executable, "-m", "tests.hosts.netbed", "--rabbitmq"], capture_output=True, text=True, timeout=180
    )
    assert script.returncode == 0, script.stderr
    namespaces = script.stdout.splitlines()[0].removeprefix("namespaces: ").split(", ")
    node = re.search(r"\(node (\S+)\)", script.stdout)
    assert len(namespaces) == 6 and node and script.stdout.endswith("torn down\n"), script.stdout
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not [name for name in namespaces if name in left], left
    wait_until(lambda: node.group(1) not in _commands(), timeout=10, what="the bed's RabbitMQ node to be gone")


def _commands():
    """The command lines of the machine's processes (zombies, which have none, left out)."""
    lines = []
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError):
            lines.append(Path("/proc", entry, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
    return "\n".join(lines)
