"""What a training epoch costs at each crop size, in bf16 autocast and fp32, and what a recipe's schedule sums to.

Progressive resizing (``min_input_size``) trains the early epochs on smaller crops; a time budget
(``time_budget``) plans the epochs from such timings (grocery.engine.plan_epochs, which this
uses). The slowest machine class has AVX2 only and trains in fp32: emulate it on a larger CPU with

    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/bench_epoch.py --data-dir DIR

(oneDNN and ATen then run their AVX2 kernels; the clock and caches stay this CPU's).
"""

import argparse
import json
import os
import platform

import torch

from grocery.engine import TrainConfig, TrainingSetup, resolve_precision, seconds_per_image
from grocery.index import read_splits

SIZES = tuple(range(128, 225, 16))  # timed always; a recipe's other sizes too


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6, help="timed steps at each size (after one warm-up)")
    parser.add_argument(
        "--recipes",
        type=json.loads,
        default={"default": {}, "progressive from 128 px": {"min_input_size": 128}},
        help="JSON {name: TrainConfig overrides} whose schedules are summed (default: the default, progressive)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pool = len(read_splits(args.data_dir, "train+val", "fine"))
    isa = {k: os.environ[k] for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY") if k in os.environ}
    print(f"{platform.processor() or platform.machine()}, {args.threads} threads, {isa or 'native ISA'}; {pool} photos")
    results = {"isa": isa, "threads": args.threads, "pool": pool, "precisions": {}}
    precisions = ["fp32"] + (["bf16"] if resolve_precision("auto", torch.device("cpu")) else [])
    for precision in precisions:
        config = TrainConfig(data_dir=args.data_dir, precision=precision, train_limit=64, val_limit=64)
        setup = TrainingSetup(config)
        recipes = {name: TrainConfig(data_dir=args.data_dir, **overrides) for name, overrides in args.recipes.items()}
        scheduled = {r.epoch_input_size(e) for r in recipes.values() for e in range(1, r.epochs + 1)}
        per_image = {size: seconds_per_image(setup, size, steps=args.steps) for size in sorted(set(SIZES) | scheduled)}
        line = ", ".join(f"{size} px {1 / t:.1f} img/s ({pool * t:.0f} s an epoch)" for size, t in per_image.items())
        print(f"{precision}: {line}")
        schedules = {}
        for name, recipe in recipes.items():
            sizes = [recipe.epoch_input_size(e) for e in range(1, recipe.epochs + 1)]
            minutes = sum(pool * per_image[s] for s in sizes) / 60
            schedules[name] = {"epochs": recipe.epochs, "sizes": sizes, "training_minutes": round(minutes, 1)}
            print(f"  {name}: {recipe.epochs} epochs at {sizes}: {minutes:.1f} min of training steps")
        results["precisions"][precision] = {
            "images_per_s": {size: round(1 / t, 1) for size, t in per_image.items()},
            "schedules": schedules,
        }
    print(json.dumps(results))


if __name__ == "__main__":
    main()
