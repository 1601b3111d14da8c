"""Export an artifact's model for ONNX Runtime and OpenVINO, checked, with int8 optional.

Every exported graph lands inside the artifact directory, so the artifact stays self-contained:
``model.onnx`` (fp32, checked against torch on the model's own validation photos),
``model.int8.onnx`` (static QDQ, calibrated on training images by NNCF), and ``check_images.safetensors``,
the validation photos the runtime chooser measures agreement on (grocery.runtimes).
A coarse classifier read from a fine-class head (models.FineToCoarse) exports its fine network
only: the graphs output fine logits, and the runtimes read coarse probabilities from them.
"""

import contextlib
import io
import json
import logging
import os
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torchvision.io import decode_jpeg, encode_jpeg

from grocery import images, index
from grocery.artifact import CHECK_IMAGES_NAME, Artifact, read_artifact, update_metadata
from grocery.networks import FineToCoarse
from grocery.transforms import normalize

EXPORT_FORMATS = ("onnx", "onnx-int8")
OPSET = 17
# Photos kept for the runtime chooser: at 296, one disagreement is 0.34%, under the 0.5% allowed.
CHECK_IMAGES = 512
CHECK_BATCH = 64
# fp32 graphs compute the same function in another order: logits may differ in the last digits only.
EXPORT_ATOL = 1e-3
REFERENCE_KEY = "reference_top1"


