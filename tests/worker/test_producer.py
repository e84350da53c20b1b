"""The producer's contract with Dramatiq: what the API sends with, and the fenced bypass.

``worker.producer.make_sender`` pipelines several sends into one Redis round trip by running
Dramatiq's own ``RedisBroker.enqueue`` against a stand-in whose ``_dispatch`` Lua script call is
buffered in a pipeline (measured: ``POST /events`` ingest at 1.46x the events/s of one public
``broker.enqueue`` per message). That reaches into ``RedisBroker`` internals, so the dramatiq
version is pinned to the tested minor range and these tests fail loudly when the internals move.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import re
import uuid
from pathlib import Path
from typing import Any

import redis
from dramatiq.brokers.redis import RedisBroker
from packaging.requirements import Requirement

from jobs import sending
from jobs.config import Settings
from worker import producer

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_the_installed_dramatiq_is_in_the_pinned_minor_range():
    spec = next(
        Requirement(line.strip().strip('",'))
        for line in PYPROJECT.read_text().splitlines()
        if re.match(r'\s*"dramatiq\[', line)
    )
    assert spec.specifier, "dramatiq must be pinned to the tested range: the sender uses its internals"
    assert "<" in str(spec.specifier), "dramatiq needs an upper bound"
    assert spec.specifier.contains(importlib.metadata.version("dramatiq"))


def test_the_redis_broker_internals_the_sender_uses_are_there(settings: Settings):
    broker = producer.make_broker(settings)
    try:
        assert callable(getattr(RedisBroker, "_dispatch", None)), "RedisBroker._dispatch is gone"
        assert "dispatch" in broker.scripts, "RedisBroker.scripts['dispatch'] is gone"
        assert "client" in inspect.signature(broker.scripts["dispatch"].__call__).parameters
        # enqueue ends in self.do_enqueue(...), which is what the stand-in buffers.
        assert "do_enqueue" in inspect.getsource(RedisBroker.enqueue)
    finally:
        broker.close()


def test_the_api_broker_carries_no_middleware(settings: Settings):
    broker = producer.make_broker(settings)
    try:
        assert broker.middleware == [] and broker.actors == {}
    finally:
        broker.close()


def _messages() -> list[sending.JobMessage]:
    return [
        sending.JobMessage(uuid.uuid4(), "default"),
        sending.JobMessage(uuid.uuid4(), "default"),
        sending.JobMessage(uuid.uuid4(), "files"),
        sending.JobMessage(uuid.uuid4(), "default", delay_ms=60_000),
    ]


def _snapshot(client: redis.Redis) -> dict[str, Any]:
    """Every key Dramatiq wrote, with message bodies reduced to what does not vary between sends."""
    shape: dict[str, Any] = {}
    for key in sorted(k.decode() for k in client.keys("dramatiq:*")):
        kind = client.type(key).decode()
        if kind == "hash":
            bodies = [json.loads(value) for value in client.hvals(key)]
            shape[key] = sorted(
                (b["queue_name"], b["actor_name"], tuple(b["args"]), "eta" in b["options"]) for b in bodies
            )
        elif kind == "list":
            shape[key] = client.llen(key)
        elif kind == "zset":
            shape[key] = client.zcard(key)
        else:
            shape[key] = kind
    return shape


def test_a_pipelined_send_leaves_redis_as_one_enqueue_per_message_does(settings, redis_client, flush_redis):
    messages = _messages()
    broker = producer.make_broker(settings)
    try:
        flush_redis()
        for message in messages:  # Dramatiq's public API, one round trip each
            broker.enqueue(producer.to_message(message), delay=message.delay_ms)
        expected = _snapshot(redis_client)
        flush_redis()
        producer.make_sender(broker)(messages)  # one pipeline
        pipelined = _snapshot(redis_client)
    finally:
        broker.close()
    job_ids = {str(m.job_id) for m in messages}
    sent = {arg for key, value in pipelined.items() if key.endswith(".msgs") for (_, _, (arg,), _) in value}
    assert sent == job_ids
    assert pipelined == expected
    assert any(key.endswith(".DQ.msgs") for key in pipelined), "the delayed message went to the delay queue"
