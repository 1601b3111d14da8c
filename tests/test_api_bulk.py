"""Bulk submissions at the API: uploads, archives and folders are checked before anything is stored
or queued; limits answer 413 with the limit; results export as streams."""

import csv
import dataclasses
import io
import json
import struct
import tracemalloc
import uuid
import zipfile

import factories
import pytest
from conftest import redis_client

from service import crud, predictions
from service.kinds import QUEUES


@pytest.fixture
def settings(settings, tmp_path):
    """Photos under tmp_path/photos, the only input root; a store with one model of two classes;
    small per-job limits, so that the tests reach them."""
    with factories.store_session(settings.database_url) as session:
        factories.model(session, artifact=tmp_path / "model", arch="mobilenet_v3_small", classes=["Apple", "Pear"])
    (tmp_path / "photos" / "inner").mkdir(parents=True)
    photos = tmp_path / "photos"
    return dataclasses.replace(settings, data_dir=photos, input_roots=(photos,), max_job_files=3, max_job_bytes=10_000)


def zip_of(members: dict[str, bytes]) -> io.BytesIO:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, data in members.items():
            bundle.writestr(zipfile.ZipInfo(name), data, zipfile.ZIP_DEFLATED)
    archive.seek(0)
    return archive


def upload(client, **data):
    return client.post("/jobs", data=data, content_type="multipart/form-data")


def nothing_stored(settings, redis_url) -> bool:
    with factories.store_session(settings.database_url) as session:
        no_jobs = crud.list_jobs(session) == []
    uploads = settings.upload_dir
    queued = sum(redis_client(redis_url).llen(queue) for queue in QUEUES)
    return no_jobs and not (uploads.exists() and any(uploads.iterdir())) and not queued


@pytest.mark.parametrize(
    "members",
    [
        {"../escape.jpg": b"x"},
        {"fine.jpg": b"x", "aisle/../../escape.jpg": b"x"},
        {"/etc/cron.d/job.jpg": b"x"},
        {"C:\\Windows\\evil.jpg": b"x"},
        {"..\\escape.jpg": b"x"},
    ],
)
def test_zip_slip_is_refused(client, settings, redis_url, tmp_path, members):
    response = upload(client, archive=(zip_of(members), "photos.zip"))
    assert response.status_code == 400, response.get_json()
    error = response.get_json()["error"]
    assert error["code"] == "unsafe_archive" and "zip-slip" in error["message"]
    assert nothing_stored(settings, redis_url) and not (tmp_path / "escape.jpg").exists()


def test_archive_limits(client, settings, redis_url):
    too_many = upload(client, archive=(zip_of({f"{i}.jpg": b"x" for i in range(4)}), "a.zip"))
    assert too_many.status_code == 413 and too_many.get_json()["error"]["code"] == "too_many_files"
    assert "at most 3" in too_many.get_json()["error"]["message"]

    bomb = upload(client, archive=(zip_of({"zeros.jpg": bytes(50_000)}), "bomb.zip"))  # 50 kB from ~100 bytes
    assert bomb.status_code == 413 and bomb.get_json()["error"]["code"] == "archive_too_large"
    assert "10000 bytes" in bomb.get_json()["error"]["message"]

    # Headers that understate the size: extraction counts what it writes and refuses the archive.
    lying = zip_of({"zeros.jpg": bytes(50_000)}).getvalue()
    central = lying.index(b"PK\x01\x02")
    lying = lying[: central + 24] + struct.pack("<I", 100) + lying[central + 28 :]
    refused = upload(client, archive=(io.BytesIO(lying), "liar.zip"))
    assert refused.status_code in (400, 413) and refused.get_json()["error"]["code"] in (
        "invalid_archive",
        "archive_too_large",
    )

    not_zip = upload(client, archive=(io.BytesIO(b"just text"), "notes.zip"))
    assert not_zip.status_code == 400 and not_zip.get_json()["error"]["code"] == "invalid_archive"
    assert nothing_stored(settings, redis_url)


