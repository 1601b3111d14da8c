"""The web UI in a real browser: headless Chromium (Debian's package) driven by Playwright, against
the API's own server on loopback, a real worker, PostgreSQL and Redis. Each test saves screenshots
of its pages under test-results/ui/."""

import csv
import io
import json
import os
import re
import threading
from datetime import datetime
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import factories
import numpy as np
import pytest
from conftest import (
    FINISHED,
    ROOT,
    TINY_CLASSES,
    clean_store,
    stack_settings,
    start_worker,
    stop_worker,
    wait_for,
    wait_for_runtime_choice,
    write_tiny_dataset,
)
from PIL import Image
from sqlalchemy import text
from werkzeug.serving import make_server

CHROMIUM = Path(os.environ.get("GROCERY_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOTS = ROOT / "test-results" / "ui"
COARSE_CLASSES = sorted({coarse for _, coarse, _, _ in TINY_CLASSES})
TRAIN_FORM = {"train-input-size": "64", "train-freeze": "9"}
WAIT_MS = 180_000

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists() and not os.environ.get("GROCERY_REQUIRE_BROWSER"),
    reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)",
)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), f"GROCERY_REQUIRE_BROWSER is set but {CHROMIUM} is missing"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(30_000)
    yield page
    context.close()


def serve(app):
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, app.test_client(), f"http://127.0.0.1:{server.server_port}"


@pytest.fixture(scope="module")
def service(app_for, database_url, redis_url, tiny_dataset, tiny_model, tmp_path_factory):
    """The API with the UI, authentication off (as `make run`), and one worker on both queues."""
    store = tmp_path_factory.mktemp("ui")
    readable = store / "photos" / "generated"  # inside the workers' input roots (stack_settings)
    readable.mkdir(parents=True)
    settings = stack_settings(database_url, redis_url, tiny_dataset, store)
    clean_store(database_url, redis_url)
    factories.seed_model(database_url, artifact=tiny_model)
    server, client, url = serve(app_for(settings))
    worker = start_worker("ui@%h", ["train", "predict"], settings)
    yield url, client, readable
    stop_worker(worker)
    server.shutdown()


def shot(page, name: str) -> None:
    page.screenshot(path=SCREENSHOTS / f"{name}.png", full_page=True)


def natural_width(page, selector: str) -> int:
    """>0 once the browser has really loaded and decoded the image."""
    page.wait_for_function(
        "s => { const i = document.querySelector(s); return i && i.complete && i.naturalWidth > 0 }", arg=selector
    )
    return page.eval_on_selector(selector, "i => i.naturalWidth")


def test_random_image_shows_the_photo_its_prediction_and_the_product(service, page, tiny_dataset):
    url, *_ = service
    page.goto(f"{url}/ui/")
    page.get_by_role("button", name="Random image").click()
    label = page.locator("#prediction-label")
    label.wait_for()
    assert label.inner_text() in COARSE_CLASSES
    assert re.fullmatch(r"confidence \d+\.\d%", page.locator("#prediction-confidence").inner_text())
    assert natural_width(page, "#workshop-photo") > 0
    assert natural_width(page, "#product-card img") > 0  # the predicted class's iconic image
    assert "from the tiny set" in page.locator("#product-card").inner_text()
    assert "true class:" in page.locator("figcaption").first.inner_text()
    shot(page, "workshop-random")


def test_an_uploaded_photo_gets_the_same_answer_as_the_api(service, page, tmp_path):
    url, client, _ = service
    photo = tmp_path / "my-milk.png"
    Image.fromarray(np.full((80, 90, 3), (40, 60, 200), np.uint8)).save(photo)
    expected = client.post("/predict", data={"file": (photo.open("rb"), "my-milk.png")}).get_json()
    page.goto(f"{url}/ui/")
    page.set_input_files("#photo input[type=file]", str(photo))
    page.locator("#prediction-label").wait_for()
    assert page.locator("#prediction-label").inner_text() == expected["prediction"]
    assert "my-milk.png" in page.locator("figcaption").first.inner_text()
    assert natural_width(page, "#workshop-photo") == 90
    shot(page, "workshop-upload")


