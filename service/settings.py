"""One settings object, read from the environment (every variable is in README and .env.example)."""

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_DATA_DIR = "../shared/grocery-store-dataset"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def _paths(value: str) -> tuple[Path, ...]:
    return tuple(Path(p).resolve() for p in value.split(":") if p)


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(name: str, value: str | None) -> float | None:
    """'30d', '12h', '15m', '90s' in seconds; unset or empty: None (kept for ever)."""
    if not value:
        return None
    number, unit = value[:-1], value[-1:]
    try:
        seconds = float(number) * DURATION_UNITS[unit]
    except (KeyError, ValueError):
        raise ValueError(f"{name} must be a duration such as 30d, 12h, 15m or 90s, not {value!r}") from None
    if seconds <= 0:
        raise ValueError(f"{name} must be positive, not {value!r}")
    return seconds


def _switch(name: str, value: str) -> bool:
    if value not in ("on", "off"):
        raise ValueError(f"{name} must be 'on' or 'off', not {value!r}")
    return value == "on"


def _hosts(value: str | None, bind_host: str) -> tuple[str, ...]:
    """GROCERY_ALLOWED_HOSTS, comma-separated; default: the bind host (a loopback one also answers
    to the other loopback names; a wildcard bind, 0.0.0.0 or ::, to any Host: say which in a deployment)."""
    if value:
        return tuple(h.strip().lower() for h in value.split(",") if h.strip())
    if bind_host in ("", "0.0.0.0", "::", "[::]"):
        return ("*",)
    if bind_host in LOOPBACK_HOSTS:
        return LOOPBACK_HOSTS
    return (bind_host.lower(),)


def _auth(value: str) -> str:
    if value not in ("required", "off"):
        raise ValueError(f"GROCERY_AUTH must be 'required' or 'off', not {value!r}")
    return value


