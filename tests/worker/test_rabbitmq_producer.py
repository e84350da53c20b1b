"""The RabbitMQ sender's contract with Dramatiq: several messages go out in one AMQP transaction,
prepared as ``RabbitmqBroker.enqueue`` prepares them (see worker/rabbitmq.py), and a queue deleted
under a running producer is declared again. Run against the run's vhost on the machine's RabbitMQ."""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import pika
import pytest

from jobs import sending
from jobs.config import Settings
from tests import rabbitmq
from tests.rabbitmq import RabbitVhost
from tests.worker.processes import wait_until
from worker import producer

pytestmark = [
    pytest.mark.parametrize("broker_url", ["rabbitmq"], indirect=True),
    pytest.mark.skipif(
        os.environ.get("JOBRUNNER_TEST_DATABASE") == "sqlite", reason="RabbitMQ runs on the PostgreSQL pass only"
    ),
]

QUEUES = ["default", "default.DQ", "files", "files.DQ"]


def _messages() -> list[sending.JobMessage]:
    return [
        sending.JobMessage(uuid.uuid4(), "default"),
        sending.JobMessage(uuid.uuid4(), "default"),
        sending.JobMessage(uuid.uuid4(), "files"),
        sending.JobMessage(uuid.uuid4(), "default", delay_ms=60_000),
    ]


def _take_all(vhost: RabbitVhost) -> dict[str, Any]:
    """Every message in the queues, taken off them, reduced to what does not vary between sends."""
    connection = pika.BlockingConnection(pika.URLParameters(vhost.url))
    channel = connection.channel()
    shape: dict[str, Any] = {}
    try:
        for queue in QUEUES:
            bodies = []
            while (got := channel.basic_get(queue, auto_ack=True))[0] is not None:
                method, properties, body = got
                message = json.loads(body)
                bodies.append(
                    (
                        message["queue_name"],
                        message["actor_name"],
                        tuple(message["args"]),
                        "eta" in message["options"],
                        properties.delivery_mode,
                    )
                )
            shape[queue] = sorted(bodies)
    finally:
        connection.close()
    return shape


def test_a_transaction_leaves_rabbitmq_as_one_enqueue_per_message_does(settings: Settings, rabbitmq_vhost, database):
    messages = _messages()
    broker = producer.make_broker(settings)
    try:
        for message in messages:  # Dramatiq's public API, one confirmed publish each
            broker.enqueue(producer.to_message(message), delay=message.delay_ms)
        expected = _take_all(rabbitmq_vhost)
        producer.make_sender(broker)(messages)  # one transaction
        batched = _take_all(rabbitmq_vhost)
    finally:
        broker.close()
    assert {args[0] for bodies in batched.values() for (_, _, args, _, _) in bodies} == {
        str(m.job_id) for m in messages
    }
    assert batched == expected
    assert batched["default.DQ"] and batched["default.DQ"][0][3], "the delayed message went to the delay queue"


def test_a_batch_sent_after_its_queue_was_deleted_still_arrives(settings: Settings, rabbitmq_vhost, database):
    broker = producer.make_broker(settings)
    send = producer.make_sender(broker)
    try:
        send(_messages()[:2])  # the broker declares the queue once, then trusts it is there
        _take_all(rabbitmq_vhost)
        connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_vhost.url))
        connection.channel().queue_delete("default")
        connection.close()
        send(_messages()[:2])  # returned unroutable, then declared again and sent by Dramatiq's enqueue
        assert rabbitmq_vhost.count("default") == 2
    finally:
        broker.close()


def test_a_sender_idle_past_its_heartbeat_sends_on_a_new_connection(settings: Settings, rabbitmq_vhost, database):
    # pika answers heartbeats only while its thread uses the connection; an API thread that sent
    # nothing for a while finds it closed by RabbitMQ ("missed heartbeats from client").
    idle = settings.model_copy(update={"broker_url": f"{settings.broker_url}?heartbeat=1"})
    broker = producer.make_broker(idle)
    send = producer.make_sender(broker)
    try:
        send(_messages()[:1])
        first = broker.connection
        # The server lists the sender's connection (heartbeat timeout 1 s) until it closes it.
        wait_until(lambda: "1" not in _heartbeats(rabbitmq_vhost), timeout=60, what="RabbitMQ to close it")
        send(_messages()[:1])
        send(_messages()[:2])
        assert rabbitmq_vhost.count("default") == 4
        assert broker.connection is not first and first.is_closed
    finally:
        broker.close()


def _heartbeats(vhost: RabbitVhost) -> list[str]:
    """The heartbeat timeout of each of the vhost's connections but the test's own (60 s)."""
    listed = rabbitmq.rabbitmqctl("list_connections", "-p", vhost.name, "--no-table-headers", "timeout")
    return [timeout for timeout in listed.split() if timeout != "60"]