def submit_prediction(page, url: str, folder: str) -> str:
    page.goto(f"{url}/ui/jobs")
    page.get_by_text("New prediction job").click()
    page.fill("#predict-folder", folder)
    page.get_by_role("button", name="Start prediction").click()
    link = page.locator("#predict-message a")
    link.wait_for()
    return link.inner_text()


def wait_for_badge(page, selector: str, status: str) -> None:
    page.locator(selector).get_by_text(status, exact=True).wait_for(timeout=WAIT_MS)


def tiles(page) -> list[dict]:
    return page.eval_on_selector_all(
        "#gallery .tile:not(.failed)",
        "ts => ts.map(t => ({label: t.dataset.label, confidence: +t.dataset.confidence}))",
    )


def test_a_prediction_job_from_the_form_finishes_and_its_gallery_filters(service, page, tiny_dataset):
    url, client, _ = service
    job_id = submit_prediction(page, url, str(tiny_dataset / "val"))
    wait_for_badge(page, f"tr[data-job='{job_id}']", "succeeded")  # seen in the live list
    shot(page, "jobs")

    page.locator(f"tr[data-job='{job_id}']").get_by_role("link", name=job_id[:8]).click()  # not its model's link
    page.wait_for_url(f"**/ui/jobs/{job_id}")
    page.locator("#class-counts .main-svg").first.wait_for()
    page.wait_for_function("() => document.querySelectorAll('#gallery .tile img').length === 16")
    results = client.get(f"/jobs/{job_id}/results?limit=100").get_json()["results"]
    assert sorted(t["label"] for t in tiles(page)) == sorted(r["label"] for r in results)
    assert natural_width(page, "#gallery .tile img") > 0  # previews come from GET /jobs/<id>/image
    shot(page, "job-predict")

    label = results[0]["label"]
    wanted = sum(r["label"] == label for r in results)
    page.locator("#gallery-label").click()
    page.get_by_role("option", name=label, exact=True).click()
    page.wait_for_function(
        "([l, n]) => { const ts = [...document.querySelectorAll('#gallery .tile')];"
        " return ts.length === n && ts.every(t => t.dataset.label === l) }",
        arg=[label, wanted],
    )
    low = sum(r["label"] == label and r["confidence"] <= 0.9 for r in results)
    page.get_by_label("below 90%").check()
    page.wait_for_function(
        "n => document.querySelectorAll('#gallery .tile').length === n || (n === 0 &&"
        " document.querySelector('#gallery').innerText.includes('No results match'))",
        arg=low,
    )
    assert all(t["label"] == label and t["confidence"] <= 0.9 for t in tiles(page))
    page.wait_for_function("() => document.querySelector('#results-csv').href.includes('max_confidence=0.9')")
    shot(page, "job-predict-filtered")

    with page.expect_download() as download:
        page.get_by_text("Download CSV").click()
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert {r["label"] for r in rows} <= {label} and len(rows) == low


@pytest.fixture(scope="module")
def slower_dataset(service, tmp_path_factory):
    """Enough images that each epoch takes a few seconds: the page is seen updating mid-run."""
    return write_tiny_dataset(service[2], {"train": 120, "val": 10}, seed=1)


def test_a_training_job_from_the_form_shows_live_curves_and_its_confusion_matrix(service, page, slower_dataset):
    url, client, _ = service
    page.goto(f"{url}/ui/jobs")
    page.get_by_text("New training job").click()
    page.fill("#train-epochs", "8")
    page.get_by_text("Advanced").click()
    for field, value in {**TRAIN_FORM, "train-data-dir": str(slower_dataset)}.items():
        page.fill(f"#{field}", value)
    page.get_by_role("button", name="Start training").click()
    job_id = page.locator("#train-message a").inner_text()
    page.goto(f"{url}/ui/jobs/{job_id}")

    seen_while_running = set()
    note = page.locator("#training-note")
    while "succeeded" not in page.locator("#job-title").inner_text():
        assert not re.search("failed|cancelled", page.locator("#job-title").inner_text())
        if match := re.match(r"epoch (\d+) of 8", note.inner_text()):
            seen_while_running.add(int(match.group(1)))
        page.wait_for_timeout(300)
    assert any(epoch < 8 for epoch in seen_while_running), "the curves never updated while the job ran"
    page.wait_for_function(
        "() => { const g = document.querySelector('#training-curves .js-plotly-plot');"
        " return g && g.data && g.data[0].x.length === 8 }"
    )
    heatmap = page.eval_on_selector("#confusion-matrix .js-plotly-plot", "g => g.data[0]")
    assert heatmap["type"] == "heatmap" and sorted(heatmap["x"]) == COARSE_CLASSES
    job = client.get(f"/jobs/{job_id}").get_json()
    assert job["status"] == "succeeded" and sum(map(sum, heatmap["text"])) == sum(
        map(sum, job["result"]["confusion"]["matrix"])
    )
    shot(page, "job-train")


