"""A bounded load run on loopback, with a worker killed midway.

locust offers 80% polls of GET /jobs/<id> and 20% one-image prediction jobs to the API (gunicorn)
for --seconds; two worker processes run the jobs; halfway one worker is SIGKILLed (the launcher
restarts it; the reconciler hands its job on). Then every job must end, once:

  pass: no 5xx, accepted submissions = job rows = jobs in a final state, every file one result
  row (no duplicates), p95 of GET /jobs/<id> under 50 ms. To be sure a job is in flight when the
  worker dies, a bulk job over the training images is submitted then, and the worker running
  one of its shards is the one killed.

Uses DATABASE_URL's server and REDIS_URL (defaults: the local ones); its own database.

    python benchmarks/bench_load.py --data-dir ../shared/grocery-store-dataset --seconds 90
"""

import argparse
import csv
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
from harness import free_port, register_model, request, scratch_database, start_api
from sqlalchemy import create_engine, text

from cli import ROOT
from grocery import index


def throwaway_model(data_dir: str, output: Path) -> Path:
    """A toy MobileNetV3-small (one epoch on 64 images): this run measures the service under load, not the model."""
    from grocery.engine import TrainConfig, fit
    from grocery.export import prepare_for_serving

    config = TrainConfig(
        data_dir=data_dir, arch="mobilenet_v3_small", weights="none", epochs=1, train_limit=64, val_limit=32
    )
    fit(config, output)
    prepare_for_serving(output)
    return output


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--model", help="a model artifact (default: train a throwaway MobileNetV3-small)")
    parser.add_argument("--seconds", type=int, default=90, help="at most 120")
    parser.add_argument("--users", type=int, default=20)
    args = parser.parse_args()
    seconds = min(args.seconds, 120)
    work = Path(tempfile.mkdtemp(prefix="grocery-load-"))
    data_dir = str(Path(args.data_dir).resolve())
    model = Path(args.model) if args.model else throwaway_model(data_dir, work / "model")
    images = [str(s.path) for s in index.read_split(data_dir, "val", "coarse")]
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/12")
    redis.Redis.from_url(redis_url).flushdb()
    with scratch_database() as database_url:
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "GROCERY_AUTH": "off",  # loopback only
            "GROCERY_DATA_DIR": data_dir,
            "GROCERY_INPUT_ROOTS": data_dir,
            "GROCERY_MODEL_DIR": str(work / "models"),
            "GROCERY_JOB_LEASE_SECONDS": "10",
            "GROCERY_RECONCILE_SECONDS": "2",
        }
        register_model(database_url, model)
        return run(env, database_url, images, seconds, args.users, work)


def run(env: dict, database_url: str, images: list[str], seconds: int, users: int, work: Path) -> int:
    port, processes = free_port(), []
    try:
        processes.append(start_api(env, port, workers=2))
        launcher = [
            sys.executable,
            "-m",
            "cli.worker",
            "--gpus",
            "cpu",
            "--processes",
            "2",
            "--loglevel",
            "WARNING",
        ]
        processes.append(subprocess.Popen(launcher, cwd=ROOT, env=env))
        time.sleep(10)
        stats = work / "locust"
        locust = subprocess.Popen(
            [sys.executable, "-m", "locust", "-f", str(Path(__file__).with_name("locustfile.py")), "--headless"]
            + ["-u", str(users), "-r", str(users), "--run-time", f"{seconds}s", "--host", f"http://127.0.0.1:{port}"]
            + ["--csv", str(stats), "--only-summary", "--loglevel", "WARNING"],
            env={
                **env,
                "GROCERY_LOAD_IMAGES": os.pathsep.join(images),
                "GROCERY_LOAD_ACCEPTED": str(work / "accepted"),
            },
        )
        time.sleep(seconds / 2)
        victim = kill_a_worker(port, str(Path(env["GROCERY_DATA_DIR"]) / "train"))
        locust.wait()
        settled = wait_until_settled(database_url, timeout=120)
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
            process.wait()
    return report(database_url, stats, work / "accepted", victim, settled)


