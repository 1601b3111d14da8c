"""Export an artifact's model for ONNX Runtime, optionally int8-quantised.

The exported file lands inside the artifact directory, so ``Predictor`` finds it
there and the artifact stays self-contained.
"""

import random
from pathlib import Path

import numpy as np
import torch

from grocery import images, index
from grocery.artifact import Artifact, read_artifact
from grocery.transforms import normalize

EXPORT_FORMATS = ("onnx", "onnx-int8")
OPSET = 17


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


def export_fp32(artifact: Artifact) -> Path:
    model = artifact.build_model()
    size = artifact.preprocessing.input_size
    target = artifact.onnx_path("onnx")
    partial = target.with_suffix(".partial")
    # The TorchScript exporter: the dynamo one needs onnxscript and gains nothing for a CNN.
    torch.onnx.export(
        model,
        (torch.zeros(1, 3, size, size),),
        str(partial),
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        opset_version=OPSET,
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    partial.replace(target)
    return target


def quantize_int8(artifact: Artifact, fp32_path: Path, data_dir: str | Path, count: int) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    samples = index.read_split(data_dir, "train", artifact.metadata["label_level"])
    chosen = random.Random(0).sample(samples, min(count, len(samples)))
    pre = artifact.preprocessing

    class TrainingImages(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(range(0, len(chosen), 16))

        def get_next(self):
            start = next(self.batches, None)
            if start is None:
                return None
            batch = torch.stack([images.load_resized(s.path, pre.input_size) for s in chosen[start : start + 16]])
            return {"input": normalize(batch, pre).numpy().astype(np.float32)}

    target = artifact.onnx_path("onnx-int8")
    quantize_static(
        str(fp32_path),
        str(target),
        TrainingImages(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    return target
