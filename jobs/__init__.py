"""jobrunner: background jobs for FastAPI services, one isolated database session per job.

The library surface, stable and documented; every other module is private by convention::

    import jobs

    settings = jobs.Settings()                      # JOBRUNNER_* from the environment
    registry = jobs.load_registry(settings)         # the shipped kinds and JOBRUNNER_JOB_MODULES'
    jobs.install(SessionLocal, registry=registry, sender=sender)   # your (async_)sessionmaker

    @jobs.job_kind("invoice.send", args=SendInvoiceArgs)
    def send_invoice(session: Session, job: jobs.RunningJob) -> None: ...

    @jobs.job_kind("invoice.render")
    async def render_invoice(session: AsyncSession, job: jobs.RunningJob) -> None: ...

    job_id = jobs.enqueue(session, "invoice.send", {"invoice_id": 7})   # sent after the commit

The sender comes from the worker side (``worker.producer``), the in-process test runner from
``worker.testing``; ``jobs`` itself knows no web or queue framework.
"""

from jobs.config import Settings
from jobs.errors import ClaimLost, InvalidJobArgs, JobError, PermanentError, UnknownJobKind
from jobs.kinds import load_registry
from jobs.registry import AsyncHandler, Handler, JobKind, Registry, RunningJob, job_kind
from jobs.sending import JobMessage, Sender
from jobs.sessions import enqueue, install

__all__ = [
    "AsyncHandler",
    "ClaimLost",
    "Handler",
    "InvalidJobArgs",
    "JobError",
    "JobKind",
    "JobMessage",
    "PermanentError",
    "Registry",
    "RunningJob",
    "Sender",
    "Settings",
    "UnknownJobKind",
    "enqueue",
    "install",
    "job_kind",
    "load_registry",
]