def test_the_models_page_moves_production(service, page):
    url, client, _ = service
    models = client.get("/models").get_json()["models"]
    target = next(m for m in models if "production" not in m["aliases"])
    page.goto(f"{url}/ui/models")
    row = page.locator(f"tr[data-model='{target['id']}']")
    row.get_by_role("button", name="Make production").click()
    row.locator(".alias-production").wait_for()
    assert "production now points" in page.locator("#models-message").inner_text()
    assert client.get("/models/production").get_json()["id"] == target["id"]
    shot(page, "models")


def test_api_errors_are_messages_not_blank_pages(service, page, tmp_path):
    url, *_ = service
    submit_prediction_error = "outside the allowed input roots"
    page.goto(f"{url}/ui/jobs")
    page.get_by_text("New prediction job").click()
    page.fill("#predict-folder", str(tmp_path))
    page.get_by_role("button", name="Start prediction").click()
    assert submit_prediction_error in page.locator("#predict-message .message.error").inner_text()
    page.get_by_role("button", name="Start prediction").click()  # the message is replaced, not stacked
    assert page.locator("#predict-message .message").count() == 1
    shot(page, "jobs-error")
    page.goto(f"{url}/ui/jobs/00000000-0000-0000-0000-000000000000")
    assert "no job" in page.locator(".message.error").inner_text()
    page.goto(f"{url}/ui/nowhere")
    assert "No page at /ui/nowhere" in page.locator(".message.error").inner_text()


@pytest.fixture(scope="module")
def secured(service, app_for, database_url, redis_url, tiny_dataset, tmp_path_factory):
    """A second API on the same database with tokens required (the worker of `service` runs its jobs)."""
    with factories.store_session(database_url) as session:
        session.execute(text("DELETE FROM api_tokens"))  # the jobs stay: the store is shared with `service`
        made = {name: factories.token(session, name=name) for name in ("alice", "bob")}
    store = tmp_path_factory.mktemp("ui-secured")
    server, _, url = serve(app_for(stack_settings(database_url, redis_url, tiny_dataset, store, auth="required")))
    yield url, made
    server.shutdown()


def sign_in(page, url: str, secret: str) -> None:
    page.goto(f"{url}/ui/login")
    page.fill("#token", secret)
    page.click("#signin")


def test_signed_in_users_see_their_own_jobs_and_images_load_with_the_cookie(secured, page, tiny_dataset):
    url, made = secured
    page.goto(f"{url}/ui/jobs")  # issue #14: no page without a token, the sign-in page instead
    page.wait_for_url(f"{url}/ui/login")
    sign_in(page, url, "not-a-token")
    assert "unknown or revoked" in page.locator(".message.error").inner_text()

    sign_in(page, url, made["alice"])
    page.wait_for_url(f"{url}/ui/")
    job_id = submit_prediction(page, url, str(tiny_dataset / "val"))
    wait_for_badge(page, f"tr[data-job='{job_id}']", "succeeded")
    page.goto(f"{url}/ui/jobs/{job_id}")
    assert natural_width(page, "#gallery .tile img") > 0  # GET /jobs/<id>/image with the cookie
    page.get_by_text("Sign out").click()

    sign_in(page, url, made["bob"])
    page.goto(f"{url}/ui/jobs")
    page.locator("#jobs-table").get_by_text("No jobs yet.").wait_for()  # alice's job is not bob's
    page.goto(f"{url}/ui/jobs/{job_id}")
    assert "no job" in page.locator(".message.error").inner_text()
    page.goto(f"{url}/ui/models")
    page.locator(".model-row button").first.click()
    assert "lacks the 'ops' scope" in page.locator("#models-message .message.error").inner_text()
    shot(page, "models-forbidden")


