"""Are photos with consecutive numbers within a class shots of one scene? (issue 30: holding out whole runs of
consecutive shots would then estimate accuracy on other shooting sessions.) Two measures over the pool
(train + val): how often a photo and the next one by number fall in one near-duplicate group (ImageNet
features, cosine >= 0.85: benchmarks/folds/), and how similar their small colour thumbnails are, each against
random pairs of the same class and split. Seconds on 2 cores; no model is run.

    python benchmarks/bench_scene_runs.py --data-dir ../shared/grocery-store-dataset
"""

import argparse
import json
import random
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

GROUPS = Path(__file__).resolve().parent / "folds" / "near-duplicates-0.85.json"
NUMBER = re.compile(r"_(\d+)$")


def thumbnail(path: Path) -> np.ndarray:
    """24 x 24 colour pixels, centred and of unit length: their dot product is a cosine similarity."""
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB").resize((24, 24), Image.BILINEAR), dtype=np.float32).ravel()
    pixels -= pixels.mean()
    return pixels / (np.linalg.norm(pixels) + 1e-6)


def photos_by_class(groups: dict[str, int]) -> dict[tuple[str, str], list[tuple[int, str, int]]]:
    """(split, fine class): its photos as (number, relative path, near-duplicate group), by number."""
    by_class = defaultdict(list)
    for relative, group in groups.items():
        path = Path(relative)
        by_class[(path.parts[0], path.parent.name)].append((int(NUMBER.search(path.stem).group(1)), relative, group))
    return {key: sorted(photos) for key, photos in by_class.items()}


def pairs(photos: list, rng: random.Random) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Each photo with the next by number, and as many random pairs of the class."""
    consecutive = [(i, i + 1) for i in range(len(photos) - 1)]
    randoms = [tuple(rng.sample(range(len(photos)), 2)) for _ in photos] if len(photos) > 1 else []
    return consecutive, randoms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng, root = random.Random(args.seed), Path(args.data_dir)
    same = {"consecutive": [], "random": []}
    similar = {"consecutive": [], "random": []}
    runs = []
    for photos in photos_by_class(json.loads(GROUPS.read_text())).values():
        vectors = [thumbnail(root / relative) for _, relative, _ in photos]
        for name, chosen in zip(("consecutive", "random"), pairs(photos, rng), strict=True):
            same[name] += [photos[a][2] == photos[b][2] for a, b in chosen]
            similar[name] += [float(vectors[a] @ vectors[b]) for a, b in chosen]
        members = defaultdict(list)
        for number, _, group in photos:
            members[group].append(number)
        runs += [max(ns) - min(ns) == len(ns) - 1 for ns in members.values() if len(ns) > 1]
    high = float(np.percentile(similar["random"], 90))
    print(
        json.dumps(
            {
                "photos": len(json.loads(GROUPS.read_text())),
                "one_group": {name: round(float(np.mean(v)), 3) for name, v in same.items()},
                "thumbnail_cosine_median": {name: round(float(np.median(v)), 3) for name, v in similar.items()},
                "consecutive_above_random_p90": round(float(np.mean(np.array(similar["consecutive"]) > high)), 3),
                "groups_of_2_or_more": len(runs),
                "groups_one_unbroken_run_of_numbers": int(sum(runs)),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