def export(
    model_dir: str | Path, fmt: str = "onnx", *, data_dir: str | Path | None = None, calibration_images: int = 128
) -> Path:
    """Write ``model.onnx`` (or ``model.int8.onnx``) into the artifact; returns its path.

    int8 uses static quantisation calibrated on training images from ``data_dir``
    (default: the directory the model was trained on).
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {EXPORT_FORMATS}, not {fmt!r}")
    artifact = read_artifact(model_dir)
    fp32_path = export_fp32(artifact)
    if fmt == "onnx":
        return fp32_path
    data_dir = data_dir or artifact.metadata["training"]["data_dir"]
    return quantize_int8(artifact, fp32_path, data_dir, calibration_images)


def prepare_for_serving(
    model_dir: str | Path,
    *,
    model: nn.Module | None = None,
    data_dir: str | Path | None = None,
    int8: bool = True,
    calibration_images: int = 128,
) -> dict:
    """Export and check what serving needs; record the outcome in metadata.json and return it.

    An export that fails or disagrees with torch is removed and recorded with its reason, never
    raised: the model is then served by torch. ``model``: the module to export (default: the
    artifact's own weights).
    """
    artifact = read_artifact(model_dir)
    model = (model or artifact.build_model()).eval()
    data_dir = Path(data_dir or artifact.metadata["training"]["data_dir"])
    try:
        checks = write_check_images(artifact, model, data_dir)
    except Exception as e:  # without check images only fp32 runtimes serve (grocery.runtimes)
        checks, reason = _stacked([], artifact), f"{type(e).__name__}: {e}"
    else:
        reason = None
    exports = {
        "onnx": _attempt(artifact, "onnx", lambda: check_export(artifact, model, export_fp32(artifact, model), checks))
    }
    if int8 and exports["onnx"]["ok"]:
        exports["onnx-int8"] = _attempt(
            artifact,
            "onnx-int8",
            lambda: _quantized(quantize_int8(artifact, artifact.onnx_path(), data_dir, calibration_images)),
        )
    exports["download"] = _attempt(artifact, "download", lambda: export_for_download(artifact, model, checks))
    serving = {"exports": exports, "check_images": len(checks)}
    if reason is not None:
        serving["check_images_error"] = reason
    update_metadata(artifact.path, serving=serving)
    return serving


def export_for_download(artifact: Artifact, model: nn.Module, checks: torch.Tensor) -> dict:
    """``model.download.onnx``: the whole model for a user to run elsewhere (ONNX Runtime), answering in
    its own labels: one score per class, in the order of the class names kept in the graph's metadata
    (a coarse model read from fine classes: the log of each coarse class's summed probabilities, so a
    softmax of the scores is its probabilities). Its input and preprocessing are in the metadata too.
    Checked against torch on the model's own photos before it is kept."""
    import onnx
    import onnxruntime as ort

    target = artifact.onnx_path("download")
    partial = target.with_suffix(".partial")
    onnx_export(model, artifact, partial, output="scores")
    graph = onnx.load(str(partial))
    onnx.helper.set_model_props(graph, download_metadata(artifact))
    onnx.save(graph, str(partial))
    batch = check_batch(artifact, checks)
    inputs = normalize(batch, artifact.preprocessing)
    with torch.inference_mode():
        expected = model(inputs).numpy()
    session = ort.InferenceSession(str(partial), providers=["CPUExecutionProvider"])
    (actual,) = session.run(None, {"input": inputs.numpy()})
    difference = float(np.abs(actual - expected).max())
    if not difference <= EXPORT_ATOL or not (actual.argmax(1) == expected.argmax(1)).all():
        raise ExportMismatch(f"the download graph's scores differ from torch's by up to {difference:.3g}")
    partial.replace(target)
    return {"ok": True, "file": target.name, "max_abs_diff": difference, "checked_images": len(batch)}


def download_metadata(artifact: Artifact) -> dict[str, str]:
    """What a user needs beside the graph, as ONNX metadata_props (strings)."""
    pre = artifact.preprocessing
    return {
        "class_names": json.dumps(artifact.class_names),
        "label_level": artifact.metadata["label_level"],
        "arch": artifact.arch,
        "input": f"float32 (batch, 3, {pre.input_size}, {pre.input_size}), RGB, pixels/255 less mean over std",
        "mean": json.dumps(list(pre.mean)),
        "std": json.dumps(list(pre.std)),
        "resize": f"{pre.resize}: the whole photo resized to {pre.input_size}x{pre.input_size}",
        "scores": "one per class, in class_names order: the highest is the prediction; softmax gives probabilities",
    }


def _attempt(artifact: Artifact, fmt: str, step) -> dict:
    try:
        return step()
    except Exception as e:  # any exporter or checker failure leaves the model served by torch
        artifact.onnx_path(fmt).unlink(missing_ok=True)
        return {"ok": False, "reason": f"{type(e).__name__}: {e}"}


def _quantized(path: Path) -> dict:
    return {"ok": True, "file": path.name}


def graph_module(model: nn.Module) -> nn.Module:
    """The module the ONNX graph holds: a FineToCoarse model's fine-class network, else the model.

    The fine-to-coarse step (log-softmax, then logsumexp against a mask) stays out of the graph:
    OpenVINO read that graph's output shape as a scalar and failed to compile it, and ONNX Runtime's
    int8 of it agreed with fp32 on 9.8% of the photos. The runtimes apply the step to the graph's
    fine logits instead (grocery.runtimes.class_probabilities), as FineToCoarse does.
    """
    return model.fine if isinstance(model, FineToCoarse) else model


class ExportMismatch(ValueError):
    """The exported graph does not compute what the torch model computes."""


def check_export(artifact: Artifact, model: nn.Module, path: Path, checks: torch.Tensor) -> dict:
    """ONNX Runtime's logits against torch's (the graph module's: fine logits for a FineToCoarse
    model) on a batch of the model's validation photos."""
    import onnxruntime as ort

    batch = check_batch(artifact, checks)
    inputs = normalize(batch, artifact.preprocessing)
    with torch.inference_mode():
        expected = graph_module(model)(inputs).numpy()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (actual,) = session.run(None, {"input": inputs.numpy()})
    difference = float(np.abs(actual - expected).max())
    if not difference <= EXPORT_ATOL:  # also catches NaN
        raise ExportMismatch(f"the ONNX graph's logits differ from torch's by up to {difference:.3g} (> {EXPORT_ATOL})")
    return {"ok": True, "file": path.name, "max_abs_diff": difference, "checked_images": len(batch)}


def onnx_export(model: nn.Module, artifact: Artifact, path: Path, *, output: str) -> None:
    """An fp32 graph of ``model``: input "input" of any batch size, one output named ``output``."""
    # The TorchScript exporter: the dynamo one needs onnxscript and gains nothing for a CNN.
    torch.onnx.export(
        model,
        (torch.zeros(1, *_input_shape(artifact)),),
        str(path),
        dynamo=False,
        input_names=["input"],
        output_names=[output],
        opset_version=OPSET,
        dynamic_axes={"input": {0: "batch"}, output: {0: "batch"}},
    )


def check_batch(artifact: Artifact, checks: torch.Tensor) -> torch.Tensor:
    """The photos an export is checked on: the model's own, else random pixels."""
    if len(checks):
        return checks[:CHECK_BATCH]
    return torch.randint(0, 256, (8, *_input_shape(artifact)), dtype=torch.uint8)


def _input_shape(artifact: Artifact) -> tuple[int, int, int]:
    size = artifact.preprocessing.input_size
    return (3, size, size)


def export_fp32(artifact: Artifact, model: nn.Module | None = None) -> Path:
    """The graph module's fp32 graph (fine logits for a FineToCoarse model, see ``graph_module``)."""
    model = graph_module(model or artifact.build_model()).eval()
    target = artifact.onnx_path("onnx")
    partial = target.with_suffix(".partial")
    onnx_export(model, artifact, partial, output="logits")
    partial.replace(target)
    return target


def quantize_int8(artifact: Artifact, fp32_path: Path, data_dir: str | Path, count: int) -> Path:
    """``model.int8.onnx``: the fp32 graph with int8 weights and activations (QDQ), calibrated on ``count``
    training photos by NNCF, OpenVINO's quantiser, with its overflow fix on every layer.

    CPUs without VNNI (AVX2 only) sum int8 products in 16 bits, which saturate: a graph with full 8-bit
    weights agreed with fp32 on 87.8% of a model's check photos under OpenVINO on such a CPU, where VNNI
    machines had agreed on 100%. With weights kept to 7 bits' range it agreed on 99.3%, and ran about 1.4x
    ONNX Runtime's int8; ONNX Runtime's own quantiser, 7-bit weights too, reached 96.3% (docs/figures.md).
    """
    chosen = calibration_samples(artifact, data_dir, count)
    with quiet_quantiser():
        import nncf
        import onnx
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

        quantized = nncf.quantize(
            onnx.load(str(fp32_path)),
            nncf.Dataset(chosen, calibration_input(artifact)),
            subset_size=len(chosen),
            target_device=nncf.TargetDevice.CPU,
            advanced_parameters=AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE),
        )
    target = artifact.onnx_path("onnx-int8")
    partial = target.with_suffix(".partial")
    onnx.save(quantized, str(partial))
    partial.replace(target)
    return target


