"""GPU figures in one run: a training epoch, bulk prediction decoding JPEGs on the GPU against on the CPU, and a
worker pinned to the GPU taking a job through the service. Without CUDA it runs the same paths on the CPU and
says so (tests/test_bench_gpu.py runs that with --quick, so the script cannot rot).

(1) One epoch of grocery.engine.fit on a subset of the dataset (the default recipe; --quick: a small network
    at 64 px), its training images per second and its wall time with the decode cache's fill.
(2) The model it trained, on torch, over --files images: JPEGs decoded by nvjpeg on the GPU
    (torchvision.io.decode_jpeg, device='cuda', one call a batch, grocery.images.decode_resized_on_gpu)
    against decoded on the CPU: decoding alone, then prediction end to end, and their top-1 agreement.
(3) The API under gunicorn and `grocery worker --gpus 0` (--gpus cpu without CUDA), the model registered: a
    folder job's time from POST /jobs to done, the device each shard ran on.

Uses the PostgreSQL and Redis of DATABASE_URL's server and REDIS_URL (defaults: the local ones); creates and
drops its own database.

    python benchmarks/bench_gpu.py --data-dir ../shared/grocery-store-dataset
"""

import argparse
import http.client
import itertools
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch
from harness import (
    free_port,
    live_workers,
    register_model,
    request,
    scratch_database,
    service_env,
    start_api,
    start_launcher,
)

from grocery import images, index
from grocery.engine import TrainConfig, fit
from grocery.predict import Predictor

CUDA = torch.cuda.is_available()
# --quick: the tiny recipe the tests train (tests/conftest.py's tiny_config), small counts.
QUICK_RECIPE = dict(arch="mobilenet_v3_small", weights="none", freeze=0, input_size=64, batch_size=8, warmup_epochs=0)


def device_name() -> str:
    if CUDA:
        return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda}, torch {torch.__version__})"
    model = next((line.split(":", 1)[1].strip() for line in cpu_info() if line.startswith("model name")), None)
    return f"CPU {model or platform.processor()} (no CUDA here: every path below ran on the CPU)"


def cpu_info() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def synchronized() -> float:
    """perf_counter once the GPU has finished what it was given (a GPU's work is asynchronous)."""
    if CUDA:
        torch.cuda.synchronize()
    return time.perf_counter()


def training_epoch(data_dir: str, output: Path, train_images: int, quick: bool) -> dict:
    """One epoch of the default recipe (or the quick one) on a seeded subset, through grocery.engine.fit."""
    recipe = QUICK_RECIPE if quick else {}
    config = TrainConfig(data_dir=data_dir, epochs=1, train_limit=train_images, val_limit=64, **recipe)
    start = synchronized()
    result = fit(config, output)
    wall = synchronized() - start
    epoch = result.history[0]
    figures = {
        "arch": config.arch,
        "images": train_images,
        "train_images_per_s": round(epoch["train_images_per_s"], 1),
        "epoch_seconds": round(epoch["train_seconds"], 1),
        "fit_seconds": round(wall, 1),
    }
    print(
        f"(1) training epoch, {config.arch} at {config.input_size} px, a subset of {train_images} photos:"
        f" {figures['train_images_per_s']} img/s, epoch {figures['epoch_seconds']} s"
        f" ({figures['fit_seconds']} s with the decode cache's fill, validation and the artifact)",
        flush=True,
    )
    return figures


def decode_rates(blobs: list[bytes], size: int) -> dict:
    """Images/s decoding and resizing in-memory JPEGs: on the CPU one by one, on the GPU a batch of 64 a call."""
    rates = {}
    start = time.perf_counter()
    for data in blobs:
        images.resize(images.decode(data), size)
    rates["cpu"] = len(blobs) / (time.perf_counter() - start)
    if CUDA:
        images.decode_resized_on_gpu(blobs[:64], size, names=["warm-up"] * len(blobs[:64]))
        start = synchronized()
        for first in range(0, len(blobs), 64):
            batch = blobs[first : first + 64]
            images.decode_resized_on_gpu(batch, size, names=["bench"] * len(batch))
        rates["gpu"] = len(blobs) / (synchronized() - start)
    return rates


def predict_rate(predictor: Predictor, paths: list[str]) -> tuple[float, list[str]]:
    list(predictor.predict_files(paths[: predictor.batch_size]))  # warm-up: kernels, allocator, file cache
    start = synchronized()
    labels = [prediction.label for prediction in predictor.predict_files(paths)]
    return len(paths) / (synchronized() - start), labels


