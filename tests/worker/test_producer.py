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

import pytest
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


def test_the_job_broker_enqueues_as_redis_broker_does_but_keyed_by_the_message_id(settings, redis_client, flush_redis):
    """``JobBroker.enqueue`` is Dramatiq's ``RedisBroker.enqueue`` with the Redis key taken from the
    message's ``message_id``: the same keys, bodies, delay queue and eta as Dramatiq writes, and the
    message's key is its ID (what the sweeper's probe asks for)."""
    messages = [*_messages(), sending.JobMessage(uuid.uuid4(), "default", delay_ms=5_000, message_id=uuid.uuid4())]
    job_broker = producer.make_broker(settings)
    dramatiq_broker = RedisBroker(client=redis_client, middleware=[])
    try:
        flush_redis()
        for message in messages:
            dramatiq_broker.enqueue(producer.to_message(message), delay=message.delay_ms)
        expected = _snapshot(redis_client)
        flush_redis()
        sent = [job_broker.enqueue(producer.to_message(m), delay=m.delay_ms) for m in messages]
        assert _snapshot(redis_client) == expected
    finally:
        job_broker.close()
    for message, dramatiq_message in zip(messages, sent, strict=True):
        key = dramatiq_message.options["redis_message_id"]
        assert key == dramatiq_message.message_id
        queue = f"{message.queue}.DQ" if message.delay_ms else message.queue
        body = json.loads(redis_client.hget(f"dramatiq:{queue}.msgs", key))
        assert body["options"]["redis_message_id"] == key  # what the consumer acks with
    assert sent[-1].message_id == str(messages[-1].message_id)


def test_the_held_probe_sees_queued_and_delayed_messages_and_not_lost_ones(settings, redis_client, flush_redis):
    kept, delayed, lost = (
        sending.JobMessage(uuid.uuid4(), "default", message_id=uuid.uuid4()),
        sending.JobMessage(uuid.uuid4(), "files", delay_ms=60_000, message_id=uuid.uuid4()),
        sending.JobMessage(uuid.uuid4(), "default", message_id=uuid.uuid4()),
    )
    first = sending.JobMessage(uuid.uuid4(), "default")  # a job's first message: keyed by the job ID
    broker = producer.make_broker(settings)
    try:
        flush_redis()
        producer.make_sender(broker)(
            [kept, delayed, lost, sending.JobMessage(first.job_id, "default", message_id=first.job_id)]
        )
        redis_client.hdel("dramatiq:default.msgs", str(lost.message_id))
        held = producer.held_probe(broker)
        assert held([kept, delayed, lost, first]) == {kept.job_id, delayed.job_id, first.job_id}
        # Another key for the same job (a message sent since) is not the one held.
        assert held([sending.JobMessage(kept.job_id, "default", message_id=uuid.uuid4())]) == set()
        flush_redis()
        assert held([kept, delayed, first]) == set()
    finally:
        broker.close()


@pytest.mark.brokers(without=("rabbitmq", "postgres"))  # Redis's own keys: the job broker is Redis's
def test_a_message_keyed_by_its_id_is_consumed_and_acknowledged(make_job, worker, drain, redis_client, fetch):
    """The worker's consumer acknowledges by the key the job broker chose: nothing stays behind."""
    job_id = make_job("noop")
    drain()
    assert fetch(job_id)[0].status == "succeeded"
    assert redis_client.hlen("dramatiq:default.msgs") == 0
    assert not any(redis_client.smembers(key) for key in redis_client.keys("dramatiq:__acks__.*"))
