"""The actors: thin. A message carries only a job ID; the session middleware has claimed the job
and opened its session before the actor runs, and finishes it after."""

from __future__ import annotations

import dramatiq

from worker import middleware, producer


def run_job(job_id: str) -> None:
    """Run the job the middleware claimed for this message (``job_id`` is the message's argument)."""
    middleware.run_current_job()


def declare_actors(broker: dramatiq.Broker, queues: set[str]) -> None:
    """Declare one actor per queue on ``broker``, so a worker consumes each of them."""
    for queue in sorted(queues):
        dramatiq.actor(broker=broker, actor_name=producer.actor_name(queue), queue_name=queue)(run_job)
