"""Exports checked against torch, and the runtime chooser: by measurement, never past the agreement threshold."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import ROOT
from torch import nn

from grocery import runtimes
from grocery.artifact import CHECK_IMAGES_NAME, read_artifact
from grocery.export import export, graph_module, prepare_for_serving, read_check_images
from grocery.networks import FineToCoarse
from grocery.predict import Predictor
from grocery.transforms import normalize


@pytest.fixture
def served_model(tiny_model, tmp_path):
    """A copy of the tiny model, prepared for serving as a training job leaves it."""
    artifact_dir = shutil.copytree(tiny_model, tmp_path / "model")
    (artifact_dir / runtimes.CHOICES_NAME).unlink(missing_ok=True)
    serving = prepare_for_serving(artifact_dir, int8=False)
    return artifact_dir, serving


def test_export_is_checked_and_equals_torch_on_the_models_own_photos(served_model, tiny_dataset):
    artifact_dir, serving = served_model
    artifact = read_artifact(artifact_dir)
    assert serving["exports"]["onnx"]["ok"] and serving["exports"]["onnx"]["max_abs_diff"] <= 1e-3
    assert artifact.metadata["serving"] == serving  # recorded in the artifact itself
    photos, reference = read_check_images(artifact)
    assert serving["check_images"] == len(photos) == 16  # the tiny set's 16 validation photos
    inputs = normalize(photos, artifact.preprocessing)
    model = artifact.build_model()
    with torch.inference_mode():
        expected = model(inputs)
        graph_expected = graph_module(model)(inputs)  # what the graph holds: the fine network's logits
    session = ort.InferenceSession(str(artifact.onnx_path()), providers=["CPUExecutionProvider"])
    (actual,) = session.run(None, {"input": inputs.numpy()})
    assert np.allclose(actual, graph_expected.numpy(), atol=1e-3)
    assert torch.equal(reference, expected.argmax(1))  # torch fp32's labels are stored with the photos
    # The runtimes' post-processing of the graph's logits gives the probabilities torch serves.
    served = runtimes.class_probabilities(artifact)(torch.from_numpy(actual))
    assert torch.allclose(served, expected.softmax(1), atol=1e-4)


def test_a_fine_to_coarse_model_exports_its_fine_network_and_every_engine_serves_its_coarse_probabilities(
    served_model,
):
    artifact_dir, _ = served_model
    artifact = read_artifact(artifact_dir)
    model = artifact.build_model()
    assert isinstance(model, FineToCoarse) and artifact.metadata["fine_to_coarse"] == [0, 0, 1, 2]
    session = ort.InferenceSession(str(artifact.onnx_path()), providers=["CPUExecutionProvider"])
    assert session.get_outputs()[0].shape[1] == 4  # the 4 fine classes' logits, not the 3 coarse ones
    photos, reference = read_check_images(artifact)
    with torch.inference_mode():
        expected = model(normalize(photos, artifact.preprocessing)).softmax(1)
    assert expected.shape == (16, 3)
    # OpenVINO is a dependency; where it is not installed, ONNX Runtime alone is checked.
    names = ["onnx", "openvino"] if importlib.util.find_spec("openvino") else ["onnx"]
    for name in names:
        served = runtimes.build_engine(artifact, name, threads=1)(photos)
        assert served.shape == expected.shape and torch.allclose(served, expected, atol=1e-4), name
        assert torch.equal(served.argmax(1), reference), name
    choice = runtimes.choose(artifact, threads=1, names=names, min_seconds=0.05)
    for name in names:  # accepted by the chooser: it agrees with torch fp32 on every check photo
        variant = choice.record["variants"][name]
        assert variant == {**variant, "agreement": 1.0, "accepted": True}, name


# Engines released in another order than made, then a signal caught on the alternate signal stack.
RELEASE_OUT_OF_ORDER = """
import faulthandler, gc, os, signal, sys
from grocery import runtimes
from grocery.artifact import read_artifact
faulthandler.enable()
artifact = read_artifact(sys.argv[1])
engines = [runtimes.build_engine(artifact, "openvino", threads=t) for t in (1, 2, 1)]
for _ in range(3):
    del engines[0]
    gc.collect()
