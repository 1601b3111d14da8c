"""What a training epoch costs at each crop size, in bf16 autocast and fp32, and what a recipe's schedule sums to.

Progressive resizing (``min_input_size``) trains the early epochs on smaller crops; a time budget
(``time_budget``) plans the epochs from such timings (grocery.engine.plan_epochs, which this
uses). The slowest machine class has AVX2 only and trains in fp32: emulate it on a larger CPU with

    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/bench_epoch.py --data-dir DIR

(oneDNN and ATen then run their AVX2 kernels; the clock and caches stay this CPU's). Each precision is
timed eager and through torch.compile (``compile`` in TrainConfig; --no-compile skips it), compiled at
the input size only (each size compiles anew): the figures exclude compiling, which the output gives.
Each figure is the median of --rounds timings, the variants interleaved; the range follows it.
"""

import argparse
import contextlib
import json
import os
import platform
import statistics
import time
from collections import defaultdict

import torch

from grocery.allocator import memory_kept
from grocery.config import ARCH_NAMES, DEFAULT_ARCH
from grocery.engine import TrainConfig, TrainingSetup, resolve_precision, seconds_per_image
from grocery.index import read_splits

SIZES = tuple(range(128, 225, 16))  # timed always; a recipe's other sizes too


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--steps", type=int, default=6, help="timed steps at each size (their median, after three untimed)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="timings of each size and variant (the median is shown)")
    parser.add_argument(
        "--recipes",
        type=json.loads,
        default={"default": {}, "progressive from 128 px": {"min_input_size": 128}},
        help="JSON {name: TrainConfig overrides} whose schedules are summed (default: the default, progressive)",
    )
    parser.add_argument("--arch", default=DEFAULT_ARCH, choices=ARCH_NAMES, help="the network timed (and recipes')")
    parser.add_argument(
        "--sizes",
        type=lambda text: [int(v) for v in text.split(",")],
        default=SIZES,
        help="crop sizes timed, comma-separated, besides the recipes' (default: 128 to 224 in 16-px steps)",
    )
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="time eager steps only")
    parser.add_argument(
        "--glibc-defaults",
        action="store_true",
        help="time with glibc's allocator defaults, not with the freed memory a run keeps (grocery.allocator)",
    )
    args = parser.parse_args()
    with contextlib.nullcontext(False) if args.glibc_defaults else memory_kept() as kept:
        measure(args, kept)


def measure(args, kept: bool) -> None:
    torch.set_num_threads(args.threads)
    pool = len(read_splits(args.data_dir, "train+val", "fine"))
    isa = {k: os.environ[k] for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY") if k in os.environ}
    memory = "freed memory kept" if kept else "glibc's allocator defaults"
    print(f"{platform.processor() or platform.machine()}, {args.threads} threads, {isa or 'native ISA'}, {memory}")
    print(f"{pool} photos")
    print(f"{args.arch}")
    results = {"arch": args.arch, "isa": isa, "threads": args.threads, "memory_kept": kept, "pool": pool}
    results["precisions"] = {}
    precisions = ["fp32"] + (["bf16"] if resolve_precision("auto", torch.device("cpu")) else [])
    variants = [(p, c) for p in precisions for c in ([False, True] if args.compile else [False])]
    setups = {
        p: TrainingSetup(
            TrainConfig(
                data_dir=args.data_dir, arch=args.arch, precision=p, train_limit=64, val_limit=64, compile="off"
            )
        )
        for p in precisions
    }
    input_size = setups["fp32"].config.input_size
    recipes = {name: TrainConfig(data_dir=args.data_dir, **overrides) for name, overrides in args.recipes.items()}
    scheduled = {r.epoch_input_size(e) for r in recipes.values() for e in range(1, r.epochs + 1)}
    sizes = sorted(set(args.sizes) | scheduled, reverse=True)
    compile_seconds = {}
    for precision in precisions if args.compile else []:  # compiling, timed alone (later copies hit its cache)
        start = time.perf_counter()
        seconds_per_image(setups[precision], input_size, steps=1, compiled=True, warmup=0)
        compile_seconds[precision] = round(time.perf_counter() - start, 1)
    # Rounds interleave the variants, so that a shared machine's slow spell falls on all of them.
    timings = defaultdict(list)
    for _ in range(args.rounds):
        for precision, compiled in variants:
            for size in [input_size] if compiled else sizes:
                timed = seconds_per_image(setups[precision], size, steps=args.steps, compiled=compiled)
                timings[(precision, compiled, size)].append(timed)
    for precision, compiled in variants:
        name = f"{precision} compiled" if compiled else precision
        per_image = {
            size: statistics.median(t) for (p, c, size), t in timings.items() if (p, c) == (precision, compiled)
        }
        spread = {
            size: (1 / max(t), 1 / min(t)) for (p, c, size), t in timings.items() if (p, c) == (precision, compiled)
        }
        line = ", ".join(
            f"{size} px {1 / t:.1f} img/s ({spread[size][0]:.1f}-{spread[size][1]:.1f}; {pool * t:.0f} s an epoch)"
            for size, t in per_image.items()
        )
        print(f"{name}: {line}" + (f"; compiling took {compile_seconds[precision]} s" if compiled else ""))
        schedules = {}
        for recipe_name, recipe in recipes.items():
            epoch_sizes = [recipe.epoch_input_size(e) for e in range(1, recipe.epochs + 1)]
            if not set(epoch_sizes) <= set(per_image):
                continue  # a progressive schedule, compiled: not timed (each size compiles anew)
            minutes = sum(pool * per_image[s] for s in epoch_sizes) / 60
            schedules[recipe_name] = {
                "epochs": recipe.epochs,
                "sizes": epoch_sizes,
                "training_minutes": round(minutes, 1),
            }
            print(f"  {recipe_name}: {recipe.epochs} epochs at {epoch_sizes}: {minutes:.1f} min of training steps")
        results["precisions"][name] = {
            "images_per_s": {size: round(1 / t, 1) for size, t in per_image.items()},
            "schedules": schedules,
            **({"compile_seconds": compile_seconds[precision]} if compiled else {}),
        }
    print(json.dumps(results))


if __name__ == "__main__":
    main()
