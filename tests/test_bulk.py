"""Bulk prediction end to end: sharded jobs over two real worker processes, exact per-file
outcomes, retries, uploads and filtered results."""

import io
import os
import shutil
import socket
import zipfile
from pathlib import Path

import factories
import numpy as np
import pytest
from conftest import (
    FINISHED,
    clean_store,
    photos_dir,
    stack_settings,
    start_worker,
    stop_worker,
    wait_for,
)

from service import registry

LABELS = {"Apple", "Pear", "Milk"}


@pytest.fixture(scope="module")
def settings(database_url, redis_url, tiny_dataset, tmp_path_factory):
    """The module's API and workers share one store; shards retried once, one thread per worker."""
    store = tmp_path_factory.mktemp("bulk")
    return stack_settings(database_url, redis_url, tiny_dataset, store, shard_attempts=2, worker_threads=1)


@pytest.fixture(scope="module")
def bulk(settings, tiny_model):
    """Two worker processes on the predict queue, and two models: the tiny model as the latest,
    and before it, one whose artifact is missing (alias 'broken')."""
    clean_store(settings.database_url, settings.redis_url)
    with factories.store_session(settings.database_url) as session:
        broken = factories.model(session, artifact=settings.model_dir.parent / "deleted-model")
        registry.set_alias(session, name="broken", model_id=broken.id)
        factories.model(session, artifact=tiny_model)
    workers = [start_worker(f"bulk{i}@%h", ["predict"], settings) for i in range(2)]
    yield workers
    for worker in workers:
        stop_worker(worker)


def images_of(tiny_dataset: Path) -> list[Path]:
    return sorted((tiny_dataset / "train").rglob("*.jpg")) + sorted((tiny_dataset / "val").rglob("*.jpg"))


@pytest.fixture
def photo_folder(bulk, settings, tiny_dataset, tmp_path) -> Path:
    """46 good photos in nested folders, four bad files, a text file and two escaping symlinks,
    inside an allowed input root."""
    root = photos_dir(settings) / f"team-{tmp_path.name}"
    good = images_of(tiny_dataset)[:46]
    for i, source in enumerate(good):
        folder = root / ("" if i < 20 else "shelf-a" if i < 35 else "shelf-a/top")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, folder / f"photo_{i:02d}.jpg")
    (root / "zero.jpg").write_bytes(b"")
    (root / "shelf-a" / "notes.jpg").write_text("a shopping list, not a photo")
    (root / "shelf-a" / "top" / "cut.jpg").write_bytes(good[0].read_bytes()[:300])
    (root / "readme.txt").write_text("not an image extension: not listed")
    outside = tmp_path / "private"
    outside.mkdir()
    shutil.copy(good[1], outside / "secret.jpg")
    os.symlink(outside / "secret.jpg", root / "escape.jpg")
    os.symlink(outside, root / "escape-folder")  # a symlinked folder is not entered at all
    return root


EXPECTED_ERRORS = {"zero.jpg": "empty_file", "notes.jpg": "not_an_image", "cut.jpg": "truncated"}


def test_workers_load_the_serving_model_before_saying_ready(bulk, tiny_model):
    workers = bulk
    for worker in workers:
        assert any("preloaded model" in line for line in worker.log_tail), "".join(worker.log_tail)


def test_a_folder_gives_every_file_its_outcome(bulk, client, photo_folder):
    submitted = client.post("/jobs", json={"type": "predict", "input": {"folder": str(photo_folder)}, "shard_size": 4})
    assert submitted.status_code == 202, submitted.get_json()
    job = wait_for(client, submitted.get_json()["id"], FINISHED, timeout=120)
    assert job["status"] == "succeeded", job["error"]  # 4 failed of 50 is under the 10% limit

    rows = client.get(f"/jobs/{job['id']}/results?limit=1000").get_json()["results"]
    outcomes = {os.path.relpath(r["path"], photo_folder): r for r in rows}
    assert len(rows) == len(outcomes) == 50
    assert {name: r["error"]["code"] for name, r in outcomes.items() if r["error"]} == {
        "zero.jpg": "empty_file",
        "shelf-a/notes.jpg": "not_an_image",
        "shelf-a/top/cut.jpg": "truncated",
        "escape.jpg": "outside_root",
    }
    good = [r for r in rows if r["error"] is None]
    assert len(good) == 46 and {r["label"] for r in good} <= LABELS
    assert all(0 < r["confidence"] <= 1 and r["top5"][0]["label"] == r["label"] for r in good)

    summary = job["summary"]
    assert (summary["total"], summary["done"], summary["failed"], summary["shards"]) == (50, 50, 4, 13)
    assert sum(summary["labels"].values()) == 46 and summary["images_per_s"] > 0
    assert job["result"]["labels"] == summary["labels"] and job["result"]["failed"] == 4
    assert job["progress"] == {"done": 50, "total": 50, "unit": "files"}
    shards = client.get(f"/jobs/{job['id']}/shards").get_json()["shards"]
    assert [s["number"] for s in shards] == list(range(13)) and {s["status"] for s in shards} == {"succeeded"}
    assert sum(s["total"] for s in shards) == 50


