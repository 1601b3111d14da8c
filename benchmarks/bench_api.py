"""The API under gunicorn on loopback: POST /jobs and GET /jobs/<id> latency and throughput,
and submit-to-running latency with an idle worker.

Uses the PostgreSQL and Redis of DATABASE_URL's server and REDIS_URL (defaults: the local ones);
creates and drops its own database.

    python benchmarks/bench_api.py --seconds 10 --clients 8 --rate 200
"""

import argparse
import http.client
import os
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import redis
from harness import free_port, request, scratch_database, start_api

from cli import ROOT
from cli.worker import worker_command


def percentiles(latencies: list[float]) -> str:
    ordered = sorted(latencies)

    def ms(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return f"p50 {ms(0.50):.1f} ms, p95 {ms(0.95):.1f} ms, p99 {ms(0.99):.1f} ms"


def closed_loop(port: int, clients: int, seconds: float, make_call) -> tuple[float, list[float]]:
    """Each client sends its next request when the last one answers: the most the server gives."""
    latencies, lock, deadline = [], threading.Lock(), time.monotonic() + seconds

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port)
        mine = []
        while time.monotonic() < deadline:
            start = time.perf_counter()
            status = make_call(conn)
            mine.append(time.perf_counter() - start)
            assert status < 300, status
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    return len(latencies) / seconds, latencies


def open_loop(port: int, rate: float, seconds: float, path: str, clients: int) -> tuple[float, list[float]]:
    """Requests at a fixed rate, spread over clients: latency at a given load, not at saturation."""
    latencies, lock = [], threading.Lock()
    start_all = time.monotonic() + 0.2
    per_client = rate / clients

    def client(offset: float):
        conn = http.client.HTTPConnection("127.0.0.1", port)
        mine, n = [], 0
        while True:
            due = start_all + offset + n / per_client
            if due > start_all + seconds:
                break
            time.sleep(max(0.0, due - time.monotonic()))
            begin = time.perf_counter()
            status, _ = request(conn, "GET", path)
            mine.append(time.perf_counter() - begin)
            assert status == 200
            n += 1
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(i / rate,)) for i in range(clients)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    return len(latencies) / seconds, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rate", type=float, default=200, help="GET /jobs/<id> requests per second")
    parser.add_argument("--gunicorn-workers", type=int, default=2)
    parser.add_argument("--submissions", type=int, default=20, help="jobs timed from submit to running")
    args = parser.parse_args()

    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/14")
    work = Path(tempfile.mkdtemp(prefix="grocery-bench-"))
    (work / "empty").mkdir()
    port = free_port()
    processes = []
    with scratch_database() as database_url:
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "GROCERY_INPUT_ROOTS": str(work),
            "GROCERY_AUTH": "off",  # loopback only; token checks are measured by nothing here
            "GROCERY_MODEL_DIR": str(work / "models"),
        }
        redis.Redis.from_url(redis_url).flushdb()
        try:
            processes.append(start_api(env, port, args.gunicorn_workers))
            measure(args, port, env, redis_url, work, processes)
        finally:
            for p in processes:
                p.terminate()
                p.wait()


def measure(args, port: int, env: dict, redis_url: str, work: Path, processes: list) -> None:
    body = {"type": "train", "params": {"data_dir": str(work / "empty"), "epochs": 1}}
    rate, latencies = closed_loop(
        port, args.clients, args.seconds, lambda conn: request(conn, "POST", "/jobs", body)[0]
    )
    print(f"POST /jobs, {args.clients} clients: {rate:.0f} req/s, {percentiles(latencies)}")
    conn = http.client.HTTPConnection("127.0.0.1", port)
    job_id = request(conn, "POST", "/jobs", body)[1]["id"]
    rate, latencies = closed_loop(
        port, args.clients, args.seconds, lambda conn: request(conn, "GET", f"/jobs/{job_id}")[0]
    )
    print(f"GET /jobs/<id>, {args.clients} clients: {rate:.0f} req/s, {percentiles(latencies)}")
    achieved, latencies = open_loop(port, args.rate, args.seconds, f"/jobs/{job_id}", args.clients)
    print(f"GET /jobs/<id> at {args.rate:.0f} req/s offered ({achieved:.0f} served): {percentiles(latencies)}")

    redis.Redis.from_url(redis_url).flushdb()  # the worker starts idle: nothing queued ahead
    processes.append(
        subprocess.Popen(
            worker_command("bench@%h", ["train"]),
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )
    time.sleep(8)
    waits = []
    for _ in range(args.submissions):
        job_id = request(conn, "POST", "/jobs", body)[1]["id"]
        while (job := request(conn, "GET", f"/jobs/{job_id}")[1])["status"] in ("queued", "running"):
            time.sleep(0.01)
        started = job["started_at"]
        waits.append(_parse(started) - _parse(job["created_at"]))
    print(
        f"submit to running (row created_at to started_at, idle worker, {args.submissions} jobs): "
        f"{percentiles(waits)}, mean {statistics.mean(waits) * 1000:.1f} ms"
    )


def _parse(moment: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(moment).timestamp()


if __name__ == "__main__":
    main()
