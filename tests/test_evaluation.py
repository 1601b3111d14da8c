"""Evaluation jobs (service/kinds.py EVALUATE): a model on a labelled set, with real PostgreSQL and
Redis and a real worker; what they report against the library's own `grocery evaluate`."""

import json
import shutil

import factories
import pytest
from conftest import FINISHED, clean_store, stack_settings, start_worker, stop_worker, wait_for

from grocery.cli import main as grocery


@pytest.fixture(scope="module")
def settings(database_url, redis_url, tiny_dataset, tmp_path_factory):
    return stack_settings(database_url, redis_url, tiny_dataset, tmp_path_factory.mktemp("evaluation"))


@pytest.fixture(scope="module")
def model_id(settings, tiny_model):
    clean_store(settings.database_url, settings.redis_url)
    model = factories.seed_model(settings.database_url, artifact=tiny_model)
    worker = start_worker("evaluator@%h", ["predict"], settings)
    yield str(model)
    stop_worker(worker)


def test_an_evaluation_of_a_split_gives_grocery_evaluates_figures(
    model_id, client, tiny_dataset, tiny_model, tmp_path, capsys
):
    body = {"type": "evaluate", "model": model_id, "input": {"index": {"split": "val"}}, "shard_size": 4}
    submitted = client.post("/jobs", json=body)
    assert submitted.status_code == 202, submitted.get_json()
    job = wait_for(client, submitted.get_json()["id"], FINISHED)
    assert job["status"] == "succeeded", job["error"]
    report = job["result"]["evaluation"]
    (runtime,) = job["result"]["runtimes"]  # every shard ran on the runtime the model serves with here
    # The library's command on the same split, with the same runtime.
    args = ["evaluate", "--model", str(tiny_model), "--data-dir", str(tiny_dataset), "--split", "val"]
    assert grocery([*args, "--runtime", runtime, "--json", "--output-dir", str(tmp_path)]) == 0
    expected = json.loads(capsys.readouterr().out)
    assert (report["top1"], report["top5"], report["count"]) == (expected["top1"], expected["top5"], expected["count"])
    supports = {name: stats["support"] for name, stats in report["per_class"].items()}
    assert supports == {name: stats["support"] for name, stats in expected["per_class"].items()}
    assert report["set"] == {"index": {"split": "val"}} and report["unlabelled"] == 0 and report["unknown_labels"] == {}
    assert 0 <= report["ece"] <= 1 and sum(map(sum, report["confusion"])) == report["count"]
    # One row per file, each with its true label, exportable like a prediction's.
    rows = [json.loads(line) for line in client.get(f"/jobs/{job['id']}/results?format=jsonl").data.splitlines()]
    assert len(rows) == report["count"] == 16 and all(row["true_label"] for row in rows)
    hits = sum(row["label"] == row["true_label"] for row in rows)
    assert hits / len(rows) == report["top1"]
    # The model's card lists the evaluation.
    (listed,) = [
        e for e in client.get(f"/models/{model_id}/card").get_json()["evaluations"] if e["job_id"] == job["id"]
    ]
    assert listed["top1"] == report["top1"] and listed["set"] == {"index": {"split": "val"}}
    assert f"top-1 {report['top1']:.4f}" in client.get(f"/models/{model_id}/card?format=markdown").get_data(
        as_text=True
    )


def test_class_folders_with_an_unknown_class_and_an_unlabelled_file_report_both(
    model_id, client, settings, tiny_dataset, tmp_path
):
    photos = settings.input_roots[2] / f"labelled-{tmp_path.name}"  # not the shared tiny dataset
    for name in ("Apple", "Pear"):
        shutil.copytree(tiny_dataset / "val" / name, photos / name)
    (photos / "Durian").mkdir()
    shutil.copy(next((tiny_dataset / "val" / "Milk").rglob("*.jpg")), photos / "Durian" / "spiky.jpg")
    shutil.copy(next((tiny_dataset / "val" / "Milk").rglob("*.jpg")), photos / "loose.jpg")
    (photos / "Pear" / "notes.jpg").write_text("not a photo")
    body = {"type": "evaluate", "model": model_id, "input": {"folder": str(photos)}}
    job = wait_for(client, client.post("/jobs", json=body).get_json()["id"], FINISHED)
    assert job["status"] == "succeeded", job["error"]
    report = job["result"]["evaluation"]
    known = len(list((photos / "Apple").rglob("*.jpg"))) + len(list((photos / "Pear").rglob("*.jpg")))
    assert report["unknown_labels"] == {"Durian": 1} and report["unlabelled"] == 1
    assert report["count"] == known and report["errors"] == 1  # the unreadable file is scored as a miss
    assert job["result"]["total"] == known + 2 and job["result"]["failed"] == 1


def test_a_manifest_with_labels_and_bad_requests(model_id, client, tiny_dataset):
    apple, pear = (
        sorted((tiny_dataset / "val" / "Apple").rglob("*.jpg"))[:1]
        + sorted((tiny_dataset / "val" / "Pear").rglob("*.jpg"))[:1]
    )
    manifest = [{"path": str(apple), "label": "Apple"}, {"path": str(pear), "label": None}]
    body = {"type": "evaluate", "model": model_id, "input": {"manifest": manifest}}
    job = wait_for(client, client.post("/jobs", json=body).get_json()["id"], FINISHED)
    report = job["result"]["evaluation"]
    assert (report["count"], report["unlabelled"]) == (1, 1) and report["set"] == {"manifest": {"files": 2}}
    missing = client.post("/jobs", json={"type": "evaluate", "input": {"index": {"split": "holdout"}}})
    assert missing.status_code == 400 and missing.get_json()["error"]["details"]["field"] == "input.index.split"
    both = client.post("/jobs", json={"type": "evaluate", "input": {"folder": "x", "manifest": manifest}})
    assert both.status_code == 422
    outside = client.post(
        "/jobs", json={"type": "evaluate", "input": {"manifest": [{"path": "/etc/passwd", "label": "x"}]}}
    )
    assert outside.status_code == 400 and outside.get_json()["error"]["code"] == "path_not_allowed"