faulthandler.register(signal.SIGUSR1, file=open(os.devnull, "w"))  # Python's handlers run there too
os.kill(os.getpid(), signal.SIGUSR1)
print("survived")
"""


@pytest.mark.skipif(not importlib.util.find_spec("openvino"), reason="OpenVINO is not installed")
def test_openvino_engines_released_in_any_order_leave_signal_handling_working(tiny_model):
    """Each OpenVINO Core's CPU plugin swaps in its own alternate signal stack and unmaps it when
    released: released out of order, they left the thread on an unmapped stack and the next signal
    killed the process (SIGSEGV). One Core per process (runtimes.openvino_core) keeps it mapped."""
    assert runtimes.openvino_core() is runtimes.openvino_core()
    done = subprocess.run(
        [sys.executable, "-c", RELEASE_OUT_OF_ORDER, str(tiny_model)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and done.stdout.strip() == "survived", (done.returncode, done.stderr[-2000:])


class NotExportable(nn.Module):
    """A model with an operator the ONNX exporter does not know (cummax): a broken export."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        logits = self.model(x)
        return logits + torch.cummax(logits, 1).values * 0


def test_a_broken_export_leaves_the_model_served_by_torch_with_the_reason(tiny_model, tmp_path):
    artifact_dir = shutil.copytree(tiny_model, tmp_path / "model")
    (artifact_dir / "model.onnx").unlink()
    model = NotExportable(read_artifact(artifact_dir).build_model())
    serving = prepare_for_serving(artifact_dir, model=model)
    onnx = serving["exports"]["onnx"]
    assert not onnx["ok"] and "aten::cummax" in onnx["reason"]
    assert "onnx-int8" not in serving["exports"] and not (artifact_dir / "model.onnx").exists()
    predictor = Predictor.from_path(artifact_dir, threads=1)
    assert predictor.runtime == "torch" and set(predictor.choice.record["variants"]) == {"torch"}
    assert read_artifact(artifact_dir).metadata["serving"]["exports"]["onnx"]["reason"] == onnx["reason"]


def test_the_int8_graph_keeps_summed_weights_within_7_bits_for_cpus_without_vnni(served_model):
    """AVX2 without VNNI sums pairs of int8 products in 16 bits, which saturate: convolutions that sum
    across channels keep their weights in [-64, 64], so the graph answers there as on VNNI machines."""
    import onnx
    from onnx import numpy_helper

    artifact_dir, _ = served_model
    path = export(artifact_dir, "onnx-int8", calibration_images=8)
    graph = onnx.load(str(path)).graph
    tensors = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    quantized = {
        node.output[0]: tensors.get(node.input[0]) for node in graph.node if node.op_type == "DequantizeLinear"
    }
    summed = [
        quantized[node.input[1]]
        for node in graph.node
        if node.op_type in ("Conv", "Gemm")
        and all(a.i == 1 for a in node.attribute if a.name == "group")  # depthwise convolutions sum nothing
        and quantized.get(node.input[1]) is not None
    ]
    assert summed and all(w.dtype == np.int8 and w.min() >= -64 and w.max() <= 64 for w in summed)
    assert max(int(np.abs(w).max()) for w in summed) == 64  # the range is used, not squeezed further


def degrade(artifact_dir, fmt: str) -> None:
    """Write a deliberately wrong graph as ``fmt``: the classifier's rows rotated, so labels move class."""
    artifact = read_artifact(artifact_dir)
    model = graph_module(artifact.build_model())  # the graph holds what a real export holds
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        classifier.weight.copy_(classifier.weight.roll(1, 0))
        classifier.bias.copy_(classifier.bias.roll(1, 0))
    size = artifact.preprocessing.input_size
    torch.onnx.export(
        model,
        (torch.zeros(1, 3, size, size),),
        str(artifact.onnx_path(fmt)),
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        opset_version=17,
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )


def test_the_chooser_refuses_a_variant_below_the_agreement_threshold(served_model):
    artifact_dir, _ = served_model
    degrade(artifact_dir, "onnx-int8")
    artifact = read_artifact(artifact_dir)
    choice = runtimes.choose(artifact, threads=1, names=["onnx", "onnx-int8"], min_seconds=0.05)
    degraded = choice.record["variants"]["onnx-int8"]
    assert degraded["agreement"] < runtimes.AGREEMENT_THRESHOLD and not degraded["accepted"]
    assert choice.record["variants"]["onnx"] == {
        **choice.record["variants"]["onnx"],
        "agreement": 1.0,
        "accepted": True,
    }
    assert choice.runtime in ("torch", "onnx")  # however fast the degraded graph ran
    assert choice.record["check_images"] == 16 and choice.record["threshold"] == 0.995