def calibration_samples(artifact: Artifact, data_dir: str | Path, count: int) -> list[index.Sample]:
    """The training photos int8 is calibrated on: a seeded choice of ``count``."""
    samples = index.read_split(data_dir, "train", artifact.metadata["label_level"])
    return random.Random(0).sample(samples, min(count, len(samples)))


def calibration_input(artifact: Artifact):
    """A calibration photo as the fp32 graph takes it: one normalised image, by the input's name."""
    pre = artifact.preprocessing

    def one_photo(sample: index.Sample) -> dict:
        return {"input": normalize(images.load_resized(sample.path, pre.input_size)[None], pre).numpy()}

    return one_photo


@contextlib.contextmanager
def quiet_quantiser():
    """NNCF as a quiet library: it sends usage events unless told it runs in CI (a service's exports are
    nobody's telemetry), logs each step, draws progress bars on stdout, and its import has torch warn
    about CUDA. Routine, not news: its warnings still pass."""
    os.environ.setdefault("NNCF_CI", "1")  # read once, when nncf is first imported
    quieter = {"nncf": logging.WARNING, "torch.utils.cpp_extension": logging.ERROR}
    levels = {name: logging.getLogger(name).level for name in quieter}
    for name, level in quieter.items():
        logging.getLogger(name).setLevel(level)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def check_image_samples(artifact: Artifact, data_dir: Path) -> list[index.Sample]:
    """The photos the model was validated on (at most CHECK_IMAGES, a seeded choice); none if unreadable."""
    training = artifact.metadata.get("training", {})
    try:
        samples = index.read_split(data_dir, training.get("val_split", "val"), artifact.metadata["label_level"])
    except index.DatasetError:
        return []
    if len(samples) > CHECK_IMAGES:
        samples = random.Random(0).sample(samples, CHECK_IMAGES)
    return samples


def write_check_images(artifact: Artifact, model: nn.Module, data_dir: Path) -> torch.Tensor:
    """Keep the check photos in the artifact, resized as served and JPEG-encoded (about 15 KB each),
    with torch fp32's top-1 on them: a worker that cannot see the dataset still measures agreement."""
    encoded = [encode_jpeg(image, quality=95) for image in _load(check_image_samples(artifact, data_dir), artifact)]
    checks = _stacked([decode_jpeg(data) for data in encoded], artifact)
    if encoded:
        with torch.inference_mode():
            pre = artifact.preprocessing
            top1 = torch.cat([model(normalize(b, pre)).argmax(1) for b in checks.split(CHECK_BATCH)])
        stored = {f"image_{i:05d}": data for i, data in enumerate(encoded)}
        save_file({**stored, REFERENCE_KEY: top1}, str(artifact.path / CHECK_IMAGES_NAME))
    return checks


def read_check_images(artifact: Artifact) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The artifact's check photos (uint8, N x 3 x S x S) and torch fp32's top-1 on them; where the
    artifact predates them, photos from its validation split if readable (no labels); else none."""
    path = artifact.path / CHECK_IMAGES_NAME
    if path.is_file():
        stored = load_file(str(path))
        photos = [decode_jpeg(stored[k]) for k in sorted(stored) if k.startswith("image_")]
        return _stacked(photos, artifact), stored.get(REFERENCE_KEY)
    data_dir = Path(artifact.metadata.get("training", {}).get("data_dir", ""))
    return _stacked(_load(check_image_samples(artifact, data_dir), artifact), artifact), None


def _load(samples: list[index.Sample], artifact: Artifact) -> list[torch.Tensor]:
    loaded = []
    for sample in samples:
        try:
            loaded.append(images.load_resized(sample.path, artifact.preprocessing.input_size))
        except images.ImageError:
            continue  # a photo that went bad since training is one check image fewer
    return loaded


def _stacked(decoded: list[torch.Tensor], artifact: Artifact) -> torch.Tensor:
    return torch.stack(decoded) if decoded else torch.empty((0, *_input_shape(artifact)), dtype=torch.uint8)
