"""Bulk classification of the model users serve, through the whole system, against baselines in one run.

The model: the default recipe trained through the service (POST /jobs type train; --train-epochs
shortens its schedule, said in the output), or --model, an artifact a service job trained earlier.
(a) the workshop loop in one process (PIL, transform, model(x) one image at a time, torch eager);
(b) a plain ONNX Runtime fp32 pipeline: the model's model.onnx, PIL decoding, one single-threaded
session per core in its own process, batch 64; (c) bulk jobs through the system (POST /jobs, poll
GET /jobs/<id> until done) over the training images and over a generated folder of --files images,
one single-threaded worker process per core, serving with the runtime each chose by measurement;
(d) a client POSTing each file to /predict. Also: result rows written per second, and the API's
memory while the big job lists and while its results export as CSV.

--first-job (with --model) measures only what a freshly registered model's first bulk job costs: the
workers up and idle, a copy of the model never measured on this machine registered, a bulk job over
the training images submitted at once and timed, with the runtimes its shards ran on; then, once the
machine's runtime choice is recorded, the same job again. Run it from a checkout of another commit to
compare (it needs only the API).

Uses the PostgreSQL and Redis of DATABASE_URL's server and REDIS_URL (defaults: the local ones);
creates and drops its own database.

    python benchmarks/bench_bulk.py --data-dir ../shared/grocery-store-dataset
"""

import argparse
import http.client
import json
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import psutil
from bench_prediction import workshop_loop
from harness import (
    free_port,
    live_workers,
    register_model,
    request,
    scratch_database,
    service_env,
    start_api,
    start_workers,
)

from grocery import index
from grocery.predict import Predictor
from service import crud, predictions
from service.db import make_engine, make_session_factory
from service.kinds import PREDICT, NewJob


def plain_onnx_pipeline(model: Path, paths: list[str], processes: int) -> float:
    """The baseline a competent engineer writes in an afternoon: PIL decoding and ONNX Runtime fp32,
    one single-threaded session per core, each process taking its share of the files."""
    shares = [paths[i::processes] for i in range(processes)]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        pool.map(_plain_onnx_share, [(str(model), share[:64]) for share in shares])  # warm-up
        start = time.perf_counter()
        counts = pool.map(_plain_onnx_share, [(str(model), share) for share in shares])
    return sum(counts) / (time.perf_counter() - start)


def _plain_onnx_share(job: tuple[str, list[str]]) -> int:
    import numpy as np
    import onnxruntime as ort
    from PIL import Image

    from grocery.artifact import read_artifact

    artifact = read_artifact(job[0])
    pre = artifact.preprocessing
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = 1, 1, 3
    session = ort.InferenceSession(str(artifact.onnx_path()), options, providers=["CPUExecutionProvider"])
    mean, std = np.array(pre.mean, np.float32) * 255, np.array(pre.std, np.float32) * 255
    paths, done = job[1], 0
    for start in range(0, len(paths), 64):
        batch = [
            np.asarray(Image.open(p).convert("RGB").resize((pre.input_size, pre.input_size), Image.BILINEAR))
            for p in paths[start : start + 64]
        ]
        inputs = ((np.stack(batch).astype(np.float32) - mean) / std).transpose(0, 3, 1, 2)
        session.run(None, {"input": np.ascontiguousarray(inputs)})
        done += len(batch)
    return done


def train_through_the_service(conn, epochs: int | None) -> tuple[str, Path]:
    """The default recipe as a user submits it: POST /jobs with no params (or only a shorter schedule)."""
    params = {"epochs": epochs} if epochs else {}
    start = time.perf_counter()
    status, job = request(conn, "POST", "/jobs", {"type": "train", "params": params})
    assert status == 202, job
    while job["status"] in ("queued", "running"):
        time.sleep(2)
        job = request(conn, "GET", f"/jobs/{job['id']}")[1]
    assert job["status"] == "succeeded", job
    model = request(conn, "GET", f"/models/{job['result']['model_id']}")[1]
    recipe = f"{epochs} epochs" if epochs else "its full schedule"
    print(
        f"trained the default recipe through the service ({recipe}) in {(time.perf_counter() - start) / 60:.1f} min: "
        f"{model['arch']}, val top-1 {model['metrics']['val_top1']:.4f}; "
        f"exports {json.dumps(model['serving']['exports'])}",
        flush=True,
    )
    print(f"model artifact: {model['artifact']}", flush=True)
    return model["id"], Path(model["artifact"])


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
    """Result rows per second through predictions.add_predictions, in the workers' batch size."""
    sessions = make_session_factory(make_engine(database_url))
    with sessions() as session:
        job = crud.create_job(session, new=NewJob(kind=PREDICT, params={}, owner_token_id=None))
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
            predictions.add_predictions(session, job_id=job.id, rows=data[offset : offset + batch])
            session.commit()
        return rows / (time.perf_counter() - start)


