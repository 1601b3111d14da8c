"""The chaos soak, long (issue 31): a fleet of hosts in network namespaces (tests/fleet.py: a db host with
PostgreSQL, Redis and the S3 API, an api host, worker hosts, no disk shared), mixed work from several tokens
and a fault injector (tests/chaos.py) for --seconds (default ten minutes), then the drain and the checks.
It prints the seed (--seed replays a run's choices), the jobs, files, faults by kind and every violation,
and exits 1 when there is one. Needs root, iproute2 and nftables.

    python benchmarks/bench_chaos.py [--seconds 600] [--seed N] [--workers 3] [--keep]
"""

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the fleet and the soak live beside the tests that use them

import chaos  # noqa: E402
from conftest import write_tiny_dataset  # noqa: E402
from fleet import PHOTOS, Fleet, fleet_unavailable, photo_folder  # noqa: E402

FOLDER = "p240"


def seed_model(dataset: Path, output: Path) -> Path:
    """The model the fleet serves: the tiny network, from scratch on the tiny dataset (no download)."""
    from grocery.engine import TrainConfig, fit
    from grocery.export import export

    config = TrainConfig(data_dir=str(dataset), epochs=2, warmup_epochs=0, threads=2, **chaos.TRAIN)
    if fit(config, output).status != "completed":
        raise SystemExit("the seed model did not train")
    export(output, "onnx")
    return output


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=600, help="of work and faults (default 600)")
    parser.add_argument("--seed", type=int, help="replay a run's choices (default: drawn, and printed)")
    parser.add_argument("--workers", type=int, default=3, help="worker hosts (default 3)")
    parser.add_argument("--keep", action="store_true", help="keep the hosts' folders (their logs) afterwards")
    args = parser.parse_args()
    reason = fleet_unavailable()
    if reason is not None:
        print(f"bench_chaos: no fleet here: {reason}", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    with tempfile.TemporaryDirectory(prefix="bench-chaos-") as scratch:
        scratch = Path(scratch)
        dataset = write_tiny_dataset(scratch / "dataset", {"train": 12, "val": 4, "test": 3})
        photos = photo_folder(scratch / "photos", dataset, FOLDER, 240)
        started = time.monotonic()
        model = seed_model(dataset, scratch / "model")
        print(f"seed model trained in {time.monotonic() - started:.0f}s", flush=True)
        fleet = Fleet(dataset, [photos], workers=args.workers, keep_files=args.keep)
        try:
            started = time.monotonic()
            fleet.start()
            print(f"fleet up in {time.monotonic() - started:.0f}s: hosts under {fleet.root}", flush=True)
            fleet.register_model(model)
            fleet.upload(photos, f"photos/{FOLDER}")
            soak = chaos.Soak(
                seconds=args.seconds,
                seed=seed,
                folder=fleet.photos_path / FOLDER,
                bucket_prefix=f"photos/{FOLDER}",
                photo=next((fleet.root / "api" / PHOTOS / FOLDER).glob("*.jpg")).read_bytes(),
                drain_seconds=max(300, args.seconds / 2),
            )
            outcome = chaos.run(fleet, soak, say=lambda line: print(line, flush=True))
        finally:
            fleet.stop()
    print(outcome.summary())
    return 1 if outcome.violations else 0


if __name__ == "__main__":
    sys.exit(main())
