"""Training throughput with and without the decode-once cache, and channels_last.

Each variant trains the same number of steps on the same images in one process;
ratios are against decoding every image every epoch in the training process.

    python benchmarks/bench_training.py --data-dir ../shared/grocery-store-dataset --steps 20
"""

import argparse
import json
import time

import torch

from grocery.datasets import decode_all
from grocery.engine import TrainConfig, TrainingSetup, seed_everything, train_one_epoch
from grocery.index import read_split


def steps_per_second(config: TrainConfig, steps: int) -> float:
    """Images/s over ``steps`` training steps (the first step, a warm-up, excluded)."""
    seed_everything(config.seed)
    setup = TrainingSetup(config)
    times = []

    def stop_after(event):
        times.append(time.perf_counter())
        return event["step"] > steps

    train_one_epoch(setup, epoch=1, callback=stop_after)
    return config.batch_size * (len(times) - 1) / (times[-1] - times[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    epoch_images = len(read_split(args.data_dir, "train"))

    side = TrainConfig(data_dir=args.data_dir).train_decode_size  # the default recipe's
    start = time.perf_counter()
    cache = decode_all([s.path for s in read_split(args.data_dir, "train")], side, threads=args.threads)
    fill_seconds = time.perf_counter() - start
    print(
        f"decode cache fill: {epoch_images} images at {side} px in {fill_seconds:.1f}s"
        f" ({epoch_images / fill_seconds:.0f} img/s), {cache.nbytes / 2**20:.0f} MiB"
    )

    # Both recipes train on a subset big enough for the steps: the cache fill is timed above, once.
    limit = args.steps * 32 + 64
    recipes = {
        "efficientnet_lite0 (default recipe)": {},
        "mobilenet_v3_small (from scratch)": dict(arch="mobilenet_v3_small", weights="none", freeze=0),
    }
    results = {"epoch_images": epoch_images, "cache_fill_seconds": round(fill_seconds, 1), "recipes": {}}
    for name, recipe in recipes.items():
        base = dict(data_dir=args.data_dir, train_limit=limit, val_limit=32, threads=args.threads, **recipe)
        variants = {
            "decode every epoch, in-line": TrainConfig(**base, decode_cache=False, loader_workers=0),
            "decode every epoch, loader worker": TrainConfig(**base, decode_cache=False, loader_workers=1),
            "decode cache, in-line (default)": TrainConfig(**base, decode_cache=True, loader_workers=0),
            "decode cache, loader worker": TrainConfig(**base, decode_cache=True, loader_workers=1),
            "  ... without channels_last": TrainConfig(**base, decode_cache=True, channels_last=False),
        }
        rates = {label: steps_per_second(config, args.steps) for label, config in variants.items()}
        baseline = rates["decode every epoch, in-line"]
        print(f"{name}, batch 32, {args.threads} threads:")
        entry = {}
        for label, rate in rates.items():
            epoch_seconds = epoch_images / rate
            print(f"  {label:<40} {rate:6.1f} img/s  {rate / baseline:5.2f}x  epoch {epoch_seconds:5.0f}s")
            entry[label] = {
                "images_per_s": round(rate, 1),
                "ratio": round(rate / baseline, 2),
                "epoch_seconds": round(epoch_seconds),
            }
        results["recipes"][name] = entry
    print(json.dumps(results))


if __name__ == "__main__":
    main()
