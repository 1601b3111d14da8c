"""Bounds per request and per owner (issue #14): shard sizes and counts, archives checked from their
end record, clashing members, form parts, and quotas per token (429 with Retry-After)."""

import dataclasses
import io
import struct
import warnings
import zipfile

import factories
import pytest


def as_(secret: str) -> dict:
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def settings(settings, tmp_path):
    """Tokens required; photos under tmp_path/photos, the only input root; shard, upload and
    per-token limits small enough to reach."""
    photos = tmp_path / "photos"
    limits = dict(min_shard_size=2, max_job_shards=3, max_upload_files=3, token_max_active_jobs=4)
    return dataclasses.replace(settings, auth="required", data_dir=photos, input_roots=(photos,), **limits)


@pytest.fixture
def bounded(make_app, settings, tmp_path):
    """Ten photos, one model, two plain tokens and a small one with quotas of its own."""
    photos = settings.data_dir
    photos.mkdir()
    for i in range(10):
        (photos / f"{i}.jpg").write_bytes(b"x")
    with factories.store_session(settings.database_url) as session:
        factories.model(session, artifact=tmp_path / "model")
        made = {
            "a": factories.token(session, name="a"),
            "b": factories.token(session, name="b"),
            "small": factories.token(session, name="small", max_active_jobs=2, max_active_files=5),
        }
    return make_app().test_client(), made, settings, photos


def manifest(photos, count: int, **options) -> dict:
    return {"type": "predict", "input": {"paths": [str(photos / f"{i}.jpg") for i in range(count)]}, **options}


def upload(client, secret: str, **data):
    return client.post("/jobs", data=data, content_type="multipart/form-data", headers=as_(secret))


def zip_of(names: list[str]) -> io.BytesIO:
    archive = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate names these tests want
        with zipfile.ZipFile(archive, "w") as bundle:
            for name in names:
                bundle.writestr(name, b"" if name.endswith("/") else factories.jpeg())
    archive.seek(0)
    return archive


def test_shard_size_has_a_floor_and_a_job_a_shard_cap(bounded):
    client, made, _, photos = bounded
    for response in (
        client.post("/jobs", json=manifest(photos, 4, shard_size=1), headers=as_(made["a"])),
        upload(client, made["a"], files=[(io.BytesIO(b"x"), "a.jpg")], shard_size="1"),
        client.post("/jobs", json=manifest(photos, 10, shard_size=2), headers=as_(made["a"])),  # 5 shards > 3
    ):
        assert response.status_code == 400, response.get_json()
        error = response.get_json()["error"]
        assert error["code"] == "invalid_parameter" and error["details"]["field"] == "shard_size"
    assert (
        "GROCERY_MIN_SHARD_SIZE"
        in client.post("/jobs", json=manifest(photos, 4, shard_size=1), headers=as_(made["a"])).get_json()["error"][
            "message"
        ]
    )
    assert client.post("/jobs", json=manifest(photos, 6, shard_size=2), headers=as_(made["a"])).status_code == 202
    folder = {"type": "predict", "input": {"folder": str(photos)}, "shard_size": 2}
    assert client.post("/jobs", json=folder, headers=as_(made["a"])).status_code == 202  # the listing enforces it