def test_results_filter_by_label_confidence_and_errors(bulk, client, photo_folder):
    job_id = client.post("/jobs", json={"type": "predict", "input": {"folder": str(photo_folder)}}).get_json()["id"]
    job = wait_for(client, job_id, FINISHED, timeout=120)
    rows = client.get(f"/jobs/{job_id}/results?limit=1000").get_json()["results"]

    def paths(query: str) -> list[str]:
        response = client.get(f"/jobs/{job_id}/results?limit=1000&{query}")
        assert response.status_code == 200, response.get_json()
        return [r["path"] for r in response.get_json()["results"]]

    label = max(job["summary"]["labels"], key=job["summary"]["labels"].get)
    assert paths(f"label={label}") == [r["path"] for r in rows if r["label"] == label]
    assert len(paths(f"label={label}")) == job["summary"]["labels"][label]
    assert paths("errors_only=true") == [r["path"] for r in rows if r["error"]]
    middle = sorted(r["confidence"] for r in rows if r["confidence"] is not None)[20]
    assert paths(f"min_confidence={middle}") == [r["path"] for r in rows if (r["confidence"] or -1) >= middle]
    assert paths(f"max_confidence={middle}") == [
        r["path"] for r in rows if r["confidence"] is not None and r["confidence"] <= middle
    ]
    for bad in ("min_confidence=2", "max_confidence=x", "errors_only=maybe", "format=xml", "limit=0"):
        response = client.get(f"/jobs/{job_id}/results?{bad}")
        assert response.status_code == 400 and response.get_json()["error"]["code"] == "invalid_parameter", bad


def test_two_workers_share_a_job_and_agree_with_one(bulk, client, settings, tiny_dataset, tmp_path):
    folder = photos_dir(settings) / f"many-{tmp_path.name}"
    folder.mkdir(parents=True)
    for copy in range(4):
        for i, source in enumerate(images_of(tiny_dataset)):
            shutil.copy(source, folder / f"{copy}_{i:02d}_{source.name}")
    request = {"type": "predict", "input": {"folder": str(folder)}}
    sharded = client.post("/jobs", json={**request, "shard_size": 4}).get_json()["id"]
    single = client.post("/jobs", json={**request, "shard_size": 10_000}).get_json()["id"]
    sharded_job, single_job = wait_for(client, sharded, FINISHED), wait_for(client, single, FINISHED)
    assert sharded_job["status"] == single_job["status"] == "succeeded"

    shards = client.get(f"/jobs/{sharded}/shards?limit=1000").get_json()["shards"]
    assert len(shards) == 64 and {s["worker"].split("@")[0] for s in shards} == {"bulk0", "bulk1"}
    assert len(client.get(f"/jobs/{single}/shards").get_json()["shards"]) == 1

    def results(job_id: str) -> dict:
        rows = client.get(f"/jobs/{job_id}/results?limit=1000").get_json()["results"]
        return {r["path"]: (r["label"], round(r["confidence"], 4)) for r in rows}

    assert len(results(sharded)) == 256 and results(sharded) == results(single)
    assert sharded_job["result"]["labels"] == single_job["result"]["labels"]


def test_a_failing_shard_is_retried_then_its_files_fail(bulk, client, tiny_dataset):
    folder = tiny_dataset / "val" / "Milk"
    request = {"type": "predict", "model": "broken", "input": {"folder": str(folder)}}
    job = wait_for(client, client.post("/jobs", json=request).get_json()["id"], FINISHED, timeout=120)
    assert job["status"] == "failed" and job["error"]["code"] == "too_many_failures"
    assert "4 of 4 files failed" in job["error"]["message"]
    shards = client.get(f"/jobs/{job['id']}/shards").get_json()["shards"]
    assert [(s["status"], s["attempts"]) for s in shards] == [("failed", 2)]  # GROCERY_SHARD_ATTEMPTS=2
    rows = client.get(f"/jobs/{job['id']}/results").get_json()["results"]
    assert len(rows) == 4 and {r["error"]["code"] for r in rows} == {"invalid_model"}
    assert "failed 2 times" in rows[0]["error"]["message"]


def test_a_manifest_of_paths(bulk, client, tiny_dataset):
    good = [str(p) for p in images_of(tiny_dataset)[:5]]
    missing = str(tiny_dataset / "val" / "gone.jpg")
    job_id = client.post("/jobs", json={"type": "predict", "input": {"paths": [*good, missing]}}).get_json()["id"]
    job = wait_for(client, job_id, FINISHED, timeout=120)
    assert job["status"] == "failed" and job["error"]["code"] == "too_many_failures"  # 1 of 6 > 10%
    rows = {r["path"]: r for r in client.get(f"/jobs/{job_id}/results").get_json()["results"]}
    assert set(rows) == {*good, missing} and rows[missing]["error"]["code"] == "not_found"
    assert all(rows[p]["label"] in LABELS for p in good)

    tolerant = {"type": "predict", "input": {"paths": [*good, missing]}, "max_failed_fraction": 0.5}
    job = wait_for(client, client.post("/jobs", json=tolerant).get_json()["id"], FINISHED, timeout=120)
    assert job["status"] == "succeeded" and job["result"]["failed"] == 1