def first_job(args, database_url: str, data_dir: str, work: Path) -> dict:
    """A freshly registered model's first bulk job, then the same job once the runtime choice is recorded."""
    model = shutil.copytree(args.model, work / "fresh-model", ignore=shutil.ignore_patterns("runtimes.json", ".*"))
    env = service_env(database_url, data_dir, work)
    port, processes = free_port(), []
    try:
        processes.append(start_api(env, port, workers=2))
        processes += start_workers(env, args.workers, ["predict"])
        conn = http.client.HTTPConnection("127.0.0.1", port)
        live_workers(conn, args.workers)
        load_before = os.getloadavg()
        register_model(database_url, model)
        registered = time.perf_counter()
        model_id = request(conn, "GET", "/models/latest")[1]["id"]
        first_rate, first = run_job(conn, {"folder": str(Path(data_dir) / "train")})
        first_seconds = time.perf_counter() - registered
        print(
            f"first bulk job, {first['result']['total']} images: {first_rate:.1f} img/s, {first_seconds:.1f} s "
            f"from the registration; shards by runtime {first['result']['runtimes']}",
            flush=True,
        )
        while not (choices := request(conn, "GET", f"/models/{model_id}")[1]["serving"].get("runtimes")):
            time.sleep(1)
        recorded_after = time.perf_counter() - registered
        ((machine, choice),) = choices.items()
        speeds = ", ".join(variant_line(n, v) for n, v in choice["variants"].items())
        print(
            f"runtime recorded {recorded_after:.1f} s after the registration on {machine}: {choice['runtime']} "
            f"({speeds}); quiet: {json.dumps(choice.get('quiet'))}",
            flush=True,
        )
        warm_rate, warm = run_job(conn, {"folder": str(Path(data_dir) / "train")})
        print(f"the same job again: {warm_rate:.1f} img/s; shards by runtime {warm['result']['runtimes']}", flush=True)
    finally:
        for process in processes:
            process.terminate()
            process.wait()
    return {
        "workers": args.workers,
        "load_before": [round(load, 2) for load in load_before],
        "load_after": [round(load, 2) for load in os.getloadavg()],
        "first_job": {
            "images_per_s": round(first_rate, 1),
            "seconds_from_registration": round(first_seconds, 1),
            "runtimes": first["result"]["runtimes"],
        },
        "choice_recorded_after_s": round(recorded_after, 1),
        "runtime_chosen": choice["runtime"],
        "quiet": choice.get("quiet"),
        "second_job": {"images_per_s": round(warm_rate, 1), "runtimes": warm["result"]["runtimes"]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--model", help="an artifact a service training job wrote (default: train one now)")
    parser.add_argument("--train-epochs", type=int, help="shorten the default recipe's schedule (default: in full)")
    parser.add_argument("--files", type=int, default=20_000, help="images in the generated folder")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="worker processes")
    parser.add_argument("--posts", type=int, default=300, help="images POSTed one by one to /predict")
    parser.add_argument("--workshop-images", type=int, default=600, help="images the workshop loop classifies")
    parser.add_argument(
        "--first-job", action="store_true", help="only a freshly registered --model's first bulk job, then the next"
    )
    parser.add_argument(
        "--model-dir",
        help="where the service writes the model it trains, kept afterwards (default: a temporary folder, removed)",
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="grocery-bulk-"))
    data_dir = str(Path(args.data_dir).resolve())
    if args.first_job:
        if not args.model:
            parser.error("--first-job needs --model")
        with scratch_database() as database_url:
            figures = first_job(args, database_url, data_dir, work)
        shutil.rmtree(work, ignore_errors=True)
        print(json.dumps(figures))
        return
    paths = [str(s.path) for s in index.read_split(data_dir, "train", "coarse")]
    big = generated_folder(paths, work / "generated", args.files)
    with scratch_database() as database_url:
        figures = system(args, database_url, data_dir, big, paths)
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(figures))