def test_auto_measures_once_per_machine_and_keeps_the_choice_in_the_artifact(served_model):
    artifact_dir, _ = served_model
    first = Predictor.from_path(artifact_dir, threads=1)
    record = first.choice.record
    assert first.runtime == record["runtime"] and record["variants"][first.runtime]["accepted"]
    fastest = max(
        (n for n, v in record["variants"].items() if v["accepted"]), key=lambda n: record["variants"][n]["images_per_s"]
    )
    assert first.runtime == fastest
    assert set(record["variants"]) >= {"torch", "onnx", "openvino"}
    stored = json.loads((artifact_dir / runtimes.CHOICES_NAME).read_text())
    assert stored == {runtimes.machine_key(1): record}
    again = Predictor.from_path(artifact_dir, threads=1)
    assert again.choice.record == record  # read back, not measured again
    other_threads = Predictor.from_path(artifact_dir, threads=2)
    assert other_threads.choice.record["machine"] != record["machine"]  # a choice per machine and threads


def test_the_chooser_times_each_variant_at_several_batch_sizes_and_serves_at_the_fastest(served_model, tiny_dataset):
    artifact_dir, _ = served_model
    choice = runtimes.choose(read_artifact(artifact_dir), threads=1, names=["onnx"], min_seconds=0.05)
    for variant in choice.record["variants"].values():  # 16 check photos: batches of 4, 8 and all 16
        by_batch = variant["images_per_s_by_batch"]
        assert list(by_batch) == ["4", "8", "16"] and all(speed > 0 for speed in by_batch.values())
        assert variant["images_per_s"] == max(by_batch.values()) == by_batch[str(variant["inference_batch"])]
    assert choice.inference_batch == choice.record["variants"][choice.runtime]["inference_batch"]
    assert runtimes.inference_batches(64) == [4, 8, 16, 64] and runtimes.inference_batches(8) == [4, 8]
    # How quiet it was: each timing's spread, the timings taken again, the load; no machine lock here.
    quiet = choice.record["quiet"]
    assert quiet["exclusive"] is False and len(quiet["load_before"]) == len(quiet["load_after"]) == 3
    for variant in choice.record["variants"].values():
        assert list(variant["spread_by_batch"]) == ["4", "8", "16"]
        assert all(0 <= spread < 1 for spread in variant["spread_by_batch"].values())
        assert 0 <= variant["retimed"] <= 3 * runtimes.NOISY_RETRIES
    assert quiet["max_spread"] == max(
        s for v in choice.record["variants"].values() for s in v["spread_by_batch"].values()
    )

    predictor = Predictor.from_path(artifact_dir, threads=1)  # auto: serves at the measured batch size
    assert predictor.inference_batch == predictor.choice.inference_batch
    engine = runtimes.build_engine(predictor.artifact, "onnx", threads=1)
    photos, _ = read_check_images(predictor.artifact)
    sliced = runtimes.in_batches_of(engine, 3)(photos)  # 16 photos in slices of 3: the last holds one
    assert sliced.shape == (16, 3) and torch.allclose(sliced, engine(photos), atol=1e-5)
    rows = list(predictor.predict_files(sorted((tiny_dataset / "val").rglob("*.jpg"))))
    reference = Predictor.from_path(artifact_dir, runtime=predictor.runtime, threads=1, batch_size=64)
    expected = list(reference.predict_files(sorted((tiny_dataset / "val").rglob("*.jpg"))))
    assert [r.class_id for r in rows] == [r.class_id for r in expected]


