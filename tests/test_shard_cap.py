"""The shard cap where only the worker can apply it (issue #14): a folder's size is known once it is
listed. A real worker with GROCERY_MAX_JOB_SHARDS=2."""

import shutil

import factories
from conftest import (
    FINISHED,
    clean_store,
    photos_dir,
    stack_settings,
    start_worker,
    stop_worker,
    wait_for,
)


def test_a_folder_that_needs_more_shards_than_allowed_fails_and_default_shards_grow(
    make_app, database_url, redis_url, tiny_dataset, tiny_model, tmp_path
):
    settings = stack_settings(database_url, redis_url, tiny_dataset, tmp_path, max_job_shards=2, worker_threads=1)
    clean_store(database_url, redis_url)
    factories.seed_model(database_url, artifact=tiny_model)
    folder = photos_dir(settings) / "five"
    folder.mkdir(parents=True)
    for i, image in enumerate(sorted((tiny_dataset / "val").rglob("*.jpg"))[:5]):
        shutil.copy(image, folder / f"{i}.jpg")
    worker = start_worker("cap@%h", ["predict"], settings)
    try:
        client = make_app(settings).test_client()
        request = {"type": "predict", "input": {"folder": str(folder)}}
        capped = wait_for(client, client.post("/jobs", json={**request, "shard_size": 2}).get_json()["id"], FINISHED)
        assert capped["status"] == "failed" and capped["error"]["code"] == "too_many_shards", capped
        assert "GROCERY_MAX_JOB_SHARDS" in capped["error"]["message"]
        # Without a shard_size of its own, a job's shards are as large as the cap needs.
        default = wait_for(client, client.post("/jobs", json=request).get_json()["id"], FINISHED)
        assert default["status"] == "succeeded" and default["summary"]["done"] == 5, default
        assert len(client.get(f"/jobs/{default['id']}/shards").get_json()["shards"]) <= 2
    finally:
        stop_worker(worker)
