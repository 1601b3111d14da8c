"""Fixtures: a tiny generated dataset in the real layout, and a model trained on it."""

import collections
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.db import migrate

ROOT = Path(__file__).resolve().parents[1]
FINISHED = {"succeeded", "failed", "cancelled"}
SHARED_DATASET = Path(
    os.environ.get(
        "GROCERY_TEST_DATASET", Path(__file__).resolve().parents[1].parent / "shared" / "grocery-store-dataset"
    )
)

# (fine name, coarse name, coarse id, colour): the colour makes the class learnable in one epoch.
TINY_CLASSES = [
    ("Red-Apple", "Apple", 0, (200, 30, 30)),
    ("Pink-Apple", "Apple", 0, (230, 120, 150)),
    ("Green-Pear", "Pear", 1, (40, 180, 40)),
    ("Blue-Milk", "Milk", 2, (40, 60, 200)),
]


def write_tiny_dataset(root: Path, per_class: dict[str, int], seed: int = 0) -> Path:
    """A dataset in the Grocery Store layout with noisy solid-colour images."""
    rng = np.random.default_rng(seed)
    rows = [
        "Class Name (str),Class ID (int),Coarse Class Name (str),Coarse Class ID (int),"
        "Iconic Image Path (str),Product Description Path (str)"
    ]
    for fine_id, (fine, coarse, coarse_id, colour) in enumerate(TINY_CLASSES):
        iconic = Path("iconic-images-and-descriptions") / coarse / fine
        (root / iconic).mkdir(parents=True, exist_ok=True)
        _noisy_image(rng, colour, 48).save(root / iconic / f"{fine}_Iconic.jpg")
        (root / iconic / f"{fine}_Description.txt").write_text(f"A {fine.lower()} from the tiny set.")
        rows.append(
            f"{fine},{fine_id},{coarse},{coarse_id},/{iconic}/{fine}_Iconic.jpg,/{iconic}/{fine}_Description.txt"
        )
    (root / "classes.csv").write_text("\n".join(rows) + "\n")
    for split, count in per_class.items():
        lines = []
        for fine_id, (fine, coarse, coarse_id, colour) in enumerate(TINY_CLASSES):
            folder = root / split / coarse / fine
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                relative = f"{split}/{coarse}/{fine}/{fine}_{i:03d}.jpg"
                _noisy_image(rng, colour, int(rng.integers(40, 90))).save(root / relative, quality=90)
                lines.append(f"{relative}, {fine_id}, {coarse_id}")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def _noisy_image(rng: np.random.Generator, colour: tuple[int, int, int], size: int) -> Image.Image:
    pixels = np.clip(np.array(colour) + rng.normal(0, 25, (size, size + 7, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny"), {"train": 12, "val": 4, "test": 3})


@pytest.fixture(scope="session")
def tiny_config(tiny_dataset):
    from grocery.engine import TrainConfig

    def make(**overrides):
        settings = dict(
            data_dir=str(tiny_dataset),
            arch="mobilenet_v3_small",
            weights="none",
            epochs=2,
            batch_size=8,
            learning_rate=3e-3,
            freeze=0,
            input_size=64,
            warmup_epochs=0,
            threads=2,
        )
        return TrainConfig(**{**settings, **overrides})

    return make


@pytest.fixture(scope="session")
def tiny_model(tiny_config, tmp_path_factory) -> Path:
    """A trained artifact with its ONNX export: the pretrained backbone, frozen, at 64 px."""
    from grocery.engine import fit
    from grocery.export import export

    output = tmp_path_factory.mktemp("model")
    config = tiny_config(arch="efficientnet_lite0", weights="imagenet", freeze=9, epochs=3)
    result = fit(config, output)
    assert result.status == "completed"
    export(output, "onnx")
    return output


@pytest.fixture(scope="session")
def shared_dataset() -> Path:
    if not (SHARED_DATASET / "classes.csv").is_file():
        pytest.skip(f"the Grocery Store Dataset is not at {SHARED_DATASET}")
    return SHARED_DATASET


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 API server on loopback (moto's server mode, its own process), and the standard AWS
    variables that point boto3 at it, set for this process and the workers it starts."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            assert time.monotonic() < deadline and server.poll() is None, "the S3 server did not start"
            time.sleep(0.1)
    variables = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "grocery-test",
        "AWS_SECRET_ACCESS_KEY": "grocery-test-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    yield endpoint
    for name, value in saved.items():
        os.environ.pop(name) if value is None else os.environ.__setitem__(name, value)
    server.terminate()
    server.wait(timeout=30)


def new_bucket() -> str:
    """A new, empty bucket on the test S3 server (s3_endpoint): its name."""
    import uuid

    from grocery import storage

    name = f"grocery-{uuid.uuid4().hex[:12]}"
    storage.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def bucket(s3_endpoint) -> str:
    return new_bucket()


@pytest.fixture(scope="session")
def embedded_servers(tmp_path_factory):
    """The same embedded PostgreSQL and Redis as `make run`, started only when asked for."""
    from service.embedded import start_embedded

    servers = start_embedded(tmp_path_factory.mktemp("embedded"), database="test")
    yield servers
    servers.stop()


@pytest.fixture(scope="session")
def postgres_admin_url(request) -> str:
    """A PostgreSQL server the tests may create databases on: GROCERY_TEST_POSTGRES_URL, the local
    server, or where none answers, an embedded one."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    url = os.environ.get("GROCERY_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    engine = create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return url
    except OperationalError:
        return request.getfixturevalue("embedded_servers").database_url
    finally:
        engine.dispose()


@pytest.fixture
def empty_database(postgres_admin_url):
    """A new, empty database on the test server, dropped afterwards."""
    yield from _temporary_database(postgres_admin_url)


@pytest.fixture(scope="session")
def database_url(postgres_admin_url):
    """A database migrated to head for the whole session."""
    for url in _temporary_database(postgres_admin_url):
        migrate(url)
        yield url


def _temporary_database(admin_url: str):
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"grocery_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def redis_url(request) -> str:
    """A Redis database for the tests' queues (GROCERY_TEST_REDIS_URL, the local server, or an
    embedded one), emptied first."""
    import redis

    url = os.environ.get("GROCERY_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    try:
        redis_client(url).flushdb()
    except redis.ConnectionError:
        url = request.getfixturevalue("embedded_servers").redis_url
        redis_client(url).flushdb()
    return url


def redis_client(url: str):
    """redis-py for a URL that Celery understands (redis+socket:// is kombu's spelling of unix://)."""
    import redis

    return redis.Redis.from_url(url.replace("redis+socket://", "unix://", 1))


def stack_settings(database_url: str, redis_url: str, data_dir: Path, store: Path, **overrides):
    """Settings for the API and the workers of an end-to-end test: model and upload folders under
    ``store``; jobs may read the data, the shared dataset and ``photos_dir`` (and each its own
    uploads, never another's). Shards of a few files: the tests cut small inputs into several."""
    from service.settings import Settings

    defaults = dict(
        auth="off",
        database_url=database_url,
        redis_url=redis_url,
        data_dir=data_dir,
        model_dir=store / "models",
        upload_dir=store / "uploads",
        export_dir=store / "exports",
        input_roots=(data_dir, SHARED_DATASET.resolve(), (store / "photos").resolve()),
        min_shard_size=1,
    )
    return Settings(**{**defaults, **overrides})


def photos_dir(settings) -> Path:
    """Where an end-to-end test puts the photos of its folder jobs: an input root of stack_settings."""
    return settings.model_dir.parent.resolve() / "photos"


def settings_env(settings) -> dict[str, str]:
    """The environment that gives a worker process the same settings."""
    return {**os.environ, **settings.to_env()}


def clean_store(database_url: str, redis_url: str) -> None:
    """Empty every table of the schema (read from the tables' own metadata, so a new table is never
    missed) and the test Redis DB: what a test then finds there, it made."""
    from sqlalchemy import create_engine, text

    from service.tables import Base

    tables = ", ".join(f'"{table.name}"' for table in Base.metadata.sorted_tables)
    engine = create_engine(database_url)
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {tables} CASCADE"))
    engine.dispose()
    redis_client(redis_url).flushdb()


@pytest.fixture
def empty_store(database_url, redis_url) -> None:
    """The test starts on an empty store and queue (module-scoped set-ups call clean_store)."""
    clean_store(database_url, redis_url)


@pytest.fixture
def settings(database_url, redis_url, tmp_path, empty_store):
    """The API's settings for one test, on an empty store: tokens off, its folders under tmp_path,
    which is also its data folder and only input root. A module needing others overrides this
    fixture (it may ask for this one by the same name and change it with dataclasses.replace)."""
    from service.settings import Settings

    return Settings(
        auth="off",
        database_url=database_url,
        redis_url=redis_url,
        data_dir=tmp_path,
        model_dir=tmp_path / "models",
        upload_dir=tmp_path / "uploads",
        export_dir=tmp_path / "exports",
        input_roots=(tmp_path,),
    )


@pytest.fixture(scope="session")
def app_for():
    """The API for given settings, some changed: ``app_for(settings, auth="required")``. For the
    module-scoped stacks and servers; a test asks for ``make_app``, ``app`` or ``client``."""
    import dataclasses

    from api import create_app

    def make(settings, **overrides):
        return create_app(dataclasses.replace(settings, **overrides))

    return make


@pytest.fixture
def make_app(app_for, settings):
    """The API for this test's settings with some changed, ``make_app(auth="required")``, or for
    other settings altogether, ``make_app(stack_settings(...))``: a second app, one on another
    database or broker, one whose start is the test."""

    def make(base=None, **overrides):
        return app_for(base or settings, **overrides)

    return make


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


def start_worker(node: str, queues: list[str], settings) -> subprocess.Popen:
    """A real Celery worker process, returned once it says it is ready."""
    from cli.worker import worker_command

    worker = subprocess.Popen(
        worker_command(node, queues),
        cwd=ROOT,
        env=settings_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    worker.log_tail = collections.deque(maxlen=500)  # what it printed, for assertions and debugging
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = worker.stdout.readline()
        worker.log_tail.append(line)
        if not line and worker.poll() is not None:
            raise RuntimeError(f"worker {node} exited with {worker.returncode}: {''.join(worker.log_tail)}")
        if "ready" in line:
            # Keep reading, or a chatty worker blocks once the pipe fills.
            threading.Thread(target=worker.log_tail.extend, args=(worker.stdout,), daemon=True).start()
            return worker
    raise TimeoutError(f"worker {node} not ready after 60s")


def stop_worker(worker: subprocess.Popen) -> None:
    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=60)


def wait_for(client, job_id: str, statuses: set[str], timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").get_json()
        if job["status"] in statuses:
            return job
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} still {job['status']} after {timeout}s")


def wait_for_runtime_choice(client, model_id: str, timeout: float = 240) -> dict:
    """The model's document once a machine has recorded its runtime choice (the prediction workers
    measure it in the background, while the machine is quiet)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        model = client.get(f"/models/{model_id}").get_json()
        if model["serving"].get("runtimes"):
            return model
        time.sleep(0.2)
    raise TimeoutError(f"no runtime choice recorded for model {model_id} after {timeout}s")


class Launcher:
    """`grocery worker --gpus cpu` as a real process tree, its output kept for debugging."""

    def __init__(self, settings, name: str, queues: str, processes: int = 1):
        command = [sys.executable, "-m", "cli", "worker", "--gpus", "cpu", "--processes", str(processes)]
        self.process = subprocess.Popen(
            [*command, "--queues", queues, "--name", name],
            cwd=ROOT,
            env=settings_env(settings),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output = []
        threading.Thread(target=self.output.extend, args=(self.process.stdout,), daemon=True).start()

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=120)


def live_workers(client, count: int, timeout: float = 90) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = {w["name"].split("@")[0]: w for w in client.get("/workers").get_json()["workers"]}
        if len(workers) == count:
            return workers
        time.sleep(0.5)
    raise TimeoutError(f"expected {count} live workers, saw {workers}")
