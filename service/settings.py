"""One settings object, read from the environment (every variable is in docs/configuration.md and .env.example).

Each field names its environment variable once (``setting(...)``); ``Settings.from_env`` and its
inverse ``Settings.to_env`` are both derived from those declarations, so they cannot drift apart."""

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

from service.retry import RetryPolicy

DEFAULT_DATA_DIR = "../shared/grocery-store-dataset"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class Codec(NamedTuple):
    """How a setting's value reads from, and writes to, the text of its environment variable."""

    parse: Callable[[str, str], Any]  # (variable name, text) -> value; the name is for error messages
    format: Callable[[Any], str]


def _one_of(*choices: str) -> Callable[[str, str], str]:
    def parse(name: str, value: str) -> str:
        if value not in choices:
            raise ValueError(f"{name} must be {' or '.join(map(repr, choices))}, not {value!r}")
        return value

    return parse


def _duration(name: str, value: str) -> float | None:
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
    return _one_of("on", "off")(name, value) == "on"


def _location(name: str, value: str) -> Path | str:
    """A folder, resolved, or an object prefix (s3://bucket/prefix/, kept as given)."""
    return value if value.startswith("s3://") else Path(value).resolve()


def _paths(name: str, value: str) -> tuple[Path | str, ...]:
    """Colon-separated folders and object prefixes, each read as _location reads one."""
    return tuple(_location(name, p) for p in re.split(r":(?!//)", value) if p)


def _hosts(name: str, value: str) -> tuple[str, ...]:
    """GROCERY_ALLOWED_HOSTS, comma-separated, compared lower-case."""
    return tuple(h.strip().lower() for h in value.split(",") if h.strip())


