"""What the API and the workers ask Redis directly: how many messages wait, and which jobs just ended."""

import uuid

from amqp.exceptions import ChannelError
from celery import Celery


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
    """The status the job ended with, once its worker says so; None if it did not within ``timeout``."""
    with app.connection_for_read() as connection:
        reply = connection.default_channel.client.blpop([JOB_END_KEY.format(job_id=job_id)], timeout=timeout)
    return reply[1].decode() if reply else None
