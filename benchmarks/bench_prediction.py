"""Prediction throughput: the workshop's one-image loop vs the library's pipeline.

Both run in the same process on the same images and model, one after the other,
so the ratio holds on a noisy shared machine even when the absolute figures drift.

    python benchmarks/bench_prediction.py --model runs/m1 --data-dir ../shared/grocery-store-dataset
"""

import argparse
import json
import time

import torch
from PIL import Image
from torchvision import transforms

from grocery import index
from grocery.export import prepare_for_serving
from grocery.predict import Predictor


def workshop_loop(model, pre, paths) -> tuple[float, list[int]]:
    """The workshop's way: open, transform, model(x), one image at a time."""
    transform = transforms.Compose(
        [
            transforms.Resize((pre.input_size, pre.input_size)),
            transforms.ToTensor(),
            transforms.Normalize(pre.mean, pre.std),
        ]
    )
    model.eval()
    labels = []
    start = time.perf_counter()
    with torch.no_grad():
        for path in paths:
            x = transform(Image.open(path).convert("RGB")).unsqueeze(0)
            labels.append(int(model(x).argmax(1)))
    return len(paths) / (time.perf_counter() - start), labels


def pipeline(model_dir, runtime, paths, batch_size, decode_threads) -> tuple[float, list[int]]:
    predictor = Predictor.from_path(model_dir, runtime=runtime, batch_size=batch_size, decode_threads=decode_threads)
    if runtime == "auto":
        print(f"  auto chose {predictor.runtime}")
    list(predictor.predict_files(paths[:batch_size]))  # warm-up: first-call allocations are not throughput
    start = time.perf_counter()
    labels = [row.class_id for row in predictor.predict_files(paths)]
    return len(paths) / (time.perf_counter() - start), labels


def agreement(a: list[int], b: list[int]) -> float:
    return sum(x == y for x, y in zip(a, b, strict=True)) / len(a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a model artifact directory")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--split", default="train", help="the images to classify (default: the 2,640 training images)")
    parser.add_argument("--eval-split", default="val", help="accuracy of each runtime is reported on this split")
    parser.add_argument("--limit", type=int, help="only the first N images of --split")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--decode-threads", type=int, help="default: the library's (one per core)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runtimes", default="torch,onnx,onnx-int8,openvino,openvino-bf16,openvino-int8,auto")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    reference = Predictor.from_path(args.model, runtime="torch")
    paths = [s.path for s in index.read_split(args.data_dir, args.split, reference.artifact.metadata["label_level"])]
    paths = paths[: args.limit] if args.limit else paths
    runtimes = args.runtimes.split(",")
    if not reference.artifact.onnx_path("onnx-int8").is_file():
        prepare_for_serving(args.model, data_dir=args.data_dir)

    baseline_rate, baseline_labels = workshop_loop(reference.artifact.build_model(), reference.pre, paths)
    results = {
        "images": len(paths),
        "arch": reference.artifact.arch,
        "threads": args.threads,
        "workshop_loop_images_per_s": round(baseline_rate, 1),
        "runtimes": {},
    }
    print(f"{len(paths)} images, {reference.artifact.arch}, {args.threads} threads")
    print(f"  workshop loop (PIL, batch 1, torch eager)   {baseline_rate:8.1f} img/s   1.00x")
    eval_samples = index.read_split(args.data_dir, args.eval_split, reference.artifact.metadata["label_level"])
    torch_labels = None
    for runtime in runtimes:
        rate, labels = pipeline(args.model, runtime, paths, args.batch_size, args.decode_threads)
        torch_labels = labels if runtime == "torch" else torch_labels
        val_labels = [
            r.class_id
            for r in Predictor.from_path(args.model, runtime=runtime).predict_files([s.path for s in eval_samples])
        ]
        val_top1 = agreement(val_labels, [s.label for s in eval_samples])
        entry = {
            "images_per_s": round(rate, 1),
            "ratio": round(rate / baseline_rate, 2),
            "agreement_with_workshop_loop": round(agreement(labels, baseline_labels), 4),
            f"{args.eval_split}_top1": round(val_top1, 4),
        }
        if torch_labels is not None and runtime != "torch":
            entry["agreement_with_torch_pipeline"] = round(agreement(labels, torch_labels), 4)
        results["runtimes"][runtime] = entry
        print(
            f"  pipeline {runtime:<10} (batch {args.batch_size})             {rate:8.1f} img/s  "
            f"{rate / baseline_rate:5.2f}x   agrees with loop {entry['agreement_with_workshop_loop']:.2%}, "
            f"{args.eval_split} top-1 {val_top1:.2%}"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
