"""For operators: GET /workers, GET /queues and GET /metrics (Prometheus text format)."""

from datetime import datetime, timezone

from flask import Blueprint, Response, jsonify, request
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from sqlalchemy import select

from api.deps import iso
from api.errors import APIError
from api.resources import resources
from grocery import storage
from service import deliveries, ops, webhooks
from service.broker import queue_depths
from service.kinds import JOB_TYPES, QUEUES
from service.states import DeliveryStatus, Status
from service.tables import JobShard, Worker

blueprint = Blueprint("ops", __name__)


def worker_json(worker: Worker, job_of_shard: dict[int, str]) -> dict:
    job_id = str(worker.job_id) if worker.job_id else job_of_shard.get(worker.shard_id)
    return {
        "name": worker.name,
        "hostname": worker.hostname,
        "pid": worker.pid,
        "device": worker.device,
        "queues": worker.queues,
        "status": worker.status,
        "job_id": job_id,
        "shard_id": worker.shard_id,
        "started_at": iso(worker.started_at),
        "heartbeat_at": iso(worker.heartbeat_at),
    }


@blueprint.get("/workers")
def workers():
    include_offline = request.args.get("all", "false").lower() in ("1", "true")
    with resources().sessions() as session:
        rows = ops.list_workers(session, include_offline=include_offline)
        shard_ids = [w.shard_id for w in rows if w.shard_id is not None]
        shard_jobs = session.execute(select(JobShard.id, JobShard.job_id).where(JobShard.id.in_(shard_ids)))
        job_of_shard = {shard_id: str(job_id) for shard_id, job_id in shard_jobs}
        return jsonify({"workers": [worker_json(w, job_of_shard) for w in rows]})


def broker_depths() -> dict[str, int]:
    return queue_depths(resources().celery, list(QUEUES))


@blueprint.get("/queues")
def queues():
    try:
        depths = broker_depths()
    except Exception as e:  # the broker is down or unreachable: say so, as JSON
        # The class only: a broker URL in the message could carry its password.
        raise APIError(503, "broker_unavailable", f"the queue broker does not answer ({type(e).__name__})") from None
    with resources().sessions() as session:
        oldest, waits = ops.oldest_queued(session), ops.recent_waits(session)
    now = datetime.now(timezone.utc)
    return jsonify(
        {
            "queues": [
                {
                    "name": name,
                    "depth": depths[name],
                    "oldest_queued_at": iso(oldest.get(name)),
                    "oldest_age_seconds": round((now - oldest[name]).total_seconds(), 3) if name in oldest else None,
                    # How long work started in the last five minutes waited for a worker.
                    "recent_wait_seconds": waits.get(name),
                }
                for name in QUEUES
            ]
        }
    )


class ServiceCollector:
    """Every metric read fresh from PostgreSQL, the broker and this process's pool at scrape time."""

    def collect(self):
        with resources().sessions() as session:
            yield from job_metrics(session)
            yield from throughput_metrics(session)
            yield from queue_metrics(session)
            yield from growth_metrics(session)
            yield from webhook_metrics(session)
        yield from pool_metrics()


def job_metrics(session):
    jobs = GaugeMetricFamily("grocery_jobs", "Jobs by type and status", labels=["type", "status"])
    counts = {(t, s): n for t, s, n in ops.job_counts(session)}
    for job_type in JOB_TYPES:
        for status in Status:
            jobs.add_metric([job_type, status], counts.get((job_type, status), 0))
    yield jobs
    durations = HistogramMetricFamily(
        "grocery_job_duration_seconds", "Run time of finished jobs, started to finished", labels=["type"]
    )
    measured = ops.job_durations(session)
    for job_type in JOB_TYPES:
        entry = measured.get(job_type, {"count": 0, "sum": 0.0, "buckets": dict.fromkeys(ops.DURATION_BUCKETS, 0)})
        buckets = [(str(float(b)), n) for b, n in entry["buckets"].items()] + [("+Inf", entry["count"])]
        durations.add_metric([job_type], buckets, entry["sum"])
    yield durations


