"""Every change of a job's state, in one place.

Functions take the session (or, on the worker's hot path, a Connection) first and keyword arguments
after; they flush or execute but never commit, so several can share a transaction. Statements on the
hot path (claim, complete, fail, renew) are Core statements built once at import: SQLAlchemy caches
their compiled form, and on PostgreSQL the claim and the success run as precompiled SQL straight on
the driver's cursor, so a job costs a few statement executions, not ORM unit-of-work work.

Every update of a running job is *fenced*: it applies only while the row still carries the claim
token this worker got, so a worker that lost its claim can change nothing.

The modules: ``creating`` (delayed and unique jobs too), ``running`` (a job's attempt from claim to
outcome), ``recovery`` (the sweeper's work and pruning), ``delaying`` (delayed jobs whose message
was lost), ``replaying``, ``cancelling``, ``queues`` (pauses, limits), ``reading``, ``clock`` (the
database's time), ``taking`` (the jobs table as the PostgreSQL broker's queue). Callers use this
package: ``store.claim_job(...)``.
"""

from jobs.store.base import utcnow
from jobs.store.cancelling import (
    Cancellation,
    asked_to_stop,
    cancel,
    cancel_job,
    cancel_jobs,
    record_cancellation,
    request_stop,
    select_cancellable_jobs,
)
from jobs.store.creating import create_job, create_jobs, create_or_find_job, insert_job
from jobs.store.delaying import release_overdue_scheduled
from jobs.store.nudging import retry_jobs_now
from jobs.store.queues import (
    QueueInfo,
    list_queues,
    pause_queue,
    resume_queue,
    wake_waiting_jobs,
)
from jobs.store.reading import (
    count_jobs,
    get_job,
    list_attempts,
    list_jobs,
    missing_jobs,
    oldest_queued_at,
    select_failed_jobs,
)
from jobs.store.recovery import (
    ALIVE_MESSAGE,
    CLAIM_LOST_TYPE,
    SWEEP_LOCK_KEY,
    extend_expired_leases,
    prune_jobs,
    record_worker_alive,
    recover_lost_jobs,
    resend_overdue_jobs,
    try_sweep_lock,
)
from jobs.store.replaying import (
    replay_job,
    replay_jobs,
)
from jobs.store.running import (
    MAX_ERROR_CHARS,
    MAX_RETRY_DELAY_SECONDS,
    checkpoint,
    claim_job,
    complete_job,
    describe_error,
    describe_unclaimable,
    interrupt_job,
    record_failure,
    renew_claim,
    renew_leases,
    retry_delay_seconds,
)
from jobs.store.taking import (
    count_unfinished,
    next_due_at,
    notify_waiting,
    release_jobs,
    take_and_claim_jobs,
    take_jobs,
    unclaim_jobs,
)

__all__ = [
    "Cancellation",
    "QueueInfo",
    "list_queues",
    "pause_queue",
    "resume_queue",
    "wake_waiting_jobs",
    "asked_to_stop",
    "cancel",
    "cancel_job",
    "record_cancellation",
    "request_stop",
    "select_cancellable_jobs",
    "ALIVE_MESSAGE",
    "CLAIM_LOST_TYPE",
    "MAX_ERROR_CHARS",
    "MAX_RETRY_DELAY_SECONDS",
    "SWEEP_LOCK_KEY",
    "cancel_jobs",
    "count_unfinished",
    "next_due_at",
    "notify_waiting",
    "release_jobs",
    "take_and_claim_jobs",
    "take_jobs",
    "unclaim_jobs",
    "checkpoint",
    "claim_job",
    "complete_job",
    "count_jobs",
    "create_job",
    "create_jobs",
    "create_or_find_job",
    "insert_job",
    "describe_error",
    "describe_unclaimable",
    "get_job",
    "interrupt_job",
    "list_attempts",
    "list_jobs",
    "missing_jobs",
    "oldest_queued_at",
    "prune_jobs",
    "extend_expired_leases",
    "record_worker_alive",
    "record_failure",
    "recover_lost_jobs",
    "release_overdue_scheduled",
    "renew_claim",
    "renew_leases",
    "replay_job",
    "replay_jobs",
    "resend_overdue_jobs",
    "retry_jobs_now",
    "retry_delay_seconds",
    "select_failed_jobs",
    "try_sweep_lock",
    "utcnow",
]
