"""The jobs list's filter as it travels in URLs and forms: parsed from query parameters (or form
fields) into a :class:`jobs.store.filtering.JobFilter`, and written back as parameters."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Mapping
from typing import Any

from jobs import errors
from jobs.kinds.batches import service as batches
from jobs.models import JobStatus
from jobs.store.filtering import JobFilter

#: The parameters of a filter, in the order forms show them.
FIELDS = ("status", "kind", "queue", "since", "until", "error_type", "error", "batch")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^(\d+)([smhdw])$")


class BadFilter(errors.Invalid):
    """A filter parameter that cannot be read."""


def parse_time(text: str, *, now: dt.datetime) -> dt.datetime:
    """A duration ago (``30m``, ``2h``, ``3d``, ``1w``) or an ISO time (UTC when it names no zone,
    as a browser's ``datetime-local`` field sends it).

    Raises:
        BadFilter: neither.
    """
    text = text.strip()
    match = _DURATION.match(text)
    if match:
        return now - dt.timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        raise BadFilter(f"not a time: {text!r} (give 30m, 2h, 3d, 1w or an ISO time)") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


def parse_filter(params: Mapping[str, Any], *, now: dt.datetime) -> JobFilter:
    """The filter given by ``params`` (empty values are no filter).

    Raises:
        BadFilter: a value that cannot be read (an unknown status, a bad time or batch ID).
    """
    given = {name: str(params.get(name) or "").strip() for name in FIELDS}
    try:
        status = JobStatus(given["status"]) if given["status"] else None
    except ValueError:
        raise BadFilter(f"no such status: {given['status']!r}") from None
    try:
        batch = uuid.UUID(given["batch"]) if given["batch"] else None
    except ValueError:
        raise BadFilter(f"not a batch ID: {given['batch']!r}") from None
    return JobFilter(
        status=status,
        kind=given["kind"][:100] or None,
        queue=given["queue"][:100] or None,
        since=parse_time(given["since"], now=now) if given["since"] else None,
        until=parse_time(given["until"], now=now) if given["until"] else None,
        error_type=given["error_type"][:200] or None,
        error=given["error"][:500] or None,
        batch=batch,
        among=batches.job_ids_of(batch) if batch is not None else None,
    )


def raw_filter(params: Mapping[str, Any]) -> dict[str, str]:
    """The filter's parameters as given (for the form to show them again and for links), non-empty only."""
    return {name: str(params.get(name)).strip() for name in FIELDS if str(params.get(name) or "").strip()}


def filter_params(job_filter: JobFilter) -> dict[str, str]:
    """``job_filter`` as parameters, its times absolute (what a confirmation carries, so the action
    takes the jobs the count was made for, not those of a later "2h ago")."""
    values = {
        "status": job_filter.status.value if job_filter.status else None,
        "kind": job_filter.kind,
        "queue": job_filter.queue,
        "since": job_filter.since.isoformat() if job_filter.since else None,
        "until": job_filter.until.isoformat() if job_filter.until else None,
        "error_type": job_filter.error_type,
        "error": job_filter.error,
        "batch": str(job_filter.batch) if job_filter.batch else None,
    }
    return {name: value for name, value in values.items() if value}