def test_a_timing_whose_spread_shows_noise_is_taken_again():
    """An engine slowed on its first timed call, as by another process taking the core meanwhile: the
    spread of the three timings shows it, and the timing taken again is kept."""
    calls = []

    def engine(batch: torch.Tensor) -> torch.Tensor:
        calls.append(len(batch))
        noisy = len(calls) == 2  # the first timed call (the first is the warm-up)
        time.sleep(0.4 if noisy else 0.1)
        return torch.zeros(len(batch), 3)

    batch = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    speed, spread, retimed = runtimes.timed_quietly(engine, batch, 1e-6, runtimes.Unlocked())
    assert retimed >= 1 and spread < 0.5  # the noisy first timing (spread 0.75) was taken again
    assert speed > 4 / 0.2  # the kept timing is not the slowed one
    assert len(calls) == 1 + runtimes.TIMING_REPEATS * (retimed + 1)  # a warm-up, then a timed call per step


def test_a_provisional_choice_is_fp32_and_measures_nothing(served_model):
    artifact_dir, _ = served_model
    artifact = read_artifact(artifact_dir)
    choice = runtimes.provisional(artifact, threads=1)
    on_cpu = "openvino" if importlib.util.find_spec("openvino") else "onnx"  # OpenVINO is a dependency
    expected = ("torch", 64) if torch.cuda.is_available() else (on_cpu, runtimes.PROVISIONAL_INFERENCE_BATCH)
    assert (choice.runtime, choice.inference_batch, choice.provisional) == (*expected, True)
    assert choice.runtime in runtimes.FP32_VARIANTS and not (artifact_dir / runtimes.CHOICES_NAME).exists()
    predictor = Predictor(artifact, threads=1, choice=choice)
    assert (predictor.runtime, predictor.inference_batch) == expected
    artifact.onnx_path().unlink()  # an export that failed was removed: torch serves
    assert runtimes.provisional(read_artifact(artifact_dir), threads=1).runtime == "torch"


def test_a_choice_recorded_before_batch_sizes_were_timed_is_measured_again(served_model):
    artifact_dir, _ = served_model
    old = {"runtime": "onnx", "machine": runtimes.machine_key(1), "variants": {"onnx": {"images_per_s": 1.0}}}
    (artifact_dir / runtimes.CHOICES_NAME).write_text(json.dumps({runtimes.machine_key(1): old}))
    predictor = Predictor.from_path(artifact_dir, threads=1)
    assert "inference_batch" in predictor.choice.record and predictor.choice.record != old
    stored = json.loads((artifact_dir / runtimes.CHOICES_NAME).read_text())
    assert stored[runtimes.machine_key(1)] == predictor.choice.record


def test_without_check_images_only_fp32_variants_serve(served_model):
    artifact_dir, _ = served_model
    (artifact_dir / CHECK_IMAGES_NAME).unlink()
    artifact = read_artifact(artifact_dir)
    artifact.metadata["training"]["data_dir"] = "/nonexistent"  # the dataset is gone too
    degrade(artifact_dir, "onnx-int8")
    choice = runtimes.choose(artifact, threads=1, min_seconds=0.05)
    assert choice.record["check_images"] == 0
    assert not choice.record["variants"]["onnx-int8"]["accepted"]
    assert choice.runtime in runtimes.FP32_VARIANTS


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
def test_gpu_variants_autocast_and_agree(served_model):
    artifact_dir, _ = served_model
    choice = runtimes.choose(read_artifact(artifact_dir), threads=1, min_seconds=0.05)
    assert set(choice.record["variants"]) == {"torch", "torch-fp16", "torch-bf16"}
    assert choice.record["machine"].startswith("cuda:")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
def test_gpu_decoding_classifies_as_cpu_decoding_does(served_model, tiny_dataset, tmp_path):
    from grocery.predict import iter_image_files

    artifact_dir, _ = served_model
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    paths = [*iter_image_files([tiny_dataset / "val"]), tmp_path / "broken.jpg"]
    on_gpu = Predictor.from_path(artifact_dir, runtime="torch")
    assert on_gpu.decode_on_gpu
    on_cpu = Predictor.from_path(artifact_dir, runtime="torch")
    on_cpu.decode_on_gpu = False
    gpu_rows, cpu_rows = list(on_gpu.predict_files(paths)), list(on_cpu.predict_files(paths))
    assert [r.error["code"] if r.error else None for r in gpu_rows] == [
        r.error["code"] if r.error else None for r in cpu_rows
    ]
    same = sum(g.class_id == c.class_id for g, c in zip(gpu_rows, cpu_rows, strict=True))
    assert same >= len(paths) - 1  # nvjpeg and libjpeg-turbo may differ by a rounding on a near-tie
