"""Accuracy against training time: the default recipe and MobileNetV3-small from scratch.

Trains each recipe on the full training split, evaluating on val after every
epoch, and prints val top-1 with the minutes spent so far.

    python benchmarks/bench_accuracy.py --data-dir ../shared/grocery-store-dataset --output runs/bench
"""

import argparse
import json
import time
from pathlib import Path

import torch

from grocery.engine import TrainConfig, fit

RECIPES = {
    "default": {},  # efficientnet_lite0 with ImageNet weights: TrainConfig's defaults
    "mobilenet_scratch": dict(arch="mobilenet_v3_small", weights="none", freeze=0, epochs=12, learning_rate=3e-3),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--output", default="runs/bench")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    summary = {}
    for name in args.recipes.split(","):
        start = time.perf_counter()

        def report(event, name=name, start=start):
            if event["kind"] == "epoch":
                print(
                    f"{name} epoch {event['epoch']}/{event['epochs']}: val top-1 {event['val_top1']:.4f} "
                    f"top-5 {event['val_top5']:.4f} after {(time.perf_counter() - start) / 60:.1f} min",
                    flush=True,
                )

        config = TrainConfig(data_dir=args.data_dir, threads=args.threads, **RECIPES[name])
        result = fit(config, Path(args.output) / name, callback=report)
        minutes = (time.perf_counter() - start) / 60
        summary[name] = {
            "arch": config.arch,
            "weights": config.weights,
            "epochs": config.epochs,
            "val_top1": round(result.metrics["val_top1"], 4),
            "minutes": round(minutes, 1),
        }
        print(f"{name}: val top-1 {result.metrics['val_top1']:.4f} in {minutes:.1f} min", flush=True)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
