"""Bulk classification through the whole system against the workshop's loop, in one run.

(a) the workshop loop in one process (PIL, transform, model(x) one image at a time, torch eager);
(b) the library's prediction pipeline alone, in one process; (c) bulk jobs through the system
(POST /jobs, poll GET /jobs/<id> until done) over the training images and over a generated
folder of --files images, with one single-threaded worker process per core; (d) a client
POSTing each file to /predict. Also: result rows written per second, and the API's memory
while the big job lists and while its results export as CSV.

Uses the PostgreSQL and Redis of DATABASE_URL's server and REDIS_URL (defaults: the local ones);
creates and drops its own database. Without --model it trains a throwaway MobileNetV3-small
(throughput does not depend on accuracy).

    python benchmarks/bench_bulk.py --data-dir ../shared/grocery-store-dataset
"""

import argparse
import http.client
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psutil
import redis
from bench_prediction import workshop_loop
from scratch import free_port, register_model, request, scratch_database, start_api

from grocery import index
from grocery.predict import Predictor
from service import crud
from service.db import make_engine, make_session_factory
from service.stack import ROOT
from worker.launcher import worker_command


def throwaway_model(data_dir: str, output: Path) -> Path:
    from grocery.engine import TrainConfig, fit
    from grocery.export import export

    config = TrainConfig(
        data_dir=data_dir, arch="mobilenet_v3_small", weights="none", epochs=1, train_limit=64, val_limit=32
    )
    fit(config, output)
    export(output, "onnx")
    return output


def pipeline_alone(model: Path, paths: list[str]) -> float:
    predictor = Predictor.from_path(model)
    list(predictor.predict_files(paths[:64]))  # warm-up
    start = time.perf_counter()
    count = sum(1 for _ in predictor.predict_files(paths))
    return count / (time.perf_counter() - start)


def generated_folder(sources: list[str], target: Path, count: int) -> Path:
    """``count`` images in folders of 1,000: hard links to the sources (copies across filesystems)."""
    for i in range(count):
        folder = target / f"batch-{i // 1000:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        source = sources[i % len(sources)]
        destination = folder / f"{i:06d}_{Path(source).name}"
        try:
            os.link(source, destination)
        except OSError:
            shutil.copyfile(source, destination)
    return target


class MemoryWatch:
    """The peak resident memory of a process and its children, sampled every 50 ms."""

    def __init__(self, pid: int):
        self.process, self.peak, self.running = psutil.Process(pid), 0, True
        self.baseline = self.rss()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def rss(self) -> int:
        processes = [self.process, *self.process.children(recursive=True)]
        return sum(p.memory_info().rss for p in processes)

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self.rss())
            time.sleep(0.05)

    def stop(self) -> tuple[int, int]:
        self.running = False
        self.thread.join()
        return self.baseline, self.peak


def run_job(conn, source: dict) -> tuple[float, dict]:
    start = time.perf_counter()
    status, job = request(conn, "POST", "/jobs", {"type": "predict", "input": source})
    assert status == 202, job
    while job["status"] in ("queued", "running"):
        time.sleep(0.2)
        job = request(conn, "GET", f"/jobs/{job['id']}")[1]
    elapsed = time.perf_counter() - start
    assert job["status"] == "succeeded", job
    return job["result"]["total"] / elapsed, job


def post_each(port: int, paths: list[str]) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    boundary = uuid.uuid4().hex
    start = time.perf_counter()
    for path in paths:
        body = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{Path(path).name}"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n".encode()
            + Path(path).read_bytes()
            + f"\r\n--{boundary}--\r\n".encode()
        )
        conn.request("POST", "/predict", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        response = conn.getresponse()
        assert response.status == 200, response.read()
        response.read()
    return len(paths) / (time.perf_counter() - start)


def export_csv(port: int, job_id: str) -> tuple[float, int]:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    start = time.perf_counter()
    conn.request("GET", f"/jobs/{job_id}/results?format=csv")
    response = conn.getresponse()
    lines = 0
    while chunk := response.read(1 << 16):
        lines += chunk.count(b"\n")
    return time.perf_counter() - start, lines - 1


def write_rate(database_url: str, rows: int, batch: int) -> float:
    """Result rows per second through crud.add_predictions, in the workers' batch size."""
    sessions = make_session_factory(make_engine(database_url))
    with sessions() as session:
        job = crud.create_job(session, job_type="predict", params={}, progress_unit="files")
        session.commit()
        top5 = [{"label": f"Class{k}", "class_id": k, "confidence": 0.1} for k in range(5)]
        data = [
            {
                "path": f"/bench/{i:07d}.jpg",
                "label": "Apple",
                "class_id": 0,
                "confidence": 0.9,
                "top5": top5,
                "error_code": None,
                "error_message": None,
            }
            for i in range(rows)
        ]
        start = time.perf_counter()
        for offset in range(0, rows, batch):
            crud.add_predictions(session, job_id=job.id, rows=data[offset : offset + batch])
            session.commit()
        return rows / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--model", help="a model artifact with model.onnx (default: train a throwaway one)")
    parser.add_argument("--files", type=int, default=20_000, help="images in the generated folder")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="worker processes")
    parser.add_argument("--posts", type=int, default=300, help="images POSTed one by one to /predict")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="grocery-bulk-"))
    data_dir = str(Path(args.data_dir).resolve())
    model = Path(args.model) if args.model else throwaway_model(data_dir, work / "model")
    paths = [str(s.path) for s in index.read_split(data_dir, "train", "coarse")]
    print(f"{len(paths)} training images, model {model}, {args.workers} worker processes", flush=True)

    reference = Predictor.from_path(model, runtime="torch")
    workshop, _ = workshop_loop(reference.artifact.build_model(), reference.pre, paths)
    print(f"(a) workshop loop                          {workshop:8.1f} img/s  1.00x", flush=True)
    alone = pipeline_alone(model, paths)
    row(f"(b) library pipeline alone ({Predictor.from_path(model).runtime})", alone, workshop)
    big = generated_folder(paths, work / "generated", args.files)
    figures = {"images": len(paths), "workshop_loop": round(workshop, 1), "pipeline_alone": round(alone, 1)}
    with scratch_database() as database_url:
        figures |= system(args, database_url, model, data_dir, big, paths, workshop, alone)
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(figures))


