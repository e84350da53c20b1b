"""The sweeper's passes and pruning, against the real database and Redis; after each test, what
``jobctl check`` checks holds."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import insert, update

from jobs import db, models, store
from jobs.models import AttemptOutcome, JobStatus
from tests import kinds
from worker import producer, sweeper

pytestmark = pytest.mark.usefixtures("invariants_hold")


def _age(database, job_id, **columns):
    with database.engine.begin() as conn:
        conn.execute(update(models.Job.__table__).where(models.Job.id == job_id).values(**columns))


def _finish(database, job_id, status, finished_at):
    """Make the job ``status`` (succeeded or failed) after one attempt, its row and history as a worker leaves them."""
    _age(database, job_id, status=status, finished_at=finished_at, attempts=1)
    with database.engine.begin() as conn:
        row = {"job_id": job_id, "run": 0, "number": 1, "finished_at": finished_at, "outcome": status.value}
        conn.execute(insert(models.JobAttempt.__table__).values(**row))


def _ago(seconds):
    return store.utcnow() - dt.timedelta(seconds=seconds)


@pytest.mark.brokers(without=("postgres",))  # the PostgreSQL broker has no message to lose
def test_sweep_resends_queued_jobs_whose_message_seems_lost(
    database, settings, make_job, queued_messages, flush_broker, fetch
):
    old = make_job("noop")
    make_job("noop")  # sent just now: not overdue, so not re-sent
    flush_broker()  # both messages lost
    _age(database, old, enqueued_at=_ago(settings.requeue_after_seconds + 5))
    report = sweeper.sweep_once(database, settings)
    assert report.ran and report.resent == [old]
    assert queued_messages() == 1
    assert fetch(old)[0].enqueued_at > _ago(5)
    assert sweeper.sweep_once(database, settings).resent == []  # not re-sent on every pass


@pytest.mark.brokers(without=("postgres",))  # the PostgreSQL broker has no message to lose, so re-sends none
def test_sweep_resends_retrying_jobs_only_once_their_retry_is_overdue(database, settings, make_job):
    due, later = make_job("noop"), make_job("noop")
    long_ago = _ago(settings.requeue_after_seconds + 5)
    _age(database, due, status=JobStatus.RETRYING, enqueued_at=long_ago, next_retry_at=long_ago)
    _age(database, later, status=JobStatus.RETRYING, enqueued_at=long_ago, next_retry_at=_ago(-600))
    assert sweeper.sweep_once(database, settings).resent == [due]


def test_sweep_takes_back_a_job_whose_worker_died(database, settings, make_job, fetch, queued_messages, flush_broker):
    job_id = make_job("noop")
    with database.engine.connect() as conn:
        store.claim_job(conn, job_id, worker_id="dead-worker", lease_seconds=30)
    flush_broker()
    _age(database, job_id, lease_expires_at=_ago(1))
    report = sweeper.sweep_once(database, settings)
    assert report.requeued == [job_id]
    job, history = fetch(job_id)
    assert job.status == JobStatus.QUEUED and job.claim_token is None
    assert [(a.outcome, a.worker_id) for a in history] == [(AttemptOutcome.LOST, "dead-worker")]
    assert queued_messages() == 1


def test_sweep_leaves_a_running_job_with_a_live_lease_alone(database, settings, make_job, fetch):
    job_id = make_job("noop")
    with database.engine.connect() as conn:
        store.claim_job(conn, job_id, worker_id="busy-worker", lease_seconds=30)
    report = sweeper.sweep_once(database, settings)
    assert report.requeued == [] and fetch(job_id)[0].status == JobStatus.RUNNING


@pytest.mark.postgres_only
def test_only_one_sweep_pass_runs_at_a_time(database):
    with db.session_scope(database.sessions) as first, db.session_scope(database.sessions) as second:
        assert store.try_sweep_lock(first) is True
        assert store.try_sweep_lock(second) is False
    with db.session_scope(database.sessions) as third:
        assert store.try_sweep_lock(third) is True  # released at commit


def test_prune_deletes_old_succeeded_jobs_and_keeps_failed_ones(database, make_job, fetch):
    old_ok, new_ok, old_failed = make_job("noop"), make_job("noop"), make_job("noop")
    _finish(database, old_ok, JobStatus.SUCCEEDED, _ago(10 * 86400))
    _finish(database, new_ok, JobStatus.SUCCEEDED, _ago(60))
    _finish(database, old_failed, JobStatus.FAILED, _ago(10 * 86400))
    with db.session_scope(database.sessions) as session:
        deleted = store.prune_jobs(session, statuses=[JobStatus.SUCCEEDED], older_than=_ago(7 * 86400))
    assert deleted == 1
    with database.readers() as session:
        remaining = {job.id for job in session.query(models.Job)}
    assert remaining == {new_ok, old_failed}


def test_quarantine_runs_the_kinds_on_failed_hook(database, settings, make_job, fetch):
    job_id = make_job("test.hooked")
    with database.engine.connect() as conn:
        store.claim_job(conn, job_id, worker_id="dead-worker", lease_seconds=30)
    _age(database, job_id, lease_expires_at=_ago(1))
    report = sweeper.sweep_once(database, settings.model_copy(update={"quarantine_after_lost": 1}))
    assert report.quarantined == [job_id]
    job, history = fetch(job_id)
    assert (job.status, job.error_type) == (JobStatus.FAILED, "jobs.errors.WorkerLost")
    # The run's final attempt is "failed" (the worker died on it), not "lost".
    assert [(a.outcome, a.error_type) for a in history] == [(AttemptOutcome.FAILED, "jobs.errors.WorkerLost")]
    with database.engine.connect() as conn:
        texts = [row.text for row in conn.execute(kinds.notes.select().where(kinds.notes.c.job_id == job_id))]
    assert texts == ["on_failed: worker died 1 times while running this job"]


def _die_on_it(database, job_id, worker_id):
    """A worker claims the job and dies: its lease runs out."""
    with database.engine.connect() as conn:
        assert store.claim_job(conn, job_id, worker_id=worker_id, lease_seconds=30) is not None
    _age(database, job_id, lease_expires_at=_ago(1))


@pytest.mark.brokers  # the job taken back is sent to the broker again
def test_a_job_whose_worker_died_on_its_last_attempt_fails_with_its_final_attempt(database, settings, make_job, fetch):
    job_id = make_job("noop", max_attempts=2)
    _die_on_it(database, job_id, "first-worker")
    assert sweeper.sweep_once(database, settings).requeued == [job_id]
    _die_on_it(database, job_id, "second-worker")
    assert sweeper.sweep_once(database, settings).quarantined == [job_id]
    job, history = fetch(job_id)
    assert (job.status, job.attempts, job.claim_token, job.lease_expires_at) == (JobStatus.FAILED, 2, None, None)
    assert job.error_message == "worker died while running this job and its 2 attempts are spent"
    assert [(a.run, a.number, a.outcome, a.worker_id, a.error_type) for a in history] == [
        (0, 1, AttemptOutcome.LOST, "first-worker", None),
        (0, 2, AttemptOutcome.FAILED, "second-worker", "jobs.errors.WorkerLost"),
    ]


@pytest.mark.brokers  # the job taken back is sent to the broker again
def test_a_replayed_job_quarantined_again_has_one_failed_attempt_in_its_new_run(database, settings, make_job, fetch):
    quarantine = settings.model_copy(update={"quarantine_after_lost": 2})
    job_id = make_job("noop", max_attempts=10)
    for run in (0, 1):
        for death in (1, 2):
            _die_on_it(database, job_id, f"worker-{run}-{death}")
            sweeper.sweep_once(database, quarantine)
        assert fetch(job_id)[0].status == JobStatus.FAILED
        if run == 0:
            with db.session_scope(database.sessions) as session:
                store.replay_job(session, job_id, reason="try again")
    job, history = fetch(job_id)
    assert job.error_message == "worker died 2 times while running this job"
    assert [(a.run, a.outcome) for a in history] == [
        (0, AttemptOutcome.LOST),
        (0, AttemptOutcome.FAILED),
        (1, AttemptOutcome.REPLAYED),
        (1, AttemptOutcome.LOST),
        (1, AttemptOutcome.FAILED),
    ]


@pytest.fixture
def held(settings):
    """The sweeper's probe of the test Redis: which messages it still holds."""
    broker = producer.make_broker(settings)
    yield producer.held_probe(broker)
    broker.close()


