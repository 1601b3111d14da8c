"""What the broker holds: the one thing the API and the reconciler ask Redis directly."""

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
