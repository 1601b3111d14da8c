"""Results as Parquet: ?format=parquet, row groups, and a job's output.url written to a bucket by a
real worker (a real S3 server, s3_endpoint), read back with pandas and compared with the JSON results."""

import io
import json
import math
from pathlib import Path

import factories
import numpy as np
import pandas
import pyarrow.parquet as pq
import pytest
from conftest import FINISHED, clean_store, new_bucket, stack_settings, start_worker, stop_worker, wait_for

from grocery import storage
from grocery.results import Prediction
from service import exports, predictions


@pytest.fixture(scope="module")
def settings(database_url, redis_url, tiny_dataset, tmp_path_factory):
    return stack_settings(database_url, redis_url, tiny_dataset, tmp_path_factory.mktemp("parquet"), worker_threads=1)


@pytest.fixture(scope="module")
def stack(settings, tiny_model):
    """An empty store but for the tiny model, the latest."""
    clean_store(settings.database_url, settings.redis_url)
    with factories.store_session(settings.database_url) as session:
        factories.model(session, artifact=tiny_model)


@pytest.fixture(scope="module")
def worker(stack, settings, s3_endpoint):
    """One worker on the predict queue (started after s3_endpoint: it inherits the AWS variables)."""
    process = start_worker("parquet@%h", ["predict"], settings)
    yield process
    stop_worker(process)


def parquet_results(path: Path) -> list[dict]:
    """A Parquet results file as the JSON results' dicts, read with pandas (NaN and arrays undone)."""

    def plain(value):
        if isinstance(value, np.ndarray):
            return [dict(item) for item in value]
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else value

    records = pandas.read_parquet(path).to_dict("records")
    return [Prediction.from_row({k: plain(v) for k, v in record.items()}).to_dict() for record in records]


def downloaded(response, path: Path) -> Path:
    assert response.status_code == 200, response.get_data()[:300]
    assert response.mimetype == "application/vnd.apache.parquet"
    path.write_bytes(response.get_data())
    return path


def ended(client, job_id: str) -> dict:
    """The job once it has ended: its output object is written by then, and recorded with its end."""
    job = wait_for(client, job_id, FINISHED, timeout=120)
    assert "output" in job["result"], job
    return job


def test_a_job_writes_its_results_to_a_bucket(worker, client, tiny_dataset, tmp_path, s3_endpoint):
    good = sorted(str(p) for p in (tiny_dataset / "val").rglob("*.jpg"))[:5]
    paths = [*good, str(tiny_dataset / "val" / "gone.jpg")]
    url = f"s3://{new_bucket()}/runs/results.parquet"
    request = {"type": "predict", "input": {"paths": paths}, "output": {"url": url}, "max_failed_fraction": 0.5}
    submitted = client.post("/jobs", json=request)
    assert submitted.status_code == 202, submitted.get_json()
    job = ended(client, submitted.get_json()["id"])
    assert job["status"] == "succeeded" and job["params"]["output"] == {"url": url}

    local = tmp_path / "object.parquet"
    storage.download_file(url, local)
    assert job["result"]["output"] == {"url": url, "bytes": local.stat().st_size, "rows": 6}
    assert "output" not in job["summary"]
    results = client.get(f"/jobs/{job['id']}/results?limit=100").get_json()["results"]
    assert parquet_results(local) == results and len(results) == 6
    assert [r["error"]["code"] for r in results if r["error"]] == ["not_found"]

    # The same rows from the API: the whole set (its results file, Range and all), and a filtered set.
    whole = client.get(f"/jobs/{job['id']}/results?format=parquet")
    assert whole.headers["X-Row-Count"] == "6" and whole.headers["Accept-Ranges"] == "bytes"
    assert parquet_results(downloaded(whole, tmp_path / "whole.parquet")) == results
    errors = client.get(f"/jobs/{job['id']}/results?format=parquet&errors_only=true")
    assert errors.headers["X-Row-Count"] == "1"
    assert parquet_results(downloaded(errors, tmp_path / "errors.parquet")) == [r for r in results if r["error"]]

    events = client.get(f"/jobs/{job['id']}/events").get_json()["events"]
    assert [e["data"] for e in events if e["kind"] == "output"] == [job["result"]["output"]]
    stored = json.dumps([job, events])
    assert "grocery-test-secret" not in stored and "grocery-test" not in stored  # the test's AWS key pair


