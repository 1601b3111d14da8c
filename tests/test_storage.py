"""Buckets as inputs, against a real S3 API server (moto's server mode) on loopback: a prefix with
nested keys and a bad object classified like a folder, manifests of object URLs, and what the roots
refuse."""

import dataclasses
import json
import os

import factories
import pytest
from conftest import FINISHED, clean_store, new_bucket, stack_settings, start_worker, stop_worker, wait_for

from grocery import storage
from grocery.listing import name_matcher
from service import confinement


@pytest.fixture(scope="module")
def photos_bucket(s3_endpoint, tiny_dataset) -> str:
    """A bucket of the tiny dataset's photos under team/ (nested keys), a text file named .jpg, an
    object of another type, and photos outside team/."""
    name = new_bucket()
    storage.upload_tree(tiny_dataset / "train", f"s3://{name}/team/")
    storage.write_bytes(f"s3://{name}/team/shelf/notes.jpg", b"a shopping list, not a photo")
    storage.write_bytes(f"s3://{name}/team/readme.txt", b"not an image extension: not listed")
    storage.upload_tree(tiny_dataset / "val", f"s3://{name}/private/")
    return name


@pytest.fixture(scope="module")
def settings(database_url, redis_url, tiny_dataset, tmp_path_factory, photos_bucket):
    base = stack_settings(database_url, redis_url, tiny_dataset, tmp_path_factory.mktemp("buckets"))
    return dataclasses.replace(base, input_roots=(*base.input_roots, f"s3://{photos_bucket}/team/"))


@pytest.fixture(scope="module")
def worker(settings, tiny_model):
    clean_store(settings.database_url, settings.redis_url)
    with factories.store_session(settings.database_url) as session:
        factories.model(session, artifact=tiny_model)
    process = start_worker("bucket@%h", ["predict"], settings)
    yield process
    stop_worker(process)


def results(client, job_id: str) -> dict[str, dict]:
    rows = client.get(f"/jobs/{job_id}/results?limit=1000").get_json()["results"]
    return {row["path"]: row for row in rows}


def test_a_prefix_is_listed_in_key_order_and_filtered_by_name(photos_bucket, tiny_dataset):
    team = f"s3://{photos_bucket}/team/"
    listed = list(storage.list_objects(team, matches=name_matcher(None)))
    local = sorted(p.relative_to(tiny_dataset / "train").as_posix() for p in (tiny_dataset / "train").rglob("*.jpg"))
    assert listed == sorted([team + key for key in local] + [team + "shelf/notes.jpg"])
    assert list(storage.list_objects(f"s3://{photos_bucket}/team", recursive=False)) == [team + "readme.txt"]
    assert list(storage.list_objects(team, matches=name_matcher("*.txt"))) == [team + "readme.txt"]


def test_a_prefix_is_classified_like_a_folder_and_a_bad_object_is_one_error_row(
    worker, client, photos_bucket, tiny_dataset
):
    team = f"s3://{photos_bucket}/team/"
    submitted = client.post("/jobs", json={"type": "predict", "input": {"url": team}, "shard_size": 16})
    assert submitted.status_code == 202, submitted.get_json()
    job = wait_for(client, submitted.get_json()["id"], FINISHED, timeout=180)
    assert job["status"] == "succeeded", job["error"]

    rows = results(client, job["id"])
    photos = len(list((tiny_dataset / "train").rglob("*.jpg")))
    assert len(rows) == photos + 1 == job["summary"]["total"]
    assert all(path.startswith(team) for path in rows)
    assert {path: row["error"]["code"] for path, row in rows.items() if row["error"]} == {
        team + "shelf/notes.jpg": "not_an_image"
    }
    # The colour of each class decides its label: the tiny model reads objects as it reads files.
    correct = [row["label"] == path.split("/")[-3] for path, row in rows.items() if not row["error"]]
    assert len(correct) == photos and sum(correct) >= 0.9 * photos, sum(correct)
    assert client.get(f"/jobs/{job['id']}/shards").get_json()["shards"][0]["runtime"]


