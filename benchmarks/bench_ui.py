"""The web UI's server-side costs, each against a baseline measured in the same run.

(a) Gallery previews (`GET /jobs/<id>/image`, 160 px): JPEG draft-mode decoding, as served, against
    decoding every pixel first (the baseline), on the dataset's validation photos and on generated
    4000x3000 phone-sized photos.
(b) A page refresh under gunicorn: the jobs list's Dash callback (an in-process `GET /jobs?limit=50`,
    plus the table's components when the list changed) against the same `GET /jobs?limit=50` over
    HTTP (the API alone).

Uses the PostgreSQL of DATABASE_URL's server (default: the local one), in a database of its own.

    python benchmarks/bench_ui.py --data-dir ../shared/grocery-store-dataset
"""

import argparse
import http.client
import io
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from harness import free_port, scratch_database, start_api
from PIL import Image, ImageOps

from api.thumbnails import thumbnail_jpeg
from service import crud
from service.db import make_engine, make_session_factory
from service.kinds import TRAIN, NewJob

PREVIEW_PX = 160
JSON = {"Content-Type": "application/json"}
JOBS_CALLBACK = {
    "output": "..jobs-table.children...jobs-list-error.children...jobs-digest.data...jobs-more.hidden..",
    "outputs": [
        {"id": "jobs-table", "property": "children"},
        {"id": "jobs-list-error", "property": "children"},
        {"id": "jobs-digest", "property": "data"},
        {"id": "jobs-more", "property": "hidden"},
    ],
    "inputs": [
        {"id": "jobs-tick", "property": "n_intervals", "value": 1},
        {"id": "jobs-type", "property": "value", "value": "all"},
        {"id": "jobs-status", "property": "value", "value": None},
        {"id": "jobs-more", "property": "n_clicks", "value": None},
        {"id": "jobs-interactive", "property": "value", "value": []},  # the default list: bulk jobs
    ],
    "changedPropIds": ["jobs-tick.n_intervals"],
    "state": [{"id": "jobs-digest", "property": "data", "value": None}],
}


def full_decode_preview(path: Path, size: int) -> bytes:
    """The baseline: every pixel decoded, then shrunk."""
    with Image.open(path) as image:
        preview = ImageOps.exif_transpose(image).convert("RGB")
    preview.thumbnail((size, size))
    buffer = io.BytesIO()
    preview.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def per_second(make_preview, paths: list[Path]) -> float:
    started = time.perf_counter()
    for path in paths:
        make_preview(path, PREVIEW_PX)
    return len(paths) / (time.perf_counter() - started)


def phone_photos(folder: Path, count: int) -> list[Path]:
    """4000x3000 JPEGs with photo-like content (smooth gradients and noise), quality 90."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:3000, 0:4000]
    paths = []
    for i in range(count):
        base = np.stack([(x * (i + 1)) % 256, (y * 2) % 256, ((x + y) // 3) % 256], axis=-1)
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        path = folder / f"phone-{i}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def previews(data_dir: Path, scratch: Path, phones: int) -> None:
    val = sorted((data_dir / "val").rglob("*.jpg"))
    large = phone_photos(scratch, phones)
    for name, paths in (
        (f"{len(val)} validation photos (348x348)", val),
        (f"{phones} phone photos (4000x3000)", large),
    ):
        baseline = per_second(full_decode_preview, paths)
        served = per_second(thumbnail_jpeg, paths)
        print(
            f"(a) previews of {name}: full decode {baseline:.1f}/s; as served (draft) {served:.1f}/s "
            f"= {served / baseline:.2f}x"
        )


def seed_jobs(database_url: str, count: int) -> None:
    with make_session_factory(make_engine(database_url))() as session:
        for i in range(count):
            crud.create_job(session, new=NewJob(kind=TRAIN, params={"epochs": i + 1}, owner_token_id=None))
        session.commit()


def timed(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None, headers: dict) -> float:
    started = time.perf_counter()
    conn.request(method, path, body, headers)
    response = conn.getresponse()
    response.read()
    assert response.status == 200, response.status
    return time.perf_counter() - started


def refreshes(database_url: str, rounds: int) -> None:
    seed_jobs(database_url, 60)
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "GROCERY_AUTH": "off"}
    api = start_api(env, port, workers=1)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port)
        changed = json.dumps(JOBS_CALLBACK).encode()  # no digest shown yet: the table is drawn
        unchanged = json.dumps(with_digest(JOBS_CALLBACK, shown_digest(conn, changed))).encode()
        calls = {
            "GET /jobs?limit=50": ("GET", "/jobs?limit=50&lane=bulk", None, {}),  # what the list asks by default
            "callback, list changed": ("POST", "/ui/_dash-update-component", changed, JSON),
            "callback, list unchanged": ("POST", "/ui/_dash-update-component", unchanged, JSON),
        }
        for call in calls.values():  # warm every path
            for _ in range(20):
                timed(conn, *call)
        medians = {
            name: statistics.median(timed(conn, *call) for _ in range(rounds)) * 1000 for name, call in calls.items()
        }
    finally:
        api.terminate()
        api.wait()
    base = medians["GET /jobs?limit=50"]
    print(f"(b) jobs list refresh, 50 rows, p50 of {rounds} sequential requests: GET /jobs over HTTP {base:.1f} ms")
    for name in ("callback, list changed", "callback, list unchanged"):
        print(f"    the UI's {name}: {medians[name]:.1f} ms = {medians[name] / base:.2f}x the API alone")


def shown_digest(conn: http.client.HTTPConnection, callback: bytes) -> str:
    conn.request("POST", "/ui/_dash-update-component", callback, JSON)
    return json.loads(conn.getresponse().read())["response"]["jobs-digest"]["data"]


def with_digest(callback: dict, digest: str) -> dict:
    return {**callback, "state": [{"id": "jobs-digest", "property": "data", "value": digest}]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/grocery-store-dataset"))
    parser.add_argument("--phones", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        previews(args.data_dir, Path(scratch), args.phones)
    with scratch_database() as database_url:
        refreshes(database_url, args.rounds)


if __name__ == "__main__":
    main()
