"""POST /predict beside bulk work, through the whole system, with the model users serve.

The model: --model, an artifact a service training job wrote (bench_bulk.py --model-dir keeps one).
One single-threaded worker process per core, the API under gunicorn. Measured in one run:
(a) POST /predict alone, one client, one request at a time: latency p50/p95 (the baseline);
(b) the same client while a bulk job over a generated folder of --files images keeps every worker
    busy: latency p50/p95, how many answered 504, and the bulk job's images per second;
(c) --clients concurrent clients POSTing to an idle fleet: requests per second and latency, with
    dynamic batching (the default) and (d) without (GROCERY_INTERACTIVE_BATCH_SIZE=1), in the same run.

Uses the PostgreSQL and Redis of DATABASE_URL's server and REDIS_URL (defaults: the local ones).

    python benchmarks/bench_interactive.py --data-dir ../shared/grocery-store-dataset --model runs/default
"""

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

from bench_bulk import generated_folder
from harness import free_port, register_model, request, scratch_database, service_env, start_api, start_workers

from grocery import index


def predict_once(conn: http.client.HTTPConnection, photo: bytes) -> tuple[float, int]:
    """One POST /predict: (seconds, status)."""
    boundary = uuid.uuid4().hex
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="photo.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n".encode()
        + photo
        + f"\r\n--{boundary}--\r\n".encode()
    )
    start = time.perf_counter()
    conn.request("POST", "/predict", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    response = conn.getresponse()
    response.read()
    return time.perf_counter() - start, response.status


def latencies(port: int, photos: list[bytes], until=None) -> tuple[list[float], int]:
    """One client, one request at a time, over ``photos`` (or while ``until()`` says go on)."""
    conn, seconds, timeouts = http.client.HTTPConnection("127.0.0.1", port, timeout=60), [], 0
    for n, photo in enumerate(photos):
        if until is not None and n > 0 and not until():
            break
        elapsed, status = predict_once(conn, photo)
        seconds.append(elapsed)
        timeouts += status == 504
        assert status in (200, 504), status
    return seconds, timeouts


def concurrent(port: int, photos: list[bytes], clients: int) -> tuple[float, list[float]]:
    """``clients`` threads, each its own connection, sharing ``photos``: requests/s and latencies."""
    shares, results = [photos[i::clients] for i in range(clients)], []
    threads = [threading.Thread(target=lambda s=s: results.append(latencies(port, s)[0])) for s in shares]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = [s for r in results for s in r]
    return len(seconds) / (time.perf_counter() - start), seconds


def quantiles(seconds: list[float]) -> str:
    shown = milliseconds(seconds)
    return f"p50 {shown['p50_ms']} ms, p95 {shown['p95_ms']} ms, max {max(seconds):.2f} s"


def milliseconds(seconds: list[float]) -> dict:
    return {
        "p50_ms": round(statistics.median(seconds) * 1000),
        "p95_ms": round(statistics.quantiles(seconds, n=20, method="inclusive")[18] * 1000),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--model", required=True, help="an artifact a service training job wrote")
    parser.add_argument("--files", type=int, default=20_000, help="images in the bulk job's generated folder")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="worker processes")
    parser.add_argument("--requests", type=int, default=100, help="POST /predict calls in (a) and at most in (b)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients in (c)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="grocery-interactive-"))
    data_dir = str(Path(args.data_dir).resolve())
    paths = [str(s.path) for s in index.read_split(data_dir, "val", "coarse")]
    photos = [Path(p).read_bytes() for p in paths]
    big = generated_folder(
        [str(s.path) for s in index.read_split(data_dir, "train", "coarse")], work / "gen", args.files
    )
    try:
        with scratch_database() as database_url:
            figures = measure(args, database_url, data_dir, big, photos)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(figures))


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait()


def measure(args, database_url: str, data_dir: str, big: Path, photos: list[bytes]) -> dict:
    env = service_env(database_url, data_dir, big.parent)
    register_model(database_url, Path(args.model))
    port = free_port()
    api, workers = start_api(env, port, workers=2), start_workers(env, args.workers, ["predict"])
    try:
        time.sleep(10)  # workers start and load the model
        latencies(port, photos[: 4 * args.workers])  # each worker has served once
        alone, _ = latencies(port, photos[: args.requests])
        print(f"(a) POST /predict alone, one client: {quantiles(alone)}", flush=True)
        beside, timeouts, rate, total = beside_bulk(port, big, photos[: args.requests])
        print(
            f"(b) POST /predict beside a {total}-file bulk job: {quantiles(beside)}, "
            f"{timeouts} of {len(beside)} answered 504; the bulk job {rate:.1f} img/s",
            flush=True,
        )
        batched, many = concurrent(port, photos[: args.requests * 2], args.clients)
        print(
            f"(c) {args.clients} concurrent clients, batched: {batched:.1f} requests/s, {quantiles(many)}", flush=True
        )
        stop(workers)
        # The same fleet without dynamic batching: each interactive job its own model call.
        workers = start_workers({**env, "GROCERY_INTERACTIVE_BATCH_SIZE": "1"}, args.workers, ["predict"])
        time.sleep(10)
        latencies(port, photos[: 4 * args.workers])
        single, few = concurrent(port, photos[: args.requests * 2], args.clients)
        print(f"(d) the same, one job a call:  {single:.1f} req/s, {quantiles(few)}", flush=True)
    finally:
        stop([api, *workers])
    return {
        "model": str(Path(args.model).resolve()),
        "alone": milliseconds(alone),
        "beside_bulk": {**milliseconds(beside), "requests": len(beside), "timeouts_504": timeouts, "bulk_img_s": rate},
        "concurrent": {
            "clients": args.clients,
            "batched": {"requests_per_s": round(batched, 1), **milliseconds(many)},
            "one_job_a_call": {"requests_per_s": round(single, 1), **milliseconds(few)},
        },
    }


def beside_bulk(port: int, big: Path, photos: list[bytes]) -> tuple[list[float], int, float, int]:
    """One client's POST /predict calls while a bulk job over ``big`` holds every worker."""
    conn = http.client.HTTPConnection("127.0.0.1", port)
    started = time.perf_counter()
    status, bulk = request(conn, "POST", "/jobs", {"type": "predict", "input": {"folder": str(big)}})
    assert status == 202, bulk

    def bulk_running() -> bool:
        return request(conn, "GET", f"/jobs/{bulk['id']}")[1]["status"] in ("queued", "running")

    time.sleep(3)  # its shards hold every worker
    seconds, timeouts = latencies(port, photos * 10, until=bulk_running)
    while bulk_running():
        time.sleep(0.5)
    bulk = request(conn, "GET", f"/jobs/{bulk['id']}")[1]
    total = bulk["result"]["total"]
    return seconds, timeouts, round(total / (time.perf_counter() - started), 1), total


if __name__ == "__main__":
    main()