@pytest.mark.brokers(without=("rabbitmq", "postgres"))  # the held probe is Redis's alone (None elsewhere)
def test_sweep_does_not_resend_a_backlog_whose_messages_the_broker_holds(
    database, settings, make_job, held, queued_messages, flush_redis, fetch
):
    """A backlog older than the re-send cutoff but still in Redis is checked, not sent again (once per
    cutoff at most); after a FLUSHDB the same jobs are all sent again."""
    backlog = [make_job("noop") for _ in range(30)]
    for job_id in backlog:
        _age(database, job_id, enqueued_at=_ago(settings.requeue_after_seconds + 5))
    report = sweeper.sweep_once(database, settings, held=held)
    assert report.ran and report.resent == []
    assert queued_messages() == 30
    assert all(fetch(job_id)[0].resend_checked_at is not None for job_id in backlog)
    # Checked just now: not asked about again on the next pass.
    assert sweeper.sweep_once(database, settings, held=held).resent == []

    flush_redis()  # every message lost
    assert sweeper.sweep_once(database, settings, held=held).resent == []  # checked less than a cutoff ago
    for job_id in backlog:
        _age(database, job_id, resend_checked_at=_ago(settings.requeue_after_seconds + 1))
    resent = sweeper.sweep_once(database, settings, held=held).resent
    assert sorted(resent) == sorted(backlog)
    assert queued_messages() == 30
    for job_id in backlog:
        job = fetch(job_id)[0]
        assert job.message_id is not None and job.resend_checked_at is None
    # The re-sent messages are held under their new keys: not sent a third time.
    for job_id in backlog:
        _age(database, job_id, enqueued_at=_ago(settings.requeue_after_seconds + 5))
    assert sweeper.sweep_once(database, settings, held=held).resent == []


