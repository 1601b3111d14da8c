"""Database models (SQLAlchemy 2.0). Tables come from migrations/, never create_all outside tests."""

import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, query_expression

from service.kinds import JOB_TYPES
from service.states import FINISHED_STATUSES, DeliveryStatus, Lane, Priority, Status, one_of


class Base(DeclarativeBase):
    type_annotation_map = {dict: JSONB, list: JSONB, datetime: DateTime(timezone=True)}


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(one_of("type", JOB_TYPES), name="jobs_type_valid"),
        CheckConstraint(one_of("status", Status), name="jobs_status_valid"),
        CheckConstraint(one_of("lane", Lane), name="jobs_lane_valid"),
        CheckConstraint(one_of("priority", Priority), name="jobs_priority_valid"),
        Index(
            "jobs_interactive_queued",
            "created_at",
            postgresql_where=text(f"lane = '{Lane.INTERACTIVE}' AND status = '{Status.QUEUED}'"),
        ),
        # Keyset pagination, newest first, optionally filtered by type and status.
        Index("jobs_created_at_id", "created_at", "id"),
        Index("jobs_type_status_created_at", "type", "status", "created_at"),
        Index("jobs_status_enqueued_at", "status", "enqueued_at"),
        # Recent starts per queue (service/ops.recent_waits): why a job waits, at every submission.
        Index("jobs_started_at", "started_at"),
        Index("jobs_owner_token_id_status", "owner_token_id", "status"),
        Index("jobs_parent_id", "parent_id"),
        # An Idempotency-Key names a job of its owner only; NULL (authentication off) is one owner.
        Index(
            "jobs_owner_token_id_idempotency_key",
            "owner_token_id",
            "idempotency_key",
            unique=True,
            postgresql_nulls_not_distinct=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    type: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default=Status.QUEUED)
    params: Mapped[dict] = mapped_column(default=dict)
    # params as lists show them (crud.list_jobs fills it in SQL, a long manifest cut short); else None.
    shown_params: Mapped[dict | None] = query_expression()
    model_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("models.id", use_alter=True, name="jobs_model_id_fkey")
    )
    progress_done: Mapped[int] = mapped_column(default=0)
    progress_total: Mapped[int | None]
    progress_unit: Mapped[str] = mapped_column(String(16))
    # Progress within the unit, as the job's kind reports it: a training's batches of its epoch.
    progress_detail: Mapped[dict | None]
    attempts: Mapped[int] = mapped_column(default=0)
    worker: Mapped[str | None] = mapped_column(String(255))
    device: Mapped[str | None] = mapped_column(String(64))
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict | None]
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # The worker lives (its presence thread reports while it holds the job) / the task advances.
    heartbeat_at: Mapped[datetime | None]
    progress_at: Mapped[datetime | None]
    # Prediction jobs: how many shards the listing made; NULL while it is still listing.
    shards_total: Mapped[int | None]
    # When a message for it was last sent: the reconciler re-sends what the broker lost.
    enqueued_at: Mapped[datetime] = mapped_column(server_default=func.now())
    # Attempts whose worker stopped reporting (crashed, killed, frozen): past the limit the job fails.
    lost_attempts: Mapped[int] = mapped_column(server_default="0")
    # The API token that submitted it (NULL with authentication off): only it, or an ops token, sees the job.
    owner_token_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("api_tokens.id"), index=True)
    # The files its request named up front (a manifest's, an upload's): the quota counts them until listed.
    files_named: Mapped[int] = mapped_column(BigInteger, server_default="0")
    lane: Mapped[str] = mapped_column(String(16), server_default=Lane.BULK)
    priority: Mapped[str] = mapped_column(String(16), server_default=Priority.NORMAL)
    # Its webhook (specs.Notify): {"url", "events"}; NULL: none.
    notify: Mapped[dict | None]
    # A chain (service/chains.py): the job whose end made this one, and what a job makes when it ends.
    parent_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL", name="jobs_parent_id_fkey")
    )
    next_steps: Mapped[dict | None]  # specs.NextSteps