def system(args, database_url: str, model: Path, data_dir: str, big: Path, paths, workshop, alone) -> dict:
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/13")
    redis.Redis.from_url(redis_url).flushdb()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "GROCERY_DATA_DIR": data_dir,
        "GROCERY_INPUT_ROOTS": f"{data_dir}:{big.parent}",
        "GROCERY_AUTH": "off",  # loopback only
        "GROCERY_UPLOAD_DIR": str(big.parent / "uploads"),
        "GROCERY_MODEL_DIR": str(big.parent / "models"),
        "GROCERY_WORKER_THREADS": "1",  # one single-threaded process per core measured best
    }
    register_model(database_url, model)
    port, processes = free_port(), []
    try:
        processes.append(start_api(env, port, workers=2))
        for n in range(args.workers):
            command = worker_command(f"bench{n}@%h", ["predict"])
            processes.append(
                subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
        conn = http.client.HTTPConnection("127.0.0.1", port)
        time.sleep(10)  # workers start and warm up
        run_job(conn, {"paths": paths[: 64 * args.workers]})  # each worker loads the model
        train_rate, _ = run_job(conn, {"folder": str(Path(data_dir) / "train")})
        row(f"(c) bulk job, {len(paths)} training images", train_rate, workshop, alone)
        watch = MemoryWatch(processes[0].pid)
        big_rate, job = run_job(conn, {"folder": str(big)})
        listing_memory = watch.stop()
        row(f"(c) bulk job, {job['result']['total']} generated images", big_rate, workshop, alone)
        watch = MemoryWatch(processes[0].pid)
        seconds, rows = export_csv(port, job["id"])
        export_memory = watch.stop()
        post_rate = post_each(port, paths[: args.posts])
        row("(d) a client POSTing each file to /predict", post_rate, workshop)
    finally:
        for process in processes:
            process.terminate()
            process.wait()
    mib = 2**20
    total = job["result"]["total"]
    print(f"API memory (gunicorn, all processes) during the {total}-file job: {mebibytes(listing_memory)}")
    print(f"CSV export of {rows} rows: {seconds:.2f} s ({rows / seconds:,.0f} rows/s)")
    print(f"API memory during the export: {mebibytes(export_memory)}")
    writes = {batch: write_rate(database_url, 20_000, batch) for batch in (64, 1000)}
    print("result rows written: " + ", ".join(f"{rate:,.0f} rows/s in batches of {b}" for b, rate in writes.items()))
    return {
        "system_train_images": round(train_rate, 1),
        "system_generated_images": round(big_rate, 1),
        "generated_files": job["result"]["total"],
        "post_each": round(post_rate, 1),
        "ratios": {
            "pipeline_vs_workshop": round(alone / workshop, 2),
            "system_vs_workshop": round(big_rate / workshop, 2),
            "system_vs_pipeline": round(big_rate / alone, 2),
            "post_each_vs_workshop": round(post_rate / workshop, 2),
        },
        "api_rss_mib": {
            "before": listing_memory[0] // mib,
            "job_peak": listing_memory[1] // mib,
            "export_peak": export_memory[1] // mib,
        },
        "export_rows_per_s": round(rows / seconds),
        "write_rows_per_s": {str(b): round(r) for b, r in writes.items()},
    }


def row(label: str, rate: float, workshop: float, alone: float | None = None) -> None:
    share = f"  ({rate / alone:.0%} of (b))" if alone else ""
    print(f"{label:<46} {rate:8.1f} img/s  {rate / workshop:5.2f}x{share}", flush=True)


def mebibytes(before_and_peak: tuple[int, int]) -> str:
    before, peak = (n / 2**20 for n in before_and_peak)
    return f"{before:.0f} MiB before, {peak:.0f} MiB at the peak"


if __name__ == "__main__":
    main()