def test_upload_form_mistakes(client, settings, redis_url):
    image = b"\xff\xd8\xff"
    cases = [
        ({}, 400, "missing_file"),
        ({"files": (io.BytesIO(image), "a.jpg"), "archive": (zip_of({"b.jpg": image}), "b.zip")}, 400, "missing_file"),
        ({"photos": (io.BytesIO(image), "a.jpg")}, 400, "unexpected_field"),
        ({"files": (io.BytesIO(image), "a.jpg"), "colour": "red"}, 422, "validation_error"),
        ({"files": (io.BytesIO(image), "a.jpg"), "shard_size": "0"}, 422, "validation_error"),
        ({"files": (io.BytesIO(image), "a.jpg"), "model": "nonexistent"}, 404, "model_not_found"),
        ({"files": [(io.BytesIO(image), f"{i}.jpg") for i in range(4)]}, 413, "too_many_files"),
    ]
    for data, status, code in cases:
        response = upload(client, **data)
        assert (response.status_code, response.get_json()["error"]["code"]) == (status, code), data
    assert nothing_stored(settings, redis_url)


def test_an_accepted_upload_is_stored_then_queued(client, settings, redis_url):
    photo = factories.jpeg()  # one photo is enough for an upload to be kept; the other file fails alone
    response = upload(client, files=[(io.BytesIO(photo), "../../a.jpg"), (io.BytesIO(b"two"), "a.jpg")])
    assert response.status_code == 202, response.get_json()
    job = response.get_json()
    folder = settings.upload_dir / job["id"] / "input"
    assert job["params"]["input"] == {"folder": str(folder), "upload": {"files": 2, "bytes": len(photo) + 3}}
    assert sorted(p.name for p in folder.iterdir()) == ["a-1.jpg", "a.jpg"]  # names cannot climb out
    # Two files: a small job, on the interactive lane (service.contract).
    assert job["lane"] == "interactive" and redis_client(redis_url).llen("interactive") == 1


def test_folders_and_manifests_stay_inside_the_roots(client, settings, tmp_path):
    photos = settings.data_dir
    (photos / "escape").symlink_to(tmp_path / "uploads" / ".." / "..")
    for folder in ("/etc", f"{photos}/../..", str(photos / "escape"), f"{photos}/inner/../../models"):
        response = client.post("/jobs", json={"type": "predict", "input": {"folder": folder}})
        assert response.status_code == 400 and response.get_json()["error"]["code"] == "path_not_allowed", folder
        assert "GROCERY_INPUT_ROOTS" in response.get_json()["error"]["message"]
    manifest = {"type": "predict", "input": {"paths": [str(photos / "a.jpg"), "/etc/passwd"]}}
    refused = client.post("/jobs", json=manifest)
    assert refused.status_code == 400 and "input.paths" in refused.get_json()["error"]["message"]
    too_many = {"type": "predict", "input": {"paths": [str(photos / f"{i}.jpg") for i in range(4)]}}
    response = client.post("/jobs", json=too_many)
    assert response.status_code == 413 and "GROCERY_MAX_JOB_FILES" in response.get_json()["error"]["message"]
    ok = client.post("/jobs", json={"type": "predict", "input": {"folder": str(photos / "inner"), "pattern": "*.png"}})
    assert ok.status_code == 202 and ok.get_json()["params"]["input"]["pattern"] == "*.png"


ROWS = 20_000


@pytest.fixture
def finished_job(settings):
    """A prediction job holding 20,000 result rows, one in ten an error."""
    with factories.store_session(settings.database_url) as session:
        job = factories.job(session)
        rows = [
            {
                "path": f"/photos/aisle-{i // 1000}/img_{i:05d}.jpg",
                "label": None if i % 10 == 0 else ("Apple" if i % 3 else "Pear"),
                "class_id": None if i % 10 == 0 else (0 if i % 3 else 1),
                "confidence": None if i % 10 == 0 else round(0.5 + (i % 500) / 1000, 3),
                "top5": None if i % 10 == 0 else [{"label": "Apple", "class_id": 0, "confidence": 0.9}],
                "error_code": "truncated" if i % 10 == 0 else None,
                "error_message": "the file ends early, mid-image" if i % 10 == 0 else None,
            }
            for i in range(ROWS)
        ]
        for start in range(0, ROWS, 2000):
            predictions.add_predictions(session, job_id=job.id, rows=rows[start : start + 2000])
        session.commit()
        return job.id


def streamed(client, url: str) -> tuple[str, int]:
    """The body of a streamed response, and the most memory Python held while producing it."""
    tracemalloc.start()
    try:
        response = client.get(url, buffered=False)
        assert response.status_code == 200 and response.is_streamed
        size, chunks = 0, []
        for chunk in response.response:
            chunks.append(chunk)
            size += len(chunk)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return b"".join(chunks).decode(), peak


