"""int8 quantisers compared on one model: each graph's agreement with torch fp32 and its engines' speed.

    python benchmarks/bench_int8.py --model DIR --data-dir DIR [--other-photos 600]

Each quantiser writes ``model.int8.onnx`` into a copy of the artifact; the runtime chooser then times
ONNX Runtime and OpenVINO on it (one thread, at its fastest batch) and measures agreement on the
artifact's check photos and on other training photos. ``nncf`` is what ``grocery.export`` ships; the
others are what it replaced (ONNX Runtime's quantiser, 8-bit and 7-bit weights) and NNCF's defaults.
"""

import argparse
import json
import random
import shutil
import tempfile
from pathlib import Path

import torch

from grocery import images, index
from grocery.artifact import read_artifact
from grocery.export import calibration_input, calibration_samples, quantize_int8, quiet_quantiser
from grocery.runtimes import choose

ENGINES = ["onnx-int8", "openvino-int8"]


def onnxruntime_quantiser(reduce_range: bool):
    def quantize(artifact, data_dir: str, count: int) -> None:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

        photos = calibration_photos(artifact, data_dir, count)

        class Photos(CalibrationDataReader):
            def __init__(self):
                self.batches = iter(photos)

            def get_next(self):
                return next(self.batches, None)

        with quiet_quantiser():
            quantize_static(
                str(artifact.onnx_path()),
                str(artifact.onnx_path("onnx-int8")),
                Photos(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=reduce_range,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )

    return quantize


def nncf_defaults(artifact, data_dir: str, count: int) -> None:
    import nncf
    import onnx

    with quiet_quantiser():
        quantized = nncf.quantize(
            onnx.load(str(artifact.onnx_path())),
            nncf.Dataset(calibration_photos(artifact, data_dir, count)),
            subset_size=count,
            target_device=nncf.TargetDevice.CPU,
        )
    onnx.save(quantized, str(artifact.onnx_path("onnx-int8")))


def shipped(artifact, data_dir: str, count: int) -> None:
    quantize_int8(artifact, artifact.onnx_path(), data_dir, count)


QUANTISERS = {
    "onnxruntime": onnxruntime_quantiser(reduce_range=False),
    "onnxruntime-7bit": onnxruntime_quantiser(reduce_range=True),
    "nncf-defaults": nncf_defaults,
    "nncf": shipped,
}


def calibration_photos(artifact, data_dir: str, count: int) -> list[dict]:
    """The photos quantize_int8 calibrates on, as the graph takes them."""
    one_photo = calibration_input(artifact)
    return [one_photo(sample) for sample in calibration_samples(artifact, data_dir, count)]


def other_photos(artifact, data_dir: str, count: int) -> torch.Tensor:
    samples = index.read_split(data_dir, "train", artifact.metadata["label_level"])
    chosen = random.Random(7).sample(samples, min(count, len(samples)))
    return torch.stack([images.load_resized(s.path, artifact.preprocessing.input_size) for s in chosen])


def compare(name: str, model: Path, work: Path, args, others: torch.Tensor) -> dict:
    copy = shutil.copytree(model, work / name)
    (copy / "runtimes.json").unlink(missing_ok=True)
    QUANTISERS[name](read_artifact(copy), args.data_dir, args.calibration_images)
    artifact = read_artifact(copy)
    figures = {}
    for photos, pixels in (("check", None), ("other", others)):
        choice = choose(artifact, threads=1, names=ENGINES, check_images=pixels, min_seconds=args.min_seconds)
        for engine in ENGINES:
            variant = choice.record["variants"][engine]
            figures.setdefault(engine, {})[f"agreement_{photos}"] = variant.get("agreement")
            figures[engine][f"images_per_s_{photos}"] = variant.get("images_per_s")
            if "error" in variant:
                figures[engine]["error"] = variant["error"]
    return figures


def summary(figures: dict) -> str:
    if "error" in figures:
        return f"failed: {figures['error']}"
    agreement = f"agreement {figures['agreement_check']:.2%} (check photos), {figures['agreement_other']:.2%} (other)"
    return f"{agreement}, {figures['images_per_s_check']:.1f} img/s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="an artifact with model.onnx")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--other-photos", type=int, default=600, help="training photos to measure agreement on too")
    parser.add_argument("--calibration-images", type=int, default=128)
    parser.add_argument("--min-seconds", type=float, default=0.5, help="each timing's length")
    parser.add_argument(
        "--quantisers", default=",".join(QUANTISERS), help="comma-separated, of: " + ", ".join(QUANTISERS)
    )
    args = parser.parse_args()

    model = Path(args.model)
    others = other_photos(read_artifact(model), args.data_dir, args.other_photos)
    results = {}
    with tempfile.TemporaryDirectory(prefix="grocery-int8-") as work:
        for name in args.quantisers.split(","):
            results[name] = compare(name, model, Path(work), args, others)
            for engine, f in results[name].items():
                print(f"{name:17} {engine:14} {summary(f)}", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