def test_a_manifest_of_object_urls_reports_a_missing_object_as_its_row(worker, client, photos_bucket):
    team = f"s3://{photos_bucket}/team/"
    first = next(storage.list_objects(team + "Apple/"))
    paths = [first, team + "Apple/no-such-photo.jpg"]
    submitted = client.post("/jobs", json={"type": "predict", "input": {"paths": paths}})
    assert submitted.status_code == 202, submitted.get_json()
    job = wait_for(client, submitted.get_json()["id"], FINISHED, timeout=120)
    rows = results(client, job["id"])
    assert rows[first]["error"] is None and rows[first]["top5"][0]["label"] == rows[first]["label"]
    assert rows[paths[1]]["error"]["code"] == "not_found" and "no such object" in rows[paths[1]]["error"]["message"]


def test_credentials_reach_no_job_event_result_or_log(worker, client, photos_bucket):
    job_id = client.post("/jobs", json={"type": "predict", "input": {"url": f"s3://{photos_bucket}/team/Milk/"}})
    job = wait_for(client, job_id.get_json()["id"], FINISHED, timeout=120)
    assert job["status"] == "succeeded", job
    seen = [
        json.dumps(job),
        json.dumps(client.get(f"/jobs/{job['id']}/events").get_json()),
        client.get(f"/jobs/{job['id']}/results?format=jsonl").get_data(as_text=True),
        "".join(worker.log_tail),
    ]
    secrets = (os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"])
    assert not [secret for secret in secrets for text in seen if secret in text]


@pytest.mark.parametrize(
    ("source", "status", "code"),
    [
        ({"url": "s3://BUCKET/private/"}, 400, "path_not_allowed"),  # a prefix outside the roots
        ({"url": "s3://BUCKET/team-2/"}, 400, "path_not_allowed"),  # team-2/ is not under team/
        ({"url": "s3://BUCKET/team/../private/"}, 400, "invalid_url"),
        ({"url": "s3://BUCKET/team/empty/"}, 400, "path_not_found"),  # nothing there: a typo, say so
        ({"url": "s3://no-such-bucket-here/team/"}, 400, "path_not_allowed"),
        ({"url": "http://example.com/photos/"}, 422, "validation_error"),
        ({"url": "s3://BUCKET/team/", "folder": "/tmp"}, 422, "validation_error"),
        ({"paths": ["s3://BUCKET/private/Apple/x.jpg"]}, 400, "path_not_allowed"),
    ],
)
def test_urls_outside_the_roots_or_malformed_are_refused(client, photos_bucket, source, status, code):
    source = json.loads(json.dumps(source).replace("BUCKET", photos_bucket))
    response = client.post("/jobs", json={"type": "predict", "input": source})
    assert response.status_code == status, response.get_json()
    error = response.get_json()["error"]
    assert error["code"] == code, error
    if status == 400:
        assert error["details"]["field"].startswith("input.") and "s3://" in error["message"]


def test_roots_keep_object_prefixes_apart_from_folders(settings, photos_bucket, tmp_path):
    from service.settings import Settings

    value = f"{tmp_path}:s3://{photos_bucket}/team/:s3://{photos_bucket}/other"
    roots = Settings.from_env({"GROCERY_INPUT_ROOTS": value}).input_roots
    assert roots == (tmp_path.resolve(), f"s3://{photos_bucket}/team/", f"s3://{photos_bucket}/other")
    scope = confinement.request_scope(dataclasses.replace(settings, input_roots=roots), None)
    assert scope.allows(f"s3://{photos_bucket}/other/a.jpg") and not scope.allows(f"s3://{photos_bucket}/others/a.jpg")
    assert not scope.allows(f"s3://{photos_bucket}/team/./a.jpg")


def test_a_token_may_narrow_to_a_prefix_inside_the_roots(settings, photos_bucket):
    team = f"s3://{photos_bucket}/team/"
    assert confinement.checked_token_roots([team + "Apple"], settings) == [team + "Apple/"]
    with pytest.raises(ValueError, match="not inside the service's input roots"):
        confinement.checked_token_roots([f"s3://{photos_bucket}/private/"], settings)
    scope = confinement.request_scope(settings, [team + "Apple/"])
    assert scope.allows(team + "Apple/a.jpg") and not scope.allows(team + "Milk/a.jpg")