def listed_jobs(page) -> list[dict]:
    return page.eval_on_selector_all(
        "#jobs-list tbody tr",
        "rs => rs.map(r => ({id: r.dataset.job, type: r.children[1].innerText, status: r.children[2].innerText}))",
    )


def every_row_shows(page, *, column: int, text: str) -> None:
    page.wait_for_function(
        "([c, t]) => [...document.querySelectorAll('#jobs-list tbody tr')].every(r => r.children[c].innerText === t)",
        arg=[column, text],
    )


def test_the_jobs_list_cancels_and_filters(service, page, slower_dataset):
    url, client, _ = service
    params = {"epochs": 200, "data_dir": str(slower_dataset), "input_size": 64, "freeze": 9}
    long = client.post("/jobs", json={"type": "train", "params": params}).get_json()
    page.goto(f"{url}/ui/jobs")
    row = f"tr[data-job='{long['id']}']"
    page.locator(row).get_by_role("button", name="Cancel").click()
    wait_for_badge(page, row, "cancelled")
    assert "cancel requested" in page.locator("#jobs-message").inner_text()

    page.locator("#jobs-type").get_by_label("predict", exact=True).check()
    every_row_shows(page, column=1, text="predict")
    assert listed_jobs(page) and long["id"] not in {job["id"] for job in listed_jobs(page)}
    page.locator("#jobs-type").get_by_label("all", exact=True).check()
    page.locator("#jobs-status").click()
    page.get_by_role("option", name="cancelled", exact=True).click()
    every_row_shows(page, column=2, text="cancelled")
    assert [job["id"] for job in listed_jobs(page)] == [long["id"]]
    shot(page, "jobs-filtered")


def test_images_uploaded_through_the_form_become_a_prediction_job(service, page, tiny_dataset):
    url, client, _ = service
    photos = sorted((tiny_dataset / "val").glob("*/*/*.jpg"))[:3]
    page.goto(f"{url}/ui/jobs")
    page.get_by_text("New prediction job").click()
    page.set_input_files("#predict-files input[type=file]", [str(p) for p in photos])
    page.locator("#predict-files-chosen").get_by_text("3 file(s)", exact=False).wait_for()
    page.get_by_role("button", name="Start prediction").click()
    job_id = page.locator("#predict-message a").inner_text()
    wait_for_badge(page, f"tr[data-job='{job_id}']", "succeeded")
    results = client.get(f"/jobs/{job_id}/results").get_json()["results"]
    assert sorted(Path(r["path"]).name for r in results) == sorted(p.name for p in photos)
    assert all(r["label"] in COARSE_CLASSES for r in results)


def fact(page, scope: str, name: str):
    """The value beside ``name`` in a list of facts (dt name, dd value) under ``scope``."""
    return page.locator(scope).locator(f"xpath=.//dt[normalize-space()='{name}']/following-sibling::dd[1]")


def shown_seconds(text: str) -> int:
    """The UI's durations back in seconds: "42 s", "3 min 05 s", "1 h 02 min"."""
    units = {"h": 3600, "min": 60, "s": 1}
    return sum(int(number) * units[unit] for number, unit in re.findall(r"(\d+) (h|min|s)\b", text))