def throughput_metrics(session):
    total, per_second = ops.images_classified(session)
    yield CounterMetricFamily("grocery_images_classified", "Files classified by prediction jobs", value=total)
    yield GaugeMetricFamily(
        "grocery_images_per_second", "Files classified per second over the last minute", value=per_second
    )
    live = ops.list_workers(session)
    workers = GaugeMetricFamily("grocery_workers", "Live workers by queue and state", labels=["queue", "state"])
    for queue in QUEUES:
        on_queue = [w for w in live if queue in w.queues]
        busy = sum(1 for w in on_queue if w.job_id or w.shard_id)
        workers.add_metric([queue, "busy"], busy)
        workers.add_metric([queue, "idle"], len(on_queue) - busy)
    yield workers
    yield GaugeMetricFamily("grocery_workers_live", "Live worker processes", value=len(live))


def queue_metrics(session):
    up = GaugeMetricFamily("grocery_broker_up", "1 when the queue broker answers")
    try:
        depths = broker_depths()
        up.add_metric([], 1)
    except Exception:
        depths = {}
        up.add_metric([], 0)
    yield up
    depth = GaugeMetricFamily("grocery_queue_depth", "Messages waiting on the broker", labels=["queue"])
    for name, count in depths.items():
        depth.add_metric([name], count)
    yield depth
    age = GaugeMetricFamily(
        "grocery_queue_oldest_age_seconds", "Age of the oldest queued job or shard", labels=["queue"]
    )
    now = datetime.now(timezone.utc)
    oldest = ops.oldest_queued(session)
    for name in QUEUES:
        age.add_metric([name], (now - oldest[name]).total_seconds() if name in oldest else 0)
    yield age
    wait = GaugeMetricFamily(
        "grocery_queue_wait_seconds",
        f"How long work started in the last {ops.WAIT_WINDOW_SECONDS}s waited for a worker",
        labels=["queue", "quantile"],
    )
    for name, measured in ops.recent_waits(session).items():
        for quantile in ("p50", "p95"):
            wait.add_metric([name, quantile], measured[quantile])
    yield wait


def growth_metrics(session):
    """What the service keeps, to alert on before the disk fills: bytes in its storage, result rows."""
    settings = resources().settings
    stored = GaugeMetricFamily("grocery_storage_bytes", "Bytes held in the service's storage", labels=["store"])
    for store, folder in (
        ("uploads", settings.upload_dir),
        ("models", settings.model_dir),
        ("exports", settings.export_dir),
    ):
        if not storage.is_url(folder):  # a bucket is metered by its provider, not listed at each scrape
            stored.add_metric([store], ops.folder_bytes(folder))
    yield stored
    yield GaugeMetricFamily(
        "grocery_result_rows", "Rows of the results table (PostgreSQL's estimate)", value=ops.result_rows(session)
    )


def webhook_metrics(session):
    """Jobs' webhooks: every attempt by its outcome, and the deliveries by status."""
    attempts = CounterMetricFamily(
        "grocery_webhook_attempts", "Webhook delivery attempts by outcome (those of kept jobs)", labels=["outcome"]
    )
    counted = deliveries.attempt_counts(session)
    for outcome in webhooks.Outcome:
        attempts.add_metric([outcome], counted.get(outcome, 0))
    yield attempts
    by_status = GaugeMetricFamily("grocery_webhook_deliveries", "Webhook deliveries by status", labels=["status"])
    counted = deliveries.status_counts(session)
    for status in DeliveryStatus:
        by_status.add_metric([status], counted.get(status, 0))
    yield by_status


def pool_metrics():
    pool = resources().sessions.kw["bind"].pool
    connections = GaugeMetricFamily("grocery_db_pool_connections", "This API process's database pool", labels=["state"])
    connections.add_metric(["checked_out"], pool.checkedout())
    connections.add_metric(["idle"], pool.checkedin())
    connections.add_metric(["size"], pool.size())
    yield connections


@blueprint.get("/metrics")
def metrics():
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector())
    return Response(generate_latest(registry), mimetype="text/plain; version=0.0.4")