def _networks(name: str, value: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Comma-separated addresses or networks (127.0.0.1, 10.0.0.0/8, ::1)."""
    try:
        return tuple(ipaddress.ip_network(n.strip(), strict=False) for n in value.split(",") if n.strip())
    except ValueError as e:
        raise ValueError(f"{name} must be comma-separated addresses or networks such as 10.0.0.0/8: {e}") from None


def _bounded_duration(name: str, value: str) -> float:
    """A duration (_duration's) that must be given: no "for ever"."""
    seconds = _duration(name, value)
    if seconds is None:
        raise ValueError(f"{name} must be a duration such as 1d, 12h or 90s")
    return seconds


def _bind_hosts(bind_host: str) -> tuple[str, ...]:
    """GROCERY_ALLOWED_HOSTS's default: the bind host (a loopback one also answers to the other
    loopback names; a wildcard bind, 0.0.0.0 or ::, to any Host: say which in a deployment)."""
    if bind_host in ("", "0.0.0.0", "::", "[::]"):
        return ("*",)
    if bind_host in LOOPBACK_HOSTS:
        return LOOPBACK_HOSTS
    return (bind_host.lower(),)


# Plain fields read by their type; the others name their codec in their declaration.
TEXT = Codec(lambda name, value: value, str)
INTEGER = Codec(lambda name, value: int(value), str)
NUMBER = Codec(lambda name, value: float(value), str)
PATH = Codec(lambda name, value: Path(value).resolve(), str)
SWITCH = Codec(_switch, lambda on: "on" if on else "off")
CODECS_BY_TYPE = {str: TEXT, int: INTEGER, float: NUMBER, Path: PATH, bool: SWITCH}
AUTH = Codec(_one_of("required", "off"), str)
LOCATION = Codec(_location, str)
PATHS = Codec(_paths, lambda paths: ":".join(map(str, paths)))
HOSTS = Codec(_hosts, ",".join)
DURATION = Codec(_duration, lambda seconds: "" if seconds is None else f"{seconds}s")
BOUNDED_DURATION = Codec(_bounded_duration, lambda seconds: f"{seconds}s")
NETWORKS = Codec(_networks, lambda networks: ",".join(map(str, networks)))


def setting(variable: str, default: Any, codec: Codec | None = None, unset: Callable[[dict], Any] | None = None):
    """A settings field read from ``variable``. ``unset``: for a variable unset or empty, the value
    computed from the fields declared before it (a default that depends on another setting)."""
    return field(default=default, metadata={"env": variable, "codec": codec, "unset": unset})


def _codec(f) -> Codec:
    return f.metadata["codec"] or CODECS_BY_TYPE[f.type]


@dataclass(frozen=True)
class Settings:
    database_url: str = setting("DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/grocery")
    redis_url: str = setting("REDIS_URL", "redis://127.0.0.1:6379/0")
    data_dir: Path = setting("GROCERY_DATA_DIR", Path(DEFAULT_DATA_DIR))
    # Model artifacts: a folder every worker sees, or an object prefix (s3://bucket/models/) that each
    # worker copies a model from once, into artifact_cache, by model id.
    model_dir: Path | str = setting("GROCERY_MODEL_DIR", Path("var/models"), LOCATION)
    artifact_cache: Path = setting("GROCERY_ARTIFACT_CACHE", Path("var/artifact-cache"))
    # Uploaded files, GROCERY_UPLOAD_DIR/<job id>/: a folder every worker sees, or an object prefix.
    upload_dir: Path | str = setting("GROCERY_UPLOAD_DIR", Path("var/uploads"), LOCATION)
    # Finished jobs' results as files (GET /jobs/<id>/results/file), written on first request.
    export_dir: Path = setting("GROCERY_EXPORT_DIR", Path("var/exports"))
    # `make run`'s embedded PostgreSQL and Redis (with DATABASE_URL and REDIS_URL unset): every file of theirs.
    embedded_dir: Path = setting("GROCERY_EMBEDDED_DIR", Path("var/embedded"))
    # From the environment, default the data folder alone. The upload storage is never a root: each job
    # reads its own uploads (service/confinement.py).
    input_roots: tuple[Path | str, ...] = setting(
        "GROCERY_INPUT_ROOTS", (), PATHS, unset=lambda earlier: (earlier["data_dir"],)
    )
    # API tokens: "required" (every route but health and the API document needs a Bearer token) or
    # "off" (anyone who can reach the API may use it: `make run` on loopback).
    auth: str = setting("GROCERY_AUTH", "required", AUTH)
    # The web UI at /ui/ (off: the JSON API alone).
    ui: bool = setting("GROCERY_UI", True)
    host: str = setting("GROCERY_HOST", "127.0.0.1")
    port: int = setting("GROCERY_PORT", 8000)
    # Host headers the API answers (DNS rebinding): "*" for any; default the bind host.
    allowed_hosts: tuple[str, ...] = setting(
        "GROCERY_ALLOWED_HOSTS", LOOPBACK_HOSTS, HOSTS, unset=lambda earlier: _bind_hosts(earlier["host"])
    )
    # Request bodies: uploads (multipart) up to max_upload_bytes, JSON bodies up to max_json_bytes,
    # the web UI's callbacks (which carry its uploads, base64) up to max_ui_bytes.
    max_upload_bytes: int = setting("GROCERY_MAX_UPLOAD_BYTES", 512 * 2**20)
    max_json_bytes: int = setting("GROCERY_MAX_JSON_BYTES", 8 * 2**20)
    max_ui_bytes: int = setting("GROCERY_MAX_UI_BYTES", 96 * 2**20)
    # Files one upload may carry (multipart parts, archive members): each costs the API memory
    # while the request is parsed; bigger sets go by folder.
    max_upload_files: int = setting("GROCERY_MAX_UPLOAD_FILES", 20_000)
    # Bulk prediction: files per shard task, retries of a failing shard, and the share of failed
    # files above which a job ends failed rather than succeeded.
    shard_size: int = setting("GROCERY_SHARD_SIZE", 1000)
    min_shard_size: int = setting("GROCERY_MIN_SHARD_SIZE", 64)
    max_job_shards: int = setting("GROCERY_MAX_JOB_SHARDS", 2000)
    shard_attempts: int = setting("GROCERY_SHARD_ATTEMPTS", 3)
    max_failed_fraction: float = setting("GROCERY_MAX_FAILED_FRACTION", 0.10)
    # Prediction jobs of at most this many files named up front (a manifest, uploads), and POST
    # /predict, are interactive: served ahead of bulk work, between a busy worker's batches.
    interactive_max_files: int = setting("GROCERY_INTERACTIVE_MAX_FILES", 32)
    # Dynamic batching of interactive jobs on one worker: at most this many share a model call, and a
    # free worker waits this long for more to arrive when fewer wait (TorchServe's max_batch_delay).
    interactive_batch_size: int = setting("GROCERY_INTERACTIVE_BATCH_SIZE", 16)
    interactive_batch_delay_ms: float = setting("GROCERY_INTERACTIVE_BATCH_DELAY_MS", 5.0)
    # Per job: most files (uploads, archive members, manifest entries, folder listings) and most
    # bytes (uploads and what an archive expands to).
    max_job_files: int = setting("GROCERY_MAX_JOB_FILES", 1_000_000)
    max_job_bytes: int = setting("GROCERY_MAX_JOB_BYTES", 8 * 2**30)
    # Quotas per API token (a token's own limits, `grocery tokens create --max-active-*`, win):
    # queued plus running jobs, and files of its queued and running prediction jobs; beyond, 429.
    token_max_active_jobs: int = setting("GROCERY_TOKEN_MAX_ACTIVE_JOBS", 100)
    token_max_active_files: int = setting("GROCERY_TOKEN_MAX_ACTIVE_FILES", 2_000_000)
    # Threads one worker process gives prediction (decoding and inference); 0 means every core.
    worker_threads: int = setting("GROCERY_WORKER_THREADS", 0)
    # The inference engine workers serve with: "auto" (the fastest that agrees with fp32, measured
    # per model and machine: grocery.runtimes) or one of its names, e.g. "onnx" or "torch".
    runtime: str = setting("GROCERY_RUNTIME", "auto")
    # Seconds a training job, or one prediction shard, may run. At the soft limit it stops cleanly
    # (a training job keeps its epoch checkpoint); at the hard one its worker process exits.
    train_soft_time_limit: float = setting("GROCERY_TRAIN_SOFT_TIME_LIMIT", 24 * 3600)
    train_time_limit: float = setting("GROCERY_TRAIN_TIME_LIMIT", 24 * 3600 + 600)
    predict_soft_time_limit: float = setting("GROCERY_PREDICT_SOFT_TIME_LIMIT", 1800)
    predict_time_limit: float = setting("GROCERY_PREDICT_TIME_LIMIT", 2100)
    # Recovery: work whose worker has not reported for job_lease_seconds goes back on the queue
    # (a job at most job_attempts times, then it fails); every reconcile_seconds one worker checks,
    # and re-sends queued work the broker has lost.
    job_lease_seconds: float = setting("GROCERY_JOB_LEASE_SECONDS", 120)
    # A task may also go this long without progress (a phase stuck while its worker lives) before it
    # is treated like a lost one; much longer than the lease, since setup and validation report none.
    job_stall_seconds: float = setting("GROCERY_JOB_STALL_SECONDS", 3600)
    job_attempts: int = setting("GROCERY_JOB_ATTEMPTS", 3)
    reconcile_seconds: float = setting("GROCERY_RECONCILE_SECONDS", 15)
    # Finished jobs older than this are deleted with their results and uploads (None: kept); the
    # workshop's one-file POST /predict jobs may have a shorter retention of their own.
    job_retention_seconds: float | None = setting("GROCERY_JOB_RETENTION", None, DURATION)
    predict_retention_seconds: float | None = setting("GROCERY_PREDICT_RETENTION", None, DURATION)
    # Webhooks (a job's "notify"): the hosts its URL may name (none: webhooks are off), and the addresses
    # besides public ones those hosts may resolve to (loopback, link-local and private ones are refused
    # unless a network here holds them: no requests into the deployment's own network).
    webhook_allowed_hosts: tuple[str, ...] = setting("GROCERY_WEBHOOK_ALLOWED_HOSTS", (), HOSTS)
    webhook_allowed_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = setting(
        "GROCERY_WEBHOOK_ALLOWED_NETWORKS", (), NETWORKS
    )
    # What signs the deliveries of jobs submitted without a token (GROCERY_AUTH=off); a token's jobs are
    # signed with that token's own secret.
    webhook_secret: str = setting("GROCERY_WEBHOOK_SECRET", "")
    # One delivery attempt's time; the first retry's delay (doubling, at most an hour); and how long after
    # the job's end a delivery is retried before it is given up.
    webhook_timeout_seconds: float = setting("GROCERY_WEBHOOK_TIMEOUT_SECONDS", 10.0)
    webhook_retry_seconds: float = setting("GROCERY_WEBHOOK_RETRY_SECONDS", 10.0)
    webhook_retry_for_seconds: float = setting("GROCERY_WEBHOOK_RETRY_FOR", 86400.0, BOUNDED_DURATION)

    @property
    def shard_retry(self) -> RetryPolicy:
        """A failing shard's attempts (GROCERY_SHARD_ATTEMPTS), its worker's or the reconciler's."""
        return RetryPolicy(self.shard_attempts)

    @property
    def job_retry(self) -> RetryPolicy:
        """The attempts of a job whose worker is lost (GROCERY_JOB_ATTEMPTS)."""
        return RetryPolicy(self.job_attempts)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            text, unset = env.get(f.metadata["env"]), f.metadata["unset"]
            if unset is not None and not text:
                values[f.name] = unset(values)
            else:
                # An unset variable reads as its default written out: defaults are parsed like any
                # value (paths resolved, GROCERY_AUTH checked).
                codec = _codec(f)
                values[f.name] = codec.parse(f.metadata["env"], codec.format(f.default) if text is None else text)
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The environment variables that give another process these settings (from_env's inverse)."""
        return {f.metadata["env"]: _codec(f).format(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def variables(cls) -> list[str]:
        """Every environment variable a setting reads."""
        return [f.metadata["env"] for f in fields(cls)]