@dataclass(frozen=True)
class Settings:
    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/grocery"
    redis_url: str = "redis://127.0.0.1:6379/0"
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    model_dir: Path = Path("var/models")
    upload_dir: Path = Path("var/uploads")
    # Finished jobs' results as files (GET /jobs/<id>/results/file), written on first request.
    export_dir: Path = Path("var/exports")
    input_roots: tuple[Path, ...] = field(default_factory=tuple)
    # API tokens: "required" (every route but health and the API document needs a Bearer token) or
    # "off" (anyone who can reach the API may use it: `make run` on loopback).
    auth: str = "required"
    # The web UI at /ui/ (off: the JSON API alone).
    ui: bool = True
    host: str = "127.0.0.1"
    port: int = 8000
    # Host headers the API answers (DNS rebinding): "*" for any; default the bind host.
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS
    # Request bodies: uploads (multipart) up to max_upload_bytes, JSON bodies up to max_json_bytes,
    # the web UI's callbacks (which carry its uploads, base64) up to max_ui_bytes.
    max_upload_bytes: int = 512 * 2**20
    max_json_bytes: int = 8 * 2**20
    max_ui_bytes: int = 96 * 2**20
    # Files one upload may carry (multipart parts, archive members): each costs the API memory
    # while the request is parsed; bigger sets go by folder.
    max_upload_files: int = 20_000
    # Bulk prediction: files per shard task, retries of a failing shard, and the share of failed
    # files above which a job ends failed rather than succeeded.
    shard_size: int = 1000
    min_shard_size: int = 64
    max_job_shards: int = 2000
    shard_attempts: int = 3
    max_failed_fraction: float = 0.10
    # Prediction jobs of at most this many files named up front (a manifest, uploads), and POST
    # /predict, are interactive: served ahead of bulk work, between a busy worker's batches.
    interactive_max_files: int = 32
    # Per job: most files (uploads, archive members, manifest entries, folder listings) and most
    # bytes (uploads and what an archive expands to).
    max_job_files: int = 1_000_000
    max_job_bytes: int = 8 * 2**30
    # Quotas per API token (a token's own limits, `grocery tokens create --max-active-*`, win):
    # queued plus running jobs, and files of its queued and running prediction jobs; beyond, 429.
    token_max_active_jobs: int = 100
    token_max_active_files: int = 2_000_000
    # Threads one worker process gives prediction (decoding and inference); 0 means every core.
    worker_threads: int = 0
    # The inference engine workers serve with: "auto" (the fastest that agrees with fp32, measured
    # per model and machine: grocery.runtimes) or one of its names, e.g. "onnx" or "torch".
    runtime: str = "auto"
    # Seconds a training job, or one prediction shard, may run. At the soft limit it stops cleanly
    # (a training job keeps its epoch checkpoint); at the hard one its worker process exits.
    train_soft_time_limit: float = 24 * 3600
    train_time_limit: float = 24 * 3600 + 600
    predict_soft_time_limit: float = 1800
    predict_time_limit: float = 2100
    # Recovery: work whose worker has not reported for job_lease_seconds goes back on the queue
    # (a job at most job_attempts times, then it fails); every reconcile_seconds one worker checks,
    # and re-sends queued work the broker has lost.
    job_lease_seconds: float = 120
    # A task may also go this long without progress (a phase stuck while its worker lives) before it
    # is treated like a lost one; much longer than the lease, since setup and validation report none.
    job_stall_seconds: float = 3600
    job_attempts: int = 3
    reconcile_seconds: float = 15
    # Finished jobs older than this are deleted with their results and uploads (None: kept); the
    # workshop's one-file POST /predict jobs may have a shorter retention of their own.
    job_retention_seconds: float | None = None
    predict_retention_seconds: float | None = None

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "Settings":
        env = os.environ if environ is None else environ
        data_dir = Path(env.get("GROCERY_DATA_DIR", DEFAULT_DATA_DIR)).resolve()
        upload_dir = Path(env.get("GROCERY_UPLOAD_DIR", "var/uploads")).resolve()
        roots = env.get("GROCERY_INPUT_ROOTS")
        host = env.get("GROCERY_HOST", cls.host)
        return cls(
            database_url=env.get("DATABASE_URL", cls.database_url),
            redis_url=env.get("REDIS_URL", cls.redis_url),
            data_dir=data_dir,
            model_dir=Path(env.get("GROCERY_MODEL_DIR", "var/models")).resolve(),
            upload_dir=upload_dir,
            export_dir=Path(env.get("GROCERY_EXPORT_DIR", "var/exports")).resolve(),
            # The upload storage is never a root: each job reads its own uploads (service/confinement.py).
            input_roots=_paths(roots) if roots else (data_dir,),
            auth=_auth(env.get("GROCERY_AUTH", cls.auth)),
            ui=_switch("GROCERY_UI", env.get("GROCERY_UI", "on")),
            host=host,
            port=int(env.get("GROCERY_PORT", cls.port)),
            allowed_hosts=_hosts(env.get("GROCERY_ALLOWED_HOSTS"), host),
            max_upload_bytes=int(env.get("GROCERY_MAX_UPLOAD_BYTES", cls.max_upload_bytes)),
            max_json_bytes=int(env.get("GROCERY_MAX_JSON_BYTES", cls.max_json_bytes)),
            max_ui_bytes=int(env.get("GROCERY_MAX_UI_BYTES", cls.max_ui_bytes)),
            max_upload_files=int(env.get("GROCERY_MAX_UPLOAD_FILES", cls.max_upload_files)),
            shard_size=int(env.get("GROCERY_SHARD_SIZE", cls.shard_size)),
            min_shard_size=int(env.get("GROCERY_MIN_SHARD_SIZE", cls.min_shard_size)),
            max_job_shards=int(env.get("GROCERY_MAX_JOB_SHARDS", cls.max_job_shards)),
            shard_attempts=int(env.get("GROCERY_SHARD_ATTEMPTS", cls.shard_attempts)),
            max_failed_fraction=float(env.get("GROCERY_MAX_FAILED_FRACTION", cls.max_failed_fraction)),
            interactive_max_files=int(env.get("GROCERY_INTERACTIVE_MAX_FILES", cls.interactive_max_files)),
            max_job_files=int(env.get("GROCERY_MAX_JOB_FILES", cls.max_job_files)),
            max_job_bytes=int(env.get("GROCERY_MAX_JOB_BYTES", cls.max_job_bytes)),
            token_max_active_jobs=int(env.get("GROCERY_TOKEN_MAX_ACTIVE_JOBS", cls.token_max_active_jobs)),
            token_max_active_files=int(env.get("GROCERY_TOKEN_MAX_ACTIVE_FILES", cls.token_max_active_files)),
            worker_threads=int(env.get("GROCERY_WORKER_THREADS", cls.worker_threads)),
            runtime=env.get("GROCERY_RUNTIME", cls.runtime),
            train_soft_time_limit=float(env.get("GROCERY_TRAIN_SOFT_TIME_LIMIT", cls.train_soft_time_limit)),
            train_time_limit=float(env.get("GROCERY_TRAIN_TIME_LIMIT", cls.train_time_limit)),
            predict_soft_time_limit=float(env.get("GROCERY_PREDICT_SOFT_TIME_LIMIT", cls.predict_soft_time_limit)),
            predict_time_limit=float(env.get("GROCERY_PREDICT_TIME_LIMIT", cls.predict_time_limit)),
            job_lease_seconds=float(env.get("GROCERY_JOB_LEASE_SECONDS", cls.job_lease_seconds)),
            job_stall_seconds=float(env.get("GROCERY_JOB_STALL_SECONDS", cls.job_stall_seconds)),
            job_attempts=int(env.get("GROCERY_JOB_ATTEMPTS", cls.job_attempts)),
            reconcile_seconds=float(env.get("GROCERY_RECONCILE_SECONDS", cls.reconcile_seconds)),
            job_retention_seconds=_duration("GROCERY_JOB_RETENTION", env.get("GROCERY_JOB_RETENTION")),
            predict_retention_seconds=_duration("GROCERY_PREDICT_RETENTION", env.get("GROCERY_PREDICT_RETENTION")),
        )
