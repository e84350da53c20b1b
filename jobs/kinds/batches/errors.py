"""Errors of the batches feature."""

from __future__ import annotations

from jobs.errors import Conflict, Invalid, JobError, NotFound


class UnknownOperation(Invalid):
    """No batch operation is registered under that name."""


class InvalidBatch(Invalid):
    """The batch request does not name records it can run over (an unknown file or record IDs)."""


class FileNotProcessed(Conflict):
    """The file is not processed yet: a batch needs all of its records."""


class BatchNotFound(NotFound):
    """No batch has that ID."""


class BatchNotCancellable(Conflict):
    """The batch has finished already."""


class RecordRejected(JobError):
    """A batch operation refused a record; ``problems`` lists why."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems) or None)
        self.problems = list(problems)
