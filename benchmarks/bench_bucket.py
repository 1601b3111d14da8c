"""Bulk classification from a bucket against the same photos in a local folder, in one run.

The model: --model, an artifact a service training job wrote (bench_bulk.py --model-dir keeps one), or
the default recipe trained through the service now (--train-epochs shortens its schedule, which the
output says: the speed depends on the architecture and input size, not on how long it trained).
The bucket: an S3 API server that this benchmark starts on loopback (moto's server mode, a Python
process on the same cores as the workers: a pessimistic stand-in for S3 or MinIO), or --endpoint with
the standard AWS variables for a real one (the bucket --bucket must exist there).

The photos of --split are uploaded under a prefix; then bulk jobs (POST /jobs, poll GET /jobs/<id>)
over the prefix ({"input": {"url": ...}}) and over the folder ({"input": {"folder": ...}}) alternate
--rounds times, one single-threaded worker process per core, on the runtime each worker chose.

    python benchmarks/bench_bucket.py --data-dir ../shared/grocery-store-dataset --model runs/default
"""

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil
from bench_bulk import run_job, train_through_the_service
from harness import free_port, register_model, request, scratch_database, service_env, start_api, start_workers

from grocery import storage


def start_s3_server() -> tuple[subprocess.Popen, str]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench-secret",
        AWS_DEFAULT_REGION="us-east-1",
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            storage.client().list_buckets()
            return server, endpoint
        except Exception:
            time.sleep(0.2)
    raise TimeoutError("the S3 server did not answer in 30 s")


def upload(folder: Path, prefix: str) -> tuple[int, float]:
    """The folder's images under ``prefix``, 16 at a time: (objects, seconds)."""
    from grocery.listing import walk_files

    files = list(walk_files(folder))
    start = time.perf_counter()
    with storage.fetcher(len(files)) as pool:
        list(pool.map(lambda f: storage.upload_file(f, f"{prefix}{Path(f).relative_to(folder).as_posix()}"), files))
    return len(files), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--split", default="train", help="the photos to classify: DATA_DIR/<split>/")
    parser.add_argument("--model", help="an artifact a service training job wrote (default: train one now)")
    parser.add_argument("--train-epochs", type=int, help="shorten the default recipe's schedule (default: in full)")
    parser.add_argument(
        "--model-dir",
        help="where the service writes the model it trains, kept afterwards (default: a temporary folder, removed)",
    )
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="worker processes")
    parser.add_argument("--rounds", type=int, default=2, help="bucket and folder jobs, alternating")
    parser.add_argument("--endpoint", help="a real S3 API (AWS_ENDPOINT_URL; credentials from the AWS chain)")
    parser.add_argument("--bucket", help="with --endpoint: an existing bucket (default: a new one)")
    args = parser.parse_args()

    data_dir = Path(args.data_dir).resolve()
    folder = data_dir / args.split
    server = None
    if args.endpoint:
        os.environ["AWS_ENDPOINT_URL"] = args.endpoint
    else:
        server, args.endpoint = start_s3_server()
    bucket = args.bucket or f"grocery-bench-{uuid.uuid4().hex[:8]}"
    if not args.bucket:
        storage.client().create_bucket(Bucket=bucket)
    prefix = f"s3://{bucket}/bench-{uuid.uuid4().hex[:8]}/"
    try:
        objects, seconds = upload(folder, prefix)
        print(f"uploaded {objects} photos to {prefix} ({args.endpoint}) in {seconds:.1f} s", flush=True)
        with scratch_database() as database_url:
            figures = measure(args, database_url, data_dir, folder, prefix, server)
        figures["endpoint"] = "moto server on loopback, same cores" if server is not None else args.endpoint
        storage.delete_prefix(prefix)
    finally:
        if server is not None:
            server.terminate()
            server.wait()
    print(json.dumps(figures))


def cpu_seconds(process: subprocess.Popen | None) -> float:
    """CPU time the S3 server has used so far: on loopback it takes its share of the workers' cores."""
    if process is None:
        return 0.0
    times = psutil.Process(process.pid).cpu_times()
    return times.user + times.system


def measure(args, database_url: str, data_dir: Path, folder: Path, prefix: str, server) -> dict:
    work = Path(tempfile.mkdtemp(prefix="grocery-bucket-"))
    env = service_env(database_url, str(data_dir), work, Path(args.model_dir) if args.model_dir else None)
    env["GROCERY_INPUT_ROOTS"] += f":{prefix}"
    if args.model:
        register_model(database_url, Path(args.model))
    port, processes = free_port(), []
    try:
        processes.append(start_api(env, port, workers=2))
        processes += start_workers(env, args.workers, ["train", "predict"])
        conn = http.client.HTTPConnection("127.0.0.1", port)
        time.sleep(10)  # workers start
        model_id = request(conn, "GET", "/models/latest")[1]["id"] if args.model else None
        if model_id is None:
            model_id, _ = train_through_the_service(conn, args.train_epochs)
        some = sorted(str(p) for p in folder.rglob("*.jpg"))[: 64 * args.workers]
        run_job(conn, {"paths": some})  # each worker loads the model, choosing its runtime
        model = request(conn, "GET", f"/models/{model_id}")[1]
        print(f"model {model_id}: {model['arch']}, runtimes {model['serving'].get('runtimes', {})}", flush=True)
        rates, server_cpu = {"bucket": [], "folder": []}, []
        for round_ in range(args.rounds):
            for kind, source in (("bucket", {"url": prefix}), ("folder", {"folder": str(folder)})):
                before = cpu_seconds(server)
                rate, job = run_job(conn, source)
                rates[kind].append(rate)
                used = cpu_seconds(server) - before
                if kind == "bucket":
                    server_cpu.append(used)
                elapsed = job["result"]["total"] / rate
                note = f", the S3 server used {used:.1f} CPU-s of {elapsed:.1f} s" if kind == "bucket" else ""
                print(
                    f"round {round_ + 1}: {kind:6s} {job['result']['total']} photos {rate:7.1f} img/s{note}", flush=True
                )
    finally:
        for process in processes:
            process.terminate()
            process.wait()
        shutil.rmtree(work, ignore_errors=True)
    bucket, local = statistics.median(rates["bucket"]), statistics.median(rates["folder"])
    print(f"median: bucket {bucket:.1f} img/s, folder {local:.1f} img/s: the bucket at {bucket / local:.2f}x")
    return {
        "model": {
            "id": model_id,
            "given": bool(args.model),
            "trained_epochs": None if args.model else args.train_epochs,
        },
        "workers": args.workers,
        "bucket_img_per_s": [round(r, 1) for r in rates["bucket"]],
        "folder_img_per_s": [round(r, 1) for r in rates["folder"]],
        "bucket_vs_folder": round(bucket / local, 2),
        "s3_server_cpu_seconds_per_bucket_job": [round(c, 1) for c in server_cpu],
    }


if __name__ == "__main__":
    main()