def test_archives_are_measured_from_their_end_record_before_they_are_parsed(bounded):
    client, made, _, _ = bounded
    # An end record that claims a million entries over a central directory of garbage: refused for
    # its count (413), which only the end record says; parsing would have found it unreadable (400).
    claims = b"garbage" * 10 + struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 0xFFF0, 0xFFF0, 70, 0, 0)
    response = upload(client, made["a"], archive=(io.BytesIO(claims), "huge.zip"))
    assert response.status_code == 413 and response.get_json()["error"]["code"] == "too_many_files"
    # A central directory far larger than its entries could need.
    bloated = b"garbage" * 10 + struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 2, 2, 50 * 2**20, 0, 0)
    response = upload(client, made["a"], archive=(io.BytesIO(bloated), "bloated.zip"))
    assert response.status_code == 413 and response.get_json()["error"]["code"] == "archive_too_large"
    # ZIP64: past 65,535 entries the count lives in the ZIP64 end record.
    many = io.BytesIO()
    with zipfile.ZipFile(many, "w") as bundle:
        for i in range(70_000):
            bundle.writestr(f"{i}.jpg", b"")
    many.seek(0)
    response = upload(client, made["a"], archive=(many, "many.zip"))
    assert response.status_code == 413 and "70000 entries" in response.get_json()["error"]["message"]
    # Folders and macOS copies beside the files are fine, within twice the file limit.
    ok = upload(
        client, made["a"], archive=(zip_of(["a/", "a/1.jpg", "__MACOSX/", "__MACOSX/._1.jpg", "2.jpg"]), "ok.zip")
    )
    assert ok.status_code == 202, ok.get_json()
    not_zip = upload(client, made["a"], archive=(io.BytesIO(b"just text"), "notes.zip"))
    assert not_zip.status_code == 400 and not_zip.get_json()["error"]["code"] == "invalid_archive"


@pytest.mark.parametrize(
    "names, code",
    [
        (["a.jpg", "a.jpg"], "duplicate_member"),
        (["a.jpg", "a.jpg/b.jpg"], "clashing_members"),
        (["a.jpg/b.jpg", "a.jpg"], "clashing_members"),
        (["shelf/", "shelf"], "clashing_members"),
        (["x/./a.jpg", "x/a.jpg"], "duplicate_member"),
    ],
)
def test_duplicate_or_clashing_members_are_refused(bounded, names, code):
    client, made, settings, _ = bounded
    response = upload(client, made["a"], archive=(zip_of(names), "clash.zip"))
    assert response.status_code == 400 and response.get_json()["error"]["code"] == code, response.get_json()
    assert not settings.upload_dir.exists() or not any(settings.upload_dir.iterdir())  # nothing kept


def test_form_parts_are_capped_from_the_file_limit(bounded):
    client, made, _, _ = bounded
    too_many = upload(client, made["a"], files=[(io.BytesIO(b"x"), f"{i}.jpg") for i in range(4)])
    assert too_many.status_code == 413
    parts = {f"field{i}": "x" for i in range(40)}  # 3 files + 16 fields at most
    assert upload(client, made["a"], **parts).status_code == 413


def test_quotas_per_token_answer_429_with_retry_after(bounded):
    client, made, _, photos = bounded
    small = as_(made["small"])
    first = client.post("/jobs", json=manifest(photos, 2), headers=small)
    second = client.post("/jobs", json=manifest(photos, 2), headers=small)
    assert first.status_code == 202 and second.status_code == 202
    refused = client.post("/jobs", json={"type": "train"}, headers=small)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
    assert refused.get_json()["error"]["code"] == "too_many_jobs"
    predict = client.post("/predict", data={"file": (io.BytesIO(b"x"), "a.jpg")}, headers=small)
    assert predict.status_code == 429
    # Another token is not held back by this one's jobs.
    assert client.post("/jobs", json={"type": "train"}, headers=as_(made["b"])).status_code == 202
    # Files in flight: 4 of 5 are taken, a third job of 2 files would pass them (once a job slot is free).
    client.post(f"/jobs/{first.get_json()['id']}/cancel", headers=small)
    files = client.post("/jobs", json=manifest(photos, 4), headers=small)
    assert files.status_code == 429 and files.get_json()["error"]["code"] == "too_many_files_in_flight"
    assert "Retry-After" in files.headers
    assert client.post("/jobs", json=manifest(photos, 3), headers=small).status_code == 202
    never = client.post("/jobs", json=manifest(photos, 6), headers=small)  # more than its quota alone
    assert never.status_code == 413 and "Retry-After" not in never.headers
    # The service's default quota (GROCERY_TOKEN_MAX_ACTIVE_JOBS, here 4) for tokens without their own.
    for _ in range(3):
        assert client.post("/jobs", json={"type": "train"}, headers=as_(made["b"])).status_code == 202
    assert client.post("/jobs", json={"type": "train"}, headers=as_(made["b"])).status_code == 429