def shown_metric(name: str, value) -> str:
    if name in {"val_top1", "val_top5", "val_fine_top1", "train_acc"}:
        return f"{value:.1%}"
    if name == "train_images_per_s":
        return f"{value:.1f}"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def test_the_jobs_list_hides_one_file_jobs_until_asked_and_shows_failure(service, page, tiny_dataset):
    url, client, readable = service
    one_file = client.post("/predict", data={"file": (io.BytesIO(factories.jpeg()), "one.jpg")}).get_json()["job_id"]
    folder = client.post("/jobs", json={"type": "predict", "input": {"folder": str(tiny_dataset / "val")}})
    no_images = readable / "no-images"
    no_images.mkdir()
    (no_images / "notes.txt").write_text("no photo here")
    failing = client.post("/jobs", json={"type": "predict", "input": {"folder": str(no_images)}}).get_json()["id"]
    assert wait_for(client, failing, FINISHED)["status"] == "failed"
    interactive = {job["id"] for job in client.get("/jobs?lane=interactive&limit=500").get_json()["jobs"]}
    assert one_file in interactive

    page.goto(f"{url}/ui/jobs")
    wait_for_badge(page, f"tr[data-job='{folder.get_json()['id']}']", "succeeded")
    assert not interactive & {job["id"] for job in listed_jobs(page)}  # lane=bulk: no one-file job listed
    failed_bar = page.locator(f"tr[data-job='{failing}'] .progress")
    assert "progress-failed" in failed_bar.get_attribute("class")
    assert failed_bar.inner_text().startswith("failed at")
    shot(page, "jobs-bulk")

    page.get_by_label("show one-file jobs").check()
    page.locator(f"tr[data-job='{one_file}']").wait_for()
    assert interactive <= {job["id"] for job in listed_jobs(page)}
    shot(page, "jobs-with-one-file-jobs")
    page.get_by_label("show one-file jobs").uncheck()
    page.locator(f"tr[data-job='{one_file}']").wait_for(state="detached")


def test_a_finished_training_leads_to_its_model_page_which_deletes_by_the_apis_rule(service, page, tiny_dataset):
    url, client, _ = service
    asked = {"epochs": 2, "input_size": 64, "freeze": 9}
    training = client.post("/jobs", json={"type": "train", "params": asked}).get_json()["id"]
    trained = wait_for(client, training, FINISHED)
    assert trained["status"] == "succeeded"
    model_id = trained["model_id"]
    # Served once over labelled folders: the job says its accuracy; the workers measure the model's runtimes.
    source = {"folder": str(tiny_dataset / "val")}
    predicting = client.post("/jobs", json={"type": "predict", "model": model_id, "input": source}).get_json()["id"]
    predicted = wait_for(client, predicting, FINISHED)
    assert predicted["status"] == "succeeded"
    assert client.put("/models/aliases/candidate", json={"model_id": model_id}).status_code == 200
    model = wait_for_runtime_choice(client, model_id)

    page.goto(f"{url}/ui/jobs/{training}")
    started, finished = (datetime.fromisoformat(trained[t]) for t in ("started_at", "finished_at"))
    shown = shown_seconds(fact(page, "#job-header", "elapsed").inner_text())
    assert abs(shown - (finished - started).total_seconds()) <= 1
    settings = trained["result"]["settings"]
    assert page.locator("#job-settings dt").all_inner_texts() == list(settings)
    for name, value in settings.items():
        shown = fact(page, "#job-settings", name).inner_text()
        unset = {"data_dir": "the service's dataset", "threads": "the cores it may use"}.get(name, "not set")
        assert shown.startswith(unset if value is None else str(value)), name
        assert shown.endswith("given") == (name in asked), name
    page.locator("#loss-curve .js-plotly-plot").wait_for()
    shot(page, "job-train-finished")

    fact(page, "#job-header", "trained model").get_by_role("link").click()
    page.wait_for_url(f"**/ui/models/{model_id}")
    assert f"Model v{model['version']}" in page.locator("#model-title").inner_text()
    assert page.locator("#model-title .alias-candidate").inner_text() == "candidate"
    for name, value in model["metrics"].items():
        cell = page.locator(f"#model-metrics tr[data-metric='{name}'] td").inner_text()
        if name == "train_seconds":
            assert shown_seconds(cell) == round(value)
        else:
            assert cell == shown_metric(name, value), name
    assert fact(page, "main", "trained by").inner_text() == training[:8]
    runtimes = model["serving"]["runtimes"]
    assert runtimes  # a worker measured them in the background
    for machine, choice in runtimes.items():
        serving = page.locator(f"#model-runtimes tr.serving[data-machine='{machine}']")
        assert serving.get_attribute("data-runtime") == choice["runtime"] and "serves here" in serving.inner_text()
    curves = page.eval_on_selector("#loss-curve .js-plotly-plot", "g => g.data.map(t => t.x.length)")
    assert curves == [2, 2]  # train and validation loss, one point an epoch
    heatmap = page.eval_on_selector("#confusion-matrix .js-plotly-plot", "g => g.data[0]")
    assert heatmap["text"] == trained["result"]["confusion"]["matrix"]
    shot(page, "model")

    refused = client.delete(f"/models/{model_id}")  # what the API says: the alias names it
    assert refused.status_code == 409
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete model").click()
    assert page.locator("#model-message .message.error").inner_text() == refused.get_json()["error"]["message"]
    shot(page, "model-delete-refused")

    page.goto(f"{url}/ui/jobs/{predicting}")
    accuracy = predicted["result"]["accuracy"]
    assert page.locator("#accuracy-top1").inner_text() == f"{accuracy['top1']:.1%}"
    ran = page.locator("#prediction-runtimes").inner_text()
    assert all(f"{name} ({count} shard" in ran for name, count in predicted["result"]["runtimes"].items())
    assert fact(page, "#job-header", "model").get_by_role("link").get_attribute("href") == f"/ui/models/{model_id}"
    shot(page, "job-predict-accuracy")

    other = next(m["id"] for m in client.get("/models").get_json()["models"] if m["id"] != model_id)
    assert client.put("/models/aliases/candidate", json={"model_id": other}).status_code == 200
    page.goto(f"{url}/ui/models/{model_id}")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete model").click()
    assert "deleted" in page.locator("#model-message .message.ok").inner_text()
    assert client.get(f"/models/{model_id}").status_code == 404