def test_an_upload_that_fails_keeps_the_job(worker, client, tiny_dataset):
    path = str(sorted((tiny_dataset / "val").rglob("*.jpg"))[0])
    url = "s3://no-such-bucket-here/results.parquet"
    request = {"type": "predict", "input": {"paths": [path]}, "output": {"url": url}}
    job = ended(client, client.post("/jobs", json=request).get_json()["id"])
    assert job["status"] == "succeeded" and job["result"]["done"] == 1
    assert job["result"]["output"]["url"] == url and job["result"]["output"]["error"]["code"] == "not_found"
    events = client.get(f"/jobs/{job['id']}/events").get_json()["events"]
    assert [e["data"]["error"]["code"] for e in events if e["kind"] == "output"] == ["not_found"]


@pytest.mark.parametrize(
    "url",
    ["results.parquet", "s3://", "s3:///key.parquet", "s3://bucket/results.csv", "s3://bucket/", "s3://b/a//x.parquet"],
)
def test_a_bad_output_url_is_refused(stack, client, tiny_dataset, url):
    path = str(sorted((tiny_dataset / "val").rglob("*.jpg"))[0])
    response = client.post("/jobs", json={"type": "predict", "input": {"paths": [path]}, "output": {"url": url}})
    assert response.status_code == 400, response.get_json()
    error = response.get_json()["error"]
    assert error["details"] == {"field": "output.url"} and "s3://bucket/key.parquet" in error["message"]


def test_an_upload_job_writes_its_results_to_a_bucket_too(worker, client, settings, tiny_dataset, tmp_path):
    photos = sorted((tiny_dataset / "val").rglob("*.jpg"))[:2]
    url = f"s3://{new_bucket()}/uploads/results.parquet"
    files = [(io.BytesIO(p.read_bytes()), p.name) for p in photos]
    submitted = client.post("/jobs", data={"files": files, "output_url": url}, content_type="multipart/form-data")
    assert submitted.status_code == 202, submitted.get_json()
    job = ended(client, submitted.get_json()["id"])
    assert job["status"] == "succeeded" and job["result"]["output"]["rows"] == 2
    storage.download_file(url, tmp_path / "u.parquet")
    assert sorted(r["path"].rsplit("/", 1)[-1] for r in parquet_results(tmp_path / "u.parquet")) == sorted(
        p.name for p in photos
    )
    # A bad one is refused before anything is stored.
    stored = sorted(settings.upload_dir.rglob("*"))
    bad = [(io.BytesIO(photos[0].read_bytes()), photos[0].name)]
    refused = client.post(
        "/jobs", data={"files": bad, "output_url": "s3://b/x.csv"}, content_type="multipart/form-data"
    )
    assert refused.status_code == 400 and refused.get_json()["error"]["details"] == {"field": "output.url"}
    assert sorted(settings.upload_dir.rglob("*")) == stored


def test_rows_are_written_in_row_groups(settings, tmp_path):
    top5 = [{"label": "Apple", "class_id": 0, "confidence": 0.9}, {"label": "Pear", "class_id": 1, "confidence": 0.1}]
    rows = [factories.result_row(f"/photos/{i:02d}.jpg", top5=top5) for i in range(23)]
    rows.append(factories.result_row("/photos/cut.jpg", label=None, error="truncated"))
    with factories.store_session(settings.database_url) as session:
        job = factories.job(session, status="succeeded")
        predictions.add_predictions(session, job_id=job.id, rows=rows)
    with factories.store_session(settings.database_url) as session:
        written = exports.write_parquet(session, job_id=job.id, path=tmp_path / "r.parquet", row_group_size=10)
        empty = exports.write_parquet(session, job_id=job.id, path=tmp_path / "e.parquet", label="Milk")
    assert written == 24 and empty == 0
    metadata = pq.ParquetFile(tmp_path / "r.parquet").metadata
    assert metadata.num_row_groups == 3 and metadata.num_rows == 24
    assert parquet_results(tmp_path / "r.parquet") == [Prediction.from_row(row).to_dict() for row in rows]
    assert pq.read_table(tmp_path / "e.parquet").num_rows == 0