def test_exports_stream_the_whole_set_in_bounded_memory(client, finished_job):
    body, peak = streamed(client, f"/jobs/{finished_job}/results?format=csv")
    rows = list(csv.DictReader(io.StringIO(body)))
    assert len(rows) == ROWS and list(rows[0]) == [
        "path",
        "label",
        "class_id",
        "confidence",
        "top5",
        "error_code",
        "error_message",
        "true_label",  # an evaluation's rows fill it; a prediction's leave it empty
    ]
    assert (
        rows[0]["error_code"] == "truncated"
        and rows[1]["label"] == "Apple"
        and json.loads(rows[1]["top5"])[0]["class_id"] == 0
    )
    # The chunks are collected here too, so peak includes the body itself (len(body) bytes); the
    # rows as ORM objects all at once would take several times more.
    assert peak < len(body) + 8 * 2**20, (peak, len(body))

    body, peak = streamed(client, f"/jobs/{finished_job}/results?format=jsonl&errors_only=true")
    lines = [json.loads(line) for line in body.splitlines()]
    assert len(lines) == ROWS // 10 and {line["error"]["code"] for line in lines} == {"truncated"}

    body, _ = streamed(client, f"/jobs/{finished_job}/results?format=csv&label=Pear&min_confidence=0.9")
    pears = list(csv.DictReader(io.StringIO(body)))
    assert pears and all(r["label"] == "Pear" and float(r["confidence"]) >= 0.9 for r in pears)


def test_results_of_an_unknown_job(client):
    assert client.get(f"/jobs/{uuid.uuid4()}/results?format=csv").status_code == 404
    assert client.get(f"/jobs/{uuid.uuid4()}/shards").status_code == 404


def test_injection_in_filters_and_sorts_is_inert(client, finished_job, database_url):
    attacks = [
        "' OR 1=1 --",
        "Apple'; DROP TABLE predictions; --",
        'Apple" OR "1"="1',
        "%27%20OR%201=1",
    ]
    for attack in attacks:
        response = client.get(f"/jobs/{finished_job}/results", query_string={"label": attack})
        assert response.status_code == 200 and response.get_json()["results"] == []
        listing = client.get("/jobs", query_string={"status": attack})
        assert listing.status_code == 400 and listing.get_json()["error"]["code"] == "invalid_parameter"
        ordered = client.get("/jobs", query_string={"type": attack, "cursor": attack})
        assert ordered.status_code == 400
    for query in ("min_confidence=0.5;DROP TABLE jobs", "limit=1;DELETE FROM jobs", "cursor=1 OR 1=1"):
        assert client.get(f"/jobs/{finished_job}/results?{query}").status_code == 400, query
    with factories.store_session(database_url) as session:
        assert len(predictions.list_predictions(session, job_id=finished_job, limit=ROWS + 1)) == ROWS
        assert crud.get_job(session, job_id=finished_job) is not None


def test_an_upload_or_a_predict_without_an_image_is_refused_before_any_job(client, settings, redis_url):
    text = upload(client, files=[(io.BytesIO(b"shopping list: apples"), "list.txt")])
    assert text.status_code == 422 and text.get_json()["error"]["code"] == "no_images"
    zipped = upload(client, archive=(zip_of({"notes/a.txt": b"no photo here"}), "notes.zip"))
    assert zipped.status_code == 422 and zipped.get_json()["error"]["code"] == "no_images"
    predicted = client.post("/predict", data={"file": (io.BytesIO(b"not a photo"), "shelf.jpg")})
    error = predicted.get_json()["error"]
    assert predicted.status_code == 422 and error["code"] == "not_an_image" and "shelf.jpg" in error["message"]
    assert str(settings.upload_dir) not in error["message"]
    assert nothing_stored(settings, redis_url)


def test_the_jobs_list_can_leave_out_one_file_interactive_jobs(client, settings):
    photos = settings.data_dir
    (photos / "a.jpg").write_bytes(factories.jpeg())
    one = client.post("/jobs", json={"type": "predict", "input": {"paths": [str(photos / "a.jpg")]}}).get_json()
    folder = client.post("/jobs", json={"type": "predict", "input": {"folder": str(photos)}}).get_json()
    assert (one["lane"], folder["lane"]) == ("interactive", "bulk")
    assert [job["id"] for job in client.get("/jobs?lane=bulk").get_json()["jobs"]] == [folder["id"]]
    assert {job["id"] for job in client.get("/jobs").get_json()["jobs"]} == {one["id"], folder["id"]}
    assert client.get("/jobs?lane=fast").status_code == 400