def test_a_running_training_shows_its_batches_and_cancelling(service, page, slower_dataset):
    url, client, _ = service
    params = {"epochs": 200, "data_dir": str(slower_dataset), "input_size": 64, "freeze": 9}
    job_id = client.post("/jobs", json={"type": "train", "params": params}).get_json()["id"]
    page.goto(f"{url}/ui/jobs/{job_id}")
    page.wait_for_function(
        "() => /^\\d+\\/200 epochs, batch \\d+\\/\\d+$/.test("
        "document.querySelector('#job-header .progress-label')?.innerText)",
        timeout=WAIT_MS,
    )
    assert "running" in page.locator("#job-title").inner_text()
    assert re.fullmatch(r"\d+ (s|min \d+ s) so far", fact(page, "#job-header", "elapsed").inner_text())
    assert re.fullmatch(r"about \d+ .+|estimating .+", fact(page, "#job-header", "remaining").inner_text())
    shot(page, "job-train-running")

    page.get_by_role("button", name="Cancel job").click()
    page.locator("#job-title").get_by_text("cancelling", exact=True).wait_for()
    assert page.locator("#job-cancel").count() == 0
    assert "Cancel requested" in page.locator("#job-message").inner_text()
    shot(page, "job-train-cancelling")
    wait_for_badge(page, "#job-title", "cancelled")


def data_value(page, selector: str):
    """The API's exact figure the page keeps beside the rounded one it shows."""
    return json.loads(page.locator(selector).get_attribute("data-value"))


def choose(page, dropdown: str, option) -> None:
    page.locator(dropdown).click()
    page.get_by_role("option", name=option).click()


def recall_traces(page) -> list[dict]:
    page.locator("#compare-recall .js-plotly-plot").wait_for()
    return page.eval_on_selector(
        "#compare-recall .js-plotly-plot", "g => g.data.map(t => ({name: t.name, x: t.x, y: t.y}))"
    )


def shows_the_comparison(page, client, expected: dict) -> None:
    """Every figure of GET /models/compare's answer, and each side's recall per class as its own
    evaluation job reports it."""
    page.locator("#compare-difference").wait_for()
    for side in "ab":
        top1 = expected[f"{side}_top1"]
        assert data_value(page, f"#compare-{side}-top1") == top1
        assert page.locator(f"#compare-{side}-top1").inner_text() == f"{top1:.1%}"
        assert page.locator(f"#compare-side-{side} a").first.get_attribute("title") == expected[side]["model_id"]
    difference, (low, high), p = expected["difference"], expected["ci95"], expected["mcnemar"]["p_value"]
    assert data_value(page, "#compare-difference") == difference
    assert page.locator("#compare-difference").inner_text() == f"{difference * 100:+.1f} points"
    assert data_value(page, "#compare-ci") == [low, high]
    assert f"{low * 100:+.1f} to {high * 100:+.1f} points" in page.locator("#compare-ci").inner_text()
    assert data_value(page, "#compare-p") == p and page.locator("#compare-p").inner_text().endswith(f"p = {p:.3g}")
    changed = page.locator("#compare-changed tr.changed-row")
    assert [row.get_attribute("data-class") for row in changed.all()] == [
        c["class"] for c in expected["classes_changed"]
    ]
    reports = {
        side: client.get(f"/jobs/{expected[side]['evaluation']}").get_json()["result"]["evaluation"] for side in "ab"
    }
    traces = recall_traces(page)
    assert [trace["name"][0] for trace in traces] == ["A", "B"]
    for side, trace in zip("ab", traces, strict=True):
        assert trace["x"] == [reports[side]["per_class"][name]["recall"] for name in trace["y"]]
        assert set(trace["y"]) == {name for name, s in reports[side]["per_class"].items() if s["support"]}