class JobShard(Base):
    """About a thousand files of one prediction job: the unit a worker claims, retries and reports on."""

    __tablename__ = "job_shards"
    __table_args__ = (
        CheckConstraint(one_of("status", Status), name="job_shards_status_valid"),
        UniqueConstraint("job_id", "number", name="job_shards_job_id_number_key"),
        Index("job_shards_status_heartbeat_at", "status", "heartbeat_at"),
        Index("job_shards_started_at", "started_at"),
        Index("job_shards_status_job_id", "status", "job_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    number: Mapped[int]
    status: Mapped[str] = mapped_column(String(16), default=Status.QUEUED)
    paths: Mapped[list] = mapped_column()
    total: Mapped[int]
    done: Mapped[int] = mapped_column(default=0)
    failed: Mapped[int] = mapped_column(default=0)
    labels: Mapped[dict] = mapped_column(default=dict)
    attempts: Mapped[int] = mapped_column(default=0)
    worker: Mapped[str | None] = mapped_column(String(255))
    device: Mapped[str | None] = mapped_column(String(64))
    runtime: Mapped[str | None] = mapped_column(String(32))  # the inference engine it ran on (grocery.runtimes)
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    enqueued_at: Mapped[datetime] = mapped_column(server_default=func.now())
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    progress_at: Mapped[datetime | None]


class ApiToken(Base):
    """An API token: only its SHA-256 is stored; the token itself is shown once, when created."""

    __tablename__ = "api_tokens"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(128))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    revoked_at: Mapped[datetime | None]
    # The folders its folder and manifest jobs may read (inside the service's roots); NULL: the service's.
    roots: Mapped[list | None] = mapped_column()
    # Its own quotas (NULL: GROCERY_TOKEN_MAX_ACTIVE_JOBS / _FILES).
    max_active_jobs: Mapped[int | None]
    max_active_files: Mapped[int | None] = mapped_column(BigInteger)
    # What signs the webhook deliveries of its jobs (HMAC-SHA256): kept as it is, since signing needs it.
    webhook_secret: Mapped[str] = mapped_column(String(128))


class Worker(Base):
    """A worker process, as it last reported itself: GET /workers and the metrics read this."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)  # the Celery node name, e.g. gpu0@host
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int]
    device: Mapped[str] = mapped_column(String(64))
    queues: Mapped[list] = mapped_column()
    status: Mapped[str] = mapped_column(String(16))  # online | stopping | offline
    job_id: Mapped[uuid.UUID | None]
    shard_id: Mapped[int | None] = mapped_column(BigInteger)
    started_at: Mapped[datetime] = mapped_column(server_default=func.now())
    heartbeat_at: Mapped[datetime] = mapped_column(server_default=func.now())


class JobEvent(Base):
    __tablename__ = "job_events"
    __table_args__ = (Index("job_events_job_id_id", "job_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(server_default=func.now())
    kind: Mapped[str] = mapped_column(String(32))
    data: Mapped[dict] = mapped_column(default=dict)


class Model(Base):
    __tablename__ = "models"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    version: Mapped[int] = mapped_column(Integer, Identity(), unique=True)
    arch: Mapped[str] = mapped_column(String(64))
    label_level: Mapped[str] = mapped_column(String(16))
    class_names: Mapped[list] = mapped_column()
    metrics: Mapped[dict] = mapped_column(default=dict)
    artifact_path: Mapped[str] = mapped_column(Text)
    # What serving needs: its exports and their checks, and the runtime each machine chose for it.
    serving: Mapped[dict] = mapped_column(default=dict, server_default=text("'{}'::jsonb"))
    # Where it comes from, for its model card: data, code, settings, machine and minutes (grocery.lineage).
    lineage: Mapped[dict] = mapped_column(default=dict, server_default=text("'{}'::jsonb"))
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class ModelAlias(Base):
    __tablename__ = "model_aliases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("models.id"))
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())


class PredictionRow(Base):
    __tablename__ = "predictions"
    __table_args__ = (
        UniqueConstraint("job_id", "path", name="predictions_job_id_path_key"),
        Index("predictions_job_id_id", "job_id", "id"),  # results pages and exports, in insertion order
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(Text)
    label: Mapped[str | None] = mapped_column(String(128))
    class_id: Mapped[int | None]
    confidence: Mapped[float | None] = mapped_column(Float)
    top5: Mapped[list | None]
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    # An evaluation's: the file's label as its labelled set names it (None: a prediction, or unlabelled).
    true_label: Mapped[str | None] = mapped_column(String(128))


class Delivery(Base):
    """A webhook notification of one end of one job: written in the transaction that commits the end
    (an outbox), so a committed end always has it; then POSTed by the workers (worker/deliveries.py)
    until delivered or given up. Its id goes with every attempt: receivers deduplicate by it."""

    __tablename__ = "deliveries"
    __table_args__ = (
        CheckConstraint(one_of("status", DeliveryStatus), name="deliveries_status_valid"),
        CheckConstraint(one_of("event", FINISHED_STATUSES), name="deliveries_event_valid"),
        UniqueConstraint("job_id", "event", name="deliveries_job_id_event_key"),
        Index("deliveries_due", "next_attempt_at", postgresql_where=text(f"status = '{DeliveryStatus.PENDING}'")),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), server_default=DeliveryStatus.PENDING)
    attempts: Mapped[int] = mapped_column(server_default="0")
    # When it is next due; while an attempt runs, when that attempt's lease ends.
    next_attempt_at: Mapped[datetime] = mapped_column(server_default=func.now())
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    finished_at: Mapped[datetime | None]  # delivered, or given up
    last_error: Mapped[str | None] = mapped_column(Text)
    # One entry per attempt: number, at, outcome, status_code, error, seconds.
    log: Mapped[list] = mapped_column(server_default=text("'[]'::jsonb"))
