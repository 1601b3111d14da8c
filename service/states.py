"""The words every job and shard shares: its status, its lane and its priority; and a worker's status.
The database's check constraints (service/tables.py) and every comparison in the service are derived
from these enums.

Each is a ``StrEnum``: a member is its value (``Status.QUEUED == "queued"``), so rows, JSON and
query strings hold the plain word."""

from enum import StrEnum


class Status(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED_STATUSES


LIVE_STATUSES = (Status.QUEUED, Status.RUNNING)
FINISHED_STATUSES = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)


class Lane(StrEnum):
    """Interactive work (POST /predict, small prediction jobs) goes ahead of bulk work on every worker."""

    INTERACTIVE = "interactive"
    BULK = "bulk"


class Priority(StrEnum):
    """A job's share of the fleet, highest first; HIGH is for ops tokens."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


def one_of(column: str, values: type[StrEnum] | tuple) -> str:
    """A check constraint's text: the column holds one of the values (as the migrations spell it)."""
    return f"{column} IN ({', '.join(repr(str(v)) for v in values)})"


class WorkerStatus(StrEnum):
    """A worker process as it last reported itself (GET /workers)."""

    ONLINE = "online"
    STOPPING = "stopping"  # a warm shutdown: its running work is handed back
    OFFLINE = "offline"


class DeliveryStatus(StrEnum):
    """A webhook notification of a job's end (service/deliveries.py): tried until delivered, or until
    its retries run out (or the URL is refused at delivery time)."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