def test_two_models_picked_on_the_models_page_are_compared_side_by_side_as_the_api_answers(
    service, page, database_url, tmp_path
):
    url, client, _ = service
    truths = ["Apple"] * 10 + ["Pear"] * 10
    with factories.store_session(database_url) as session:
        a, b = (factories.model(session, artifact=tmp_path / name) for name in "ab")
        the_set = factories.evaluation(session, model=a, truths=truths, answers=["Apple"] * 20).id
        factories.evaluation(session, model=b, truths=truths, answers=["Apple"] * 9 + ["Milk"] + ["Pear"] * 10)
        a, b, the_set = str(a.id), str(b.id), str(the_set)
    expected = client.get("/models/compare", query_string={"a": a, "b": b, "evaluation": the_set}).get_json()
    assert (expected["a_top1"], expected["b_top1"]) == (0.5, 0.95)  # two models that differ, A and B apart

    page.goto(f"{url}/ui/models")
    choose(page, "#compare-a", re.compile(a[:8]))
    choose(page, "#compare-b", re.compile(b[:8]))
    choose(page, "#compare-evaluation", re.compile("A's evaluation"))
    page.wait_for_function("() => document.querySelector('#compare-go').href.includes('evaluation=')")
    shot(page, "models-compare-picker")
    page.locator("#compare-go").click()
    page.wait_for_url(re.compile(r"/ui/compare\?"))
    assert parse_qs(urlparse(page.url).query) == {"a": [a], "b": [b], "evaluation": [the_set]}
    shows_the_comparison(page, client, expected)
    assert "a manifest of 20 files" in page.locator("#comparison-set").inner_text()
    shot(page, "compare")

    page.goto(f"{url}/ui/compare?b={a}&a={b}&evaluation={the_set}")  # a link alone draws it, sides swapped
    swapped = client.get("/models/compare", query_string={"a": b, "b": a, "evaluation": the_set}).get_json()
    shows_the_comparison(page, client, swapped)
    assert page.locator("#compare-difference").inner_text() == "-45.0 points"
    choose(page, "#compare-a", re.compile(a[:8]))  # picked again on the page itself: the URL and figures follow
    choose(page, "#compare-b", re.compile(b[:8]))
    page.wait_for_function(f"() => document.querySelector('#compare-go').href.includes('a={a}&b={b}')")
    page.locator("#compare-go").click()
    page.locator("#compare-difference").get_by_text("+45.0 points").wait_for()
    assert parse_qs(urlparse(page.url).query) == {"a": [a], "b": [b], "evaluation": [the_set]}
    shows_the_comparison(page, client, expected)