def baselines(model: Path, paths: list[str], args) -> tuple[float, float]:
    reference = Predictor.from_path(model, runtime="torch")
    workshop, _ = workshop_loop(reference.artifact.build_model(), reference.pre, paths[: args.workshop_images])
    print(f"(a) workshop loop ({args.workshop_images} images)        {workshop:8.1f} img/s  1.00x", flush=True)
    plain = plain_onnx_pipeline(model, paths, args.workers)
    row(f"(b) plain ONNX Runtime fp32 pipeline, {args.workers} processes", plain, workshop)
    return workshop, plain


def system(args, database_url: str, data_dir: str, big: Path, paths) -> dict:
    env = service_env(database_url, data_dir, big.parent, Path(args.model_dir) if args.model_dir else None)
    if args.model:
        register_model(database_url, Path(args.model))
    port, processes = free_port(), []
    try:
        processes.append(start_api(env, port, workers=2))
        processes += start_workers(env, args.workers, ["train", "predict"])
        conn = http.client.HTTPConnection("127.0.0.1", port)
        time.sleep(10)  # workers start
        if args.model:
            model_id, model = request(conn, "GET", "/models/latest")[1]["id"], Path(args.model)
        else:
            model_id, model = train_through_the_service(conn, args.train_epochs)
        run_job(conn, {"paths": paths[: 64 * args.workers]})  # each worker loads the model
        # The workers measure the runtimes in the background once the machine is quiet: the baselines
        # wait for the choice, or they would be timed beside that measurement (and it beside them).
        while not (choices := request(conn, "GET", f"/models/{model_id}")[1]["serving"].get("runtimes")):
            time.sleep(1)
        for machine, choice in choices.items():
            speeds = ", ".join(variant_line(n, v) for n, v in choice["variants"].items())
            print(f"runtime chosen on {machine}: {choice['runtime']} ({speeds})", flush=True)
        workshop, plain = baselines(model, paths, args)
        train_rate, _ = run_job(conn, {"folder": str(Path(data_dir) / "train")})
        row(f"(c) bulk job, {len(paths)} training images", train_rate, workshop, plain)
        watch = MemoryWatch(processes[0].pid)
        big_rate, job = run_job(conn, {"folder": str(big)})
        listing_memory = watch.stop()
        row(f"(c) bulk job, {job['result']['total']} generated images", big_rate, workshop, plain)
        shards = request(conn, "GET", f"/jobs/{job['id']}/shards?limit=1000")[1]["shards"]
        runtimes_used = dict(Counter(s["runtime"] for s in shards))
        print(f"shards by runtime: {runtimes_used}", flush=True)
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
        "model": {"id": model_id, "trained_epochs": args.train_epochs or "default", "given": bool(args.model)},
        "runtimes_chosen": {machine: c["runtime"] for machine, c in choices.items()},
        "shards_by_runtime": runtimes_used,
        "workshop_loop": round(workshop, 1),
        "plain_onnx_pipeline": round(plain, 1),
        "system_train_images": round(train_rate, 1),
        "system_generated_images": round(big_rate, 1),
        "generated_files": job["result"]["total"],
        "post_each": round(post_rate, 1),
        "ratios": {
            "plain_onnx_vs_workshop": round(plain / workshop, 2),
            "system_vs_workshop": round(big_rate / workshop, 2),
            "system_vs_plain_onnx": round(big_rate / plain, 2),
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


def variant_line(name: str, variant: dict) -> str:
    verdict = "" if variant["accepted"] else " refused"
    return f"{name} {variant.get('images_per_s', '-')} img/s, agreement {variant.get('agreement', '-')}{verdict}"


def row(label: str, rate: float, workshop: float, plain: float | None = None) -> None:
    share = f"  ({rate / plain:.2f}x (b))" if plain else ""
    print(f"{label:<46} {rate:8.1f} img/s  {rate / workshop:5.2f}x{share}", flush=True)


def mebibytes(before_and_peak: tuple[int, int]) -> str:
    before, peak = (n / 2**20 for n in before_and_peak)
    return f"{before:.0f} MiB before, {peak:.0f} MiB at the peak"


if __name__ == "__main__":
    main()