def test_an_upload_of_files_and_of_an_archive(bulk, client, settings, tiny_dataset):
    sources = images_of(tiny_dataset)[:3]
    files = [(io.BytesIO(p.read_bytes()), "same-name.jpg") for p in sources]
    submitted = client.post("/jobs", data={"files": files, "model": "latest"}, content_type="multipart/form-data")
    assert submitted.status_code == 202, submitted.get_json()
    job = wait_for(client, submitted.get_json()["id"], FINISHED, timeout=120)
    assert job["status"] == "succeeded" and job["result"]["total"] == 3
    stored = Path(job["params"]["input"]["folder"])
    assert stored == settings.upload_dir / job["id"] / "input"
    assert sorted(p.name for p in stored.iterdir()) == ["same-name-1.jpg", "same-name-2.jpg", "same-name.jpg"]

    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as bundle:
        for i, source in enumerate(sources):
            bundle.write(source, f"aisle-{i % 2}/{source.name}")
        bundle.writestr("__MACOSX/aisle-0/._resource-fork.jpg", b"\x00\x05\x16\x07")
        bundle.writestr("aisle-1/broken.jpg", b"not a jpeg")
    archive.seek(0)
    submitted = client.post(
        "/jobs",
        data={"archive": (archive, "photos.zip"), "max_failed_fraction": "0.5"},
        content_type="multipart/form-data",
    )
    assert submitted.status_code == 202, submitted.get_json()
    job = wait_for(client, submitted.get_json()["id"], FINISHED, timeout=120)
    assert job["status"] == "succeeded" and (job["result"]["total"], job["result"]["failed"]) == (4, 1)
    assert job["params"]["input"]["upload"] == {
        "files": 4,
        "bytes": job["params"]["input"]["upload"]["bytes"],
        "archive": "photos.zip",
    }


def bad_image_folder(root: Path, good: Path) -> dict[str, str | None]:
    """Every awkward kind of file, and what each should become (an error code, or None: classified)."""
    from PIL import Image

    root.mkdir(parents=True)
    expected = {}

    def put(name: str, outcome: str | None, write) -> None:
        write(root / name)
        expected[name] = outcome

    data = good.read_bytes()
    put("truncated.jpg", "truncated", lambda p: p.write_bytes(data[:300]))
    put("text.jpg", "not_an_image", lambda p: p.write_text("not a photo"))
    put("zero.jpg", "empty_file", lambda p: p.write_bytes(b""))
    put("bomb.png", "too_large", lambda p: Image.new("1", (30_000, 30_000)).save(p))  # ~100 kB, 900 MP
    put("huge.png", "too_large", lambda p: Image.new("1", (20_000, 20_000)).save(p))
    put("cmyk.jpg", None, lambda p: Image.open(good).convert("CMYK").save(p))
    put("sixteen-bit.png", None, lambda p: Image.fromarray(np.full((50, 60), 40_000, dtype=np.uint16)).save(p))
    put("palette-alpha.png", None, lambda p: Image.open(good).convert("P").save(p, transparency=0))
    exif = Image.Exif()
    exif[0x0112] = 6
    put("rotated.jpg", None, lambda p: Image.open(good).save(p, exif=exif.tobytes()))
    frames = [Image.open(good).convert("P"), Image.open(good).rotate(90).convert("P")]
    put("animated.gif", None, lambda p: frames[0].save(p, save_all=True, append_images=frames[1:], loop=0))
    put("loop-a.jpg", "unreadable", lambda p: os.symlink(root / "loop-b.jpg", p))
    put("loop-b.jpg", "unreadable", lambda p: os.symlink(root / "loop-a.jpg", p))
    put("dangling.jpg", "not_found", lambda p: os.symlink(root / "gone.jpg", p))
    put("socket.jpg", "unreadable", lambda p: socket.socket(socket.AF_UNIX).bind(str(p)))
    return expected


def test_awkward_files_get_their_documented_outcomes_and_memory_stays_bounded(bulk, client, settings, tiny_dataset):
    import psutil

    workers = bulk
    folder = photos_dir(settings) / "awkward"
    expected = bad_image_folder(folder, images_of(tiny_dataset)[0])
    request = {"type": "predict", "input": {"folder": str(folder)}, "max_failed_fraction": 1.0}
    job = wait_for(client, client.post("/jobs", json=request).get_json()["id"], FINISHED, timeout=120)
    assert job["status"] == "succeeded", job
    rows = {Path(r["path"]).name: r for r in client.get(f"/jobs/{job['id']}/results").get_json()["results"]}
    assert {name: r["error"] and r["error"]["code"] for name, r in rows.items()} == expected
    assert all(rows[name]["label"] in LABELS for name, outcome in expected.items() if outcome is None)
    for worker in workers:  # nothing decoded the 900-megapixel images (one would take gigabytes)
        assert psutil.Process(worker.pid).memory_info().rss < 1.5 * 2**30
