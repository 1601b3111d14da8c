"""benchmarks/bench_gpu.py runs end to end: here its CPU path (no CUDA on this machine or CI), quickly on the
tiny dataset, so the script a GPU session runs once has not rotted by then. The worker serves on torch, as the
benchmark's prediction timings do: the runtime chooser (its default, auto) is tested in tests/test_runtimes.py."""

import json
import os
import subprocess
import sys

import torch
from conftest import ROOT


def test_the_gpu_benchmark_runs_and_reports_its_device(tiny_dataset, postgres_admin_url, redis_url):
    env = {**os.environ, "DATABASE_URL": postgres_admin_url, "REDIS_URL": redis_url}
    script = ROOT / "benchmarks" / "bench_gpu.py"
    command = [sys.executable, str(script), "--quick", "--runtime", "torch", "--data-dir", str(tiny_dataset)]
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    figures = json.loads(run.stdout.splitlines()[-1])
    cuda = torch.cuda.is_available()
    assert figures["cuda"] is cuda and run.stdout.startswith(f"device: {figures['device']}\n")
    assert ("no CUDA here" in figures["device"]) is not cuda
    training, prediction, worker = figures["training"], figures["prediction"], figures["worker"]
    assert training["images"] == 16 and training["train_images_per_s"] > 0
    decodings = {"cpu", "gpu"} if cuda else {"cpu"}
    assert set(prediction["decode_images_per_s"]) == decodings and prediction["files"] == 32
    assert set(prediction["predict_images_per_s"]) == {f"{d}_decoding" for d in decodings}
    # The worker was the launcher's process pinned to the device, and the job's shards ran there.
    device = "cuda:0" if cuda else "cpu"
    assert worker["worker"] == ("gpu0@" if cuda else "cpu0@") + worker["worker"].split("@", 1)[1]
    assert worker["worker_device"] == device and worker["shard_devices"] == [device]
    val_photos = sum(1 for path in (tiny_dataset / "val").rglob("*.jpg"))
    assert worker["files"] == val_photos and worker["job_seconds"] > 0