def bulk_prediction(model: Path, photos: list[str], files: int) -> dict:
    """The trained model on torch over ``files`` photos (the subset repeated), decoded on the GPU, then the CPU."""
    paths = list(itertools.islice(itertools.cycle(photos), files))
    predictor = Predictor.from_path(model, runtime="torch")
    size = predictor.pre.input_size
    decoding = decode_rates([Path(p).read_bytes() for p in paths], size)
    figures = {"files": files, "decode_images_per_s": {k: round(v, 1) for k, v in decoding.items()}}
    print(f"(2) decoding and resizing {files} JPEGs to {size} px: CPU {decoding['cpu']:.1f} img/s", end="")
    print(f", GPU {decoding['gpu']:.1f} img/s ({decoding['gpu'] / decoding['cpu']:.2f}x)" if CUDA else "", flush=True)
    rates, labels = {}, {}
    if CUDA:
        assert predictor.decode_on_gpu  # a torch model on CUDA decodes there
        rates["gpu_decoding"], labels["gpu_decoding"] = predict_rate(predictor, paths)
    predictor.decode_on_gpu = False
    rates["cpu_decoding"], labels["cpu_decoding"] = predict_rate(predictor, paths)
    figures["predict_images_per_s"] = {k: round(v, 1) for k, v in rates.items()}
    line = f"(2) prediction on {predictor.runtime}, {files} files: CPU decoding {rates['cpu_decoding']:.1f} img/s"
    if CUDA:
        agree = sum(a == b for a, b in zip(labels["gpu_decoding"], labels["cpu_decoding"], strict=True)) / files
        figures["top1_agreement"] = round(agree, 4)
        speedup = rates["gpu_decoding"] / rates["cpu_decoding"]
        line += f", GPU decoding {rates['gpu_decoding']:.1f} img/s ({speedup:.2f}x), top-1 agreement {agree:.2%}"
    else:
        line += " (GPU decoding needs CUDA: not run)"
    print(line, flush=True)
    return figures


def pinned_worker_job(model: Path, data_dir: str, folder: Path, runtime: str) -> dict:
    """The service: the model registered, the API, one worker process pinned to GPU 0 (or the CPU); a folder job."""
    work = Path(tempfile.mkdtemp(prefix="grocery-gpu-"))
    launcher = ["--gpus", "0"] if CUDA else ["--gpus", "cpu", "--processes", "1"]
    processes = []
    try:
        with scratch_database() as database_url:
            env = {**service_env(database_url, data_dir, work), "GROCERY_RUNTIME": runtime}
            if CUDA:
                env.pop("GROCERY_WORKER_THREADS")  # file reading threads: every core (the GPU decodes)
            register_model(database_url, model)
            port = free_port()
            processes.append(start_api(env, port, workers=1))
            processes.append(start_launcher(env, [*launcher, "--queues", "predict"]))
            conn = http.client.HTTPConnection("127.0.0.1", port)
            (worker,) = live_workers(conn, 1)
            first = run_job(conn, {"folder": str(folder)})  # the worker's first job may still wait for its model
            job = run_job(conn, {"folder": str(folder)})
            shards = request(conn, "GET", f"/jobs/{job['id']}/shards?limit=1000")[1]["shards"]
    finally:
        for process in processes:
            process.terminate()
            process.wait()
        shutil.rmtree(work, ignore_errors=True)
    files = job["result"]["total"]
    figures = {
        "worker": worker["name"],
        "worker_device": worker["device"],
        "shard_devices": sorted({shard["device"] for shard in shards}),
        "runtimes": sorted({shard["runtime"] for shard in shards}),
        "files": files,
        "first_job_seconds": round(first["seconds"], 2),
        "job_seconds": round(job["seconds"], 2),
        "job_images_per_s": round(files / job["seconds"], 1),
    }
    print(
        f"(3) worker {worker['name']} on {worker['device']} took a {files}-file folder job: {job['seconds']:.2f} s"
        f" from POST /jobs to done ({figures['job_images_per_s']} img/s; its first job {first['seconds']:.2f} s),"
        f" shards on {', '.join(figures['shard_devices'])} with {', '.join(figures['runtimes'])}",
        flush=True,
    )
    return figures


def run_job(conn, source: dict) -> dict:
    start = time.perf_counter()
    status, job = request(conn, "POST", "/jobs", {"type": "predict", "input": source})
    assert status == 202, job
    while job["status"] in ("queued", "running"):
        time.sleep(0.1)
        job = request(conn, "GET", f"/jobs/{job['id']}")[1]
    assert job["status"] == "succeeded", job
    return {**job, "seconds": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="a dataset in the Grocery Store layout")
    parser.add_argument("--quick", action="store_true", help="small sizes and a small network (the test's run)")
    parser.add_argument("--train-images", type=int, help="images of the training epoch (default 2048; quick 16)")
    parser.add_argument("--files", type=int, help="images of the prediction timings (default 4096; quick 32)")
    parser.add_argument("--runtime", default="auto", help="the worker's GROCERY_RUNTIME (default auto: measured)")
    args = parser.parse_args(argv)
    train_images = args.train_images or (16 if args.quick else 2048)
    files = args.files or (32 if args.quick else 4096)
    data_dir = str(Path(args.data_dir).resolve())
    print(f"device: {device_name()}", flush=True)
    output = Path(tempfile.mkdtemp(prefix="grocery-gpu-model-"))
    try:
        figures = {"device": device_name(), "cuda": CUDA, "quick": args.quick}
        figures["training"] = training_epoch(data_dir, output, train_images, args.quick)
        photos = [str(sample.path) for sample in index.read_split(data_dir, "val")]
        figures["prediction"] = bulk_prediction(output, photos, files)
        figures["worker"] = pinned_worker_job(output, data_dir, Path(data_dir) / "val", args.runtime)
    finally:
        shutil.rmtree(output, ignore_errors=True)
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