@pytest.mark.brokers(without=("rabbitmq", "postgres"))  # the held probe is Redis's alone (None elsewhere)
def test_sweep_resends_a_held_message_that_waited_too_long(database, settings, make_job, held, queued_messages):
    """A message Redis holds but never delivers (say, stranded with a dead consumer) is sent again
    once its job has waited ``resend_held_after_seconds``."""
    stranded, recent = make_job("noop"), make_job("noop")
    _age(database, stranded, enqueued_at=_ago(settings.resend_held_after_seconds + 5))
    _age(database, recent, enqueued_at=_ago(settings.requeue_after_seconds + 5))
    assert sweeper.sweep_once(database, settings, held=held).resent == [stranded]
    assert queued_messages() == 3


@pytest.mark.brokers(without=("rabbitmq", "postgres"))  # the held probe is Redis's alone (None elsewhere)
def test_sweep_does_not_resend_a_retry_whose_delayed_message_the_broker_holds(
    database, settings, make_job, held, queued_messages, flush_redis, redis_client
):
    """A retry's delayed message is kept under the key its row records: an overdue retry whose
    message Redis still holds is not sent again; once Redis lost it, it is."""
    job_id = make_job("fail")
    with database.engine.connect() as conn:
        job = store.claim_job(conn, job_id, worker_id="worker", lease_seconds=30)
    redis_client.hdel("dramatiq:default.msgs", str(job_id))  # its worker acknowledged the first message
    with db.session_scope(database.sessions) as session:
        store.record_failure(session, job, RuntimeError("flaky"), backoff_seconds=0)
    long_ago = _ago(settings.requeue_after_seconds + 5)
    _age(database, job_id, enqueued_at=long_ago, next_retry_at=long_ago)
    assert sweeper.sweep_once(database, settings, held=held).resent == []
    assert queued_messages("default.DQ") == 1 and queued_messages() == 0
    flush_redis()
    _age(database, job_id, resend_checked_at=long_ago)
    assert sweeper.sweep_once(database, settings, held=held).resent == [job_id]


@pytest.mark.brokers(without=("rabbitmq", "postgres"))  # the held probe is Redis's alone (None elsewhere)
def test_sweep_does_not_resend_a_taken_back_job_whose_message_the_broker_holds(
    database, settings, make_job, held, queued_messages, flush_redis, fetch
):
    """The message a take-back sends is kept under the key its row records: a later pass finds it
    held and sends nothing more."""
    job_id = make_job("noop")
    with database.engine.connect() as conn:
        store.claim_job(conn, job_id, worker_id="dead-worker", lease_seconds=30)
    flush_redis()  # the dead worker's message went with it
    _age(database, job_id, lease_expires_at=_ago(1))
    assert sweeper.sweep_once(database, settings, held=held).requeued == [job_id]
    assert queued_messages() == 1
    _age(database, job_id, enqueued_at=_ago(settings.requeue_after_seconds + 5))
    assert sweeper.sweep_once(database, settings, held=held).resent == []
    assert queued_messages() == 1 and fetch(job_id)[0].resend_checked_at is not None


@pytest.mark.brokers(without=("postgres",))  # the PostgreSQL broker has no message to lose, so re-sends none
def test_sweep_resends_everything_overdue_when_the_broker_cannot_be_asked(database, settings, make_job):
    job_id = make_job("noop")
    _age(database, job_id, enqueued_at=_ago(settings.requeue_after_seconds + 5))

    def failing(messages):
        raise ConnectionError("broker unreachable")

    assert sweeper.sweep_once(database, settings, held=failing).resent == [job_id]
