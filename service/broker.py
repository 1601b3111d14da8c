"""What the API and the workers ask Redis directly: how many messages wait, and which jobs just ended."""

import uuid

from amqp.exceptions import ChannelError
from celery import Celery

# A broker that vanishes without closing its connections (a cut link, a host gone) must not hold a command
# for ever: redis-py waits without a timeout by default, and a POST /jobs sent into a cut link waited until
# TCP gave up (minutes) instead of answering 202 and leaving its job to the reconciler. These bound
# connecting and every command (service.contract's Celery configuration); the workers' consuming BRPOP is
# watched by kombu's own health check instead.
BROKER_CONNECT_SECONDS = 3.0
BROKER_SOCKET_SECONDS = 5.0
# A blocking read of ours waits less than a command may take, or the socket's timeout would cut it short.
JOB_END_WAIT_SECONDS = BROKER_SOCKET_SECONDS / 2


def queue_depths(app: Celery, names: list[str]) -> dict[str, int]:
    """Messages waiting in each queue (every priority level counted). Redis keeps no empty lists,
    so a queue with nothing waiting reads as unknown to the broker: that is 0."""
    depths = {}
    with app.connection_for_read() as connection:
        channel = connection.default_channel
        for name in names:
            try:
                depths[name] = channel.queue_declare(name, passive=True).message_count
            except ChannelError:
                depths[name] = 0
    return depths


# When a job ends its worker leaves a word under this key, so that whoever waits for the job (POST
# /predict) blocks on Redis instead of polling PostgreSQL; the job's row stays the record.
JOB_END_KEY = "grocery:job-ended:{job_id}"
JOB_END_KEPT_SECONDS = 120


def announce_job_finished(app: Celery, job_id: uuid.UUID, status: str) -> None:
    key = JOB_END_KEY.format(job_id=job_id)
    with app.connection_for_write() as connection:
        client = connection.default_channel.client
        client.pipeline().lpush(key, status).expire(key, JOB_END_KEPT_SECONDS).execute()


def await_job_finished(app: Celery, job_id: uuid.UUID, timeout: float) -> str | None:
    """The status the job ended with, once its worker says so; None if it did not within ``timeout``
    (at most JOB_END_WAIT_SECONDS)."""
    key, wait = JOB_END_KEY.format(job_id=job_id), min(timeout, JOB_END_WAIT_SECONDS)
    with app.connection_for_read() as connection:
        reply = connection.default_channel.client.blpop([key], timeout=wait)
    return reply[1].decode() if reply else None
