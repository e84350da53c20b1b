"""Reading a /metrics answer, and what the database says it should hold."""

from __future__ import annotations

from collections import Counter
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from jobs import db, models
from jobs.observe.models import WORKER_LOST_TYPE


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape: (name, sorted labels) -> value."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def by_name(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> dict[Any, float]:
    """The samples of one metric, by their labels (as a dict's items, a tuple)."""
    return {labels: value for (sample, labels), value in samples.items() if sample == name}


def expected_counters(database: db.Database) -> dict[str, Counter[tuple[str, ...]]]:
    """The counters, computed from ``job_attempts`` (whole-table reads: the test's own small table)."""
    with database.sessions() as session:
        rows = session.execute(
            select(models.Job.kind, models.JobAttempt.outcome, models.JobAttempt.error_type).join(
                models.Job, models.Job.id == models.JobAttempt.job_id
            )
        ).all()
    attempts: Counter[tuple[str, ...]] = Counter()
    finished: Counter[tuple[str, ...]] = Counter()
    per_kind: dict[str, Counter[tuple[str, ...]]] = {
        "retries": Counter(),
        "lost": Counter(),
        "quarantined": Counter(),
        "replayed": Counter(),
    }
    for kind, outcome, error_type in rows:
        attempts[(kind, outcome)] += 1
        if outcome in ("succeeded", "failed", "cancelled"):
            finished[(kind, outcome)] += 1
        per_kind["retries"][(kind,)] += outcome == "error"
        per_kind["replayed"][(kind,)] += outcome == "replayed"
        died = outcome == "lost" or (outcome == "failed" and error_type == WORKER_LOST_TYPE)
        per_kind["lost"][(kind,)] += died
        per_kind["quarantined"][(kind,)] += died and outcome == "failed"
    return {"attempts": attempts, "finished": finished, **per_kind}


def scraped_counters(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float],
) -> dict[str, Counter[tuple[str, ...]]]:
    """The same counters as :func:`expected_counters`, from a scrape (zero samples left out)."""
    names = {
        "attempts": ("jobrunner_attempts_total", ("kind", "outcome")),
        "finished": ("jobrunner_jobs_finished_total", ("kind", "outcome")),
        "retries": ("jobrunner_retries_total", ("kind",)),
        "lost": ("jobrunner_workers_lost_total", ("kind",)),
        "quarantined": ("jobrunner_jobs_quarantined_total", ("kind",)),
        "replayed": ("jobrunner_jobs_replayed_total", ("kind",)),
    }
    result = {}
    for key, (name, label_names) in names.items():
        counts: Counter[tuple[str, ...]] = Counter()
        for labels, value in by_name(samples, name).items():
            if value:
                found = dict(labels)
                counts[tuple(found[label] for label in label_names)] = int(value)
        result[key] = counts
    return result


def nonzero(counters: dict[str, Counter[tuple[str, ...]]]) -> dict[str, Counter[tuple[str, ...]]]:
    return {key: Counter({k: v for k, v in counts.items() if v}) for key, counts in counters.items()}