def test_a_models_page_shows_its_card_and_evaluations_and_an_evaluation_its_figures(service, page):
    url, client, _ = service
    training = client.post("/jobs", json={"type": "train", "params": {"epochs": 1, "input_size": 64, "freeze": 9}})
    trained = wait_for(client, training.get_json()["id"], FINISHED)
    assert trained["status"] == "succeeded", trained["error"]
    model_id = trained["model_id"]
    body = {"type": "evaluate", "model": model_id, "input": {"index": {"split": "val"}}, "shard_size": 4}
    evaluation = wait_for(client, client.post("/jobs", json=body).get_json()["id"], FINISHED)
    assert evaluation["status"] == "succeeded", evaluation["error"]
    report = evaluation["result"]["evaluation"]
    card = client.get(f"/models/{model_id}/card").get_json()
    lineage = card["lineage"]
    data, code, machine = lineage["data"], lineage["code"], lineage["machine"]

    page.goto(f"{url}/ui/models/{model_id}")

    def lineage_fact(name: str) -> str:
        return fact(page, "#card-lineage", name).inner_text()

    assert lineage_fact("training set") == f"split {data['splits']} of the service dataset"
    assert lineage_fact("photos").startswith(f"{data['photos']['files']} photos, ")
    assert lineage_fact("photos digest") == data["photos"]["digest"]
    assert lineage_fact("index digest") == data["index_fingerprint"]
    assert lineage_fact("code").startswith(f"{code['package']} {code['version'] or '(version unknown)'}, commit ")
    assert lineage_fact("code").endswith(code["git_commit"] or "unknown")
    assert lineage_fact("base weights") == lineage["base_weights"]
    assert lineage_fact("parent model") == "none: trained from its base weights"
    assert lineage_fact("machine") == f"{machine['host']}: {machine['cpu']}, {machine['cores']} cores"
    assert lineage_fact("device") == machine["device"]
    assert lineage_fact("training time").startswith(f"{lineage['training_seconds'] / 60:.1f} minutes")
    page.locator("#card-settings summary").click()
    assert page.locator("#card-settings dt").all_inner_texts() == sorted(lineage["settings"])
    assert fact(page, "#card-settings", "epochs").inner_text() == "1"

    (listed,) = card["evaluations"]
    row = page.locator(f"#model-evaluations tr[data-evaluation='{evaluation['id']}']")
    assert row.locator("td").first.inner_text() == "split val"
    assert row.locator(".evaluation-top1").inner_text() == f"{listed['top1']:.1%}" == f"{report['top1']:.1%}"
    for form in ("onnx", "safetensors"):
        href = page.locator(f"#download-{form}").get_attribute("href")
        assert href == f"/models/{model_id}/download?format={form}"
        fetched = page.request.get(url + href)  # with the browser's cookies, as a click would
        assert fetched.status == 200 and fetched.body() == client.get(href).data
    shot(page, "model-card")

    row.get_by_role("link", name=evaluation["id"][:8]).click()
    page.wait_for_url(f"**/ui/jobs/{evaluation['id']}")
    page.locator("#evaluation-top1").wait_for()
    assert fact(page, "#job-header", "set").inner_text() == "split val"
    for name in ("top1", "top5", "ece"):
        assert data_value(page, f"#evaluation-{name}") == report[name], name
    assert page.locator("#evaluation-top1").inner_text() == f"{report['top1']:.1%}"
    counted = {"count": "scored files", "unlabelled": "without a label (not scored)"}
    for key, name in counted.items():
        assert fact(page, "#evaluation-counts", name).inner_text() == str(report[key])
    assert fact(page, "#evaluation-counts", "labels the model does not know (not scored)").inner_text() == "0"
    for name, stats in report["per_class"].items():
        cells = page.locator(f"#evaluation-classes tr[data-class='{name}'] td").all_inner_texts()
        shown = [f"{v:.1%}" if v is not None else "–" for v in (stats["precision"], stats["recall"])]
        assert cells == [name, *shown, str(stats["support"])], name
    heatmap = page.eval_on_selector("#confusion-matrix .js-plotly-plot", "g => g.data[0]")
    assert heatmap["text"] == report["confusion"] and heatmap["x"] == report["classes"]

    page.wait_for_function(f"() => document.querySelectorAll('#gallery .tile img').length === {report['count']}")
    shown = page.eval_on_selector_all(
        "#gallery .tile", "ts => ts.map(t => [t.dataset.label, t.dataset.trueLabel, t.dataset.verdict])"
    )
    rows = client.get(f"/jobs/{evaluation['id']}/results?limit=100").get_json()["results"]
    wanted = [[r["label"], r["true_label"], "right" if r["label"] == r["true_label"] else "wrong"] for r in rows]
    assert sorted(shown) == sorted(wanted)
    assert sum(verdict == "right" for *_, verdict in shown) / len(shown) == report["top1"]
    shot(page, "job-evaluate")