def kill_a_worker(port: int, folder: str) -> dict:
    """Submit a bulk job (seconds of work), then SIGKILL the worker running one of its shards."""
    conn = http.client.HTTPConnection("127.0.0.1", port)
    bulk = request(conn, "POST", "/jobs", {"type": "predict", "input": {"folder": folder}})[1]["id"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        running = [s for s in request(conn, "GET", f"/jobs/{bulk}/shards")[1]["shards"] if s["status"] == "running"]
        if running and running[0]["done"] > 0:
            break
        time.sleep(0.05)
    workers = {w["name"]: w for w in request(conn, "GET", "/workers")[1]["workers"]}
    victim = workers[running[0]["worker"]]
    os.kill(victim["pid"], signal.SIGKILL)
    print(f"killed worker {victim['name']} (pid {victim['pid']}) running shard {running[0]['number']} of {bulk}")
    return {**victim, "bulk_job": bulk}


def wait_until_settled(database_url: str, timeout: float) -> float:
    engine = create_engine(database_url)
    start = time.monotonic()
    with engine.connect() as connection:
        while time.monotonic() - start < timeout:
            open_jobs = connection.execute(text("SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')"))
            if open_jobs.scalar() == 0:
                break
            connection.commit()
            time.sleep(0.5)
    engine.dispose()
    return time.monotonic() - start


def read_csv(path: Path) -> list[dict]:
    return list(csv.DictReader(path.read_text().splitlines()))


def report(database_url: str, stats: Path, accepted_file: Path, victim: dict, settled: float) -> int:
    rows = {r["Name"]: r for r in read_csv(Path(f"{stats}_stats.csv"))}
    failures = read_csv(Path(f"{stats}_failures.csv"))
    server_errors = sum(int(f["Occurrences"]) for f in failures if re.search(r"\b5\d\d\b", f["Error"]))
    submitted = rows["POST /jobs"]
    accepted_ids = set(accepted_file.read_text().split())
    poll = rows["GET /jobs/<id>"]
    engine = create_engine(database_url)
    with engine.connect() as connection:
        jobs = connection.execute(text("SELECT status, count(*) FROM jobs GROUP BY status")).all()
        job_ids = {str(i) for i in connection.execute(text("SELECT id FROM jobs")).scalars()}
        results, distinct = connection.execute(
            text("SELECT count(*), count(DISTINCT (job_id, path)) FROM predictions")
        ).one()
        retried = connection.execute(text("SELECT count(*) FROM job_shards WHERE attempts > 1")).scalar()
        bulk_files = connection.execute(
            text("SELECT (result->>'total')::int FROM jobs WHERE id = :id"), {"id": victim["bulk_job"]}
        ).scalar()
    engine.dispose()
    by_status = dict(jobs)
    total = sum(by_status.values())
    final = sum(n for status, n in by_status.items() if status in ("succeeded", "failed", "cancelled"))
    figures = {
        "requests": int(rows["Aggregated"]["Request Count"]),
        "requests_per_s": round(float(rows["Aggregated"]["Requests/s"]), 1),
        "server_errors": server_errors,
        "accepted_jobs": len(accepted_ids),
        "job_rows": total,
        "final_jobs": final,
        "jobs_by_status": by_status,
        "result_rows": results,
        "distinct_results": distinct,
        "bulk_job_files": bulk_files,
        "shards_retried": retried,
        "poll_p50_ms": float(poll["50%"]),
        "poll_p95_ms": float(poll["95%"]),
        "poll_p99_ms": float(poll["99%"]),
        "submit_p95_ms": float(submitted["95%"]),
        "settled_after_s": round(settled, 1),
        "killed": victim["name"],
    }
    checks = {
        "no 5xx": server_errors == 0,
        "accepted = rows = final": accepted_ids | {victim["bulk_job"]} == job_ids and len(job_ids) == total == final,
        "every file one result": results == len(accepted_ids) + (bulk_files or 0) and by_status == {"succeeded": total},
        "the killed worker's shard ran again": retried >= 1,
        "no duplicate results": results == distinct,
        "p95 GET /jobs/<id> < 50 ms": figures["poll_p95_ms"] < 50,
    }
    print(json.dumps(figures))
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
