"""What the web UI needs from the API, over plain HTTP: class details and iconic images, the random
image's true labels, previews of a job's result images, and the UI's cookie (reads only)."""

import io
import json
import os
import re
import uuid
from urllib.parse import urlencode

import factories
import pytest
from conftest import write_tiny_dataset
from PIL import Image

from api.auth import TOKEN_COOKIE
from service import crud, predictions, registry, tokens
from service.db import make_engine, make_session_factory
from service.kinds import KINDS, NewJob
from service.settings import Settings


@pytest.fixture
def setup(make_app, settings, tmp_path):
    """An API with tokens required over a tiny dataset, two users, and a prediction job of alice's with
    one classified image, one failed file and two results whose files have since become unreadable."""
    data = write_tiny_dataset(tmp_path / "data", {"val": 2})
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (600, 400), (200, 30, 30)).save(photos / "red.jpg")
    (photos / "gone.jpg").write_bytes(b"not an image any more")
    os.mkfifo(photos / "pipe.jpg")  # a file replaced by a FIFO after it was classified
    with factories.store_session(settings.database_url) as session:
        alice, alice_secret = tokens.create_token(session, name="alice", scopes=factories.READ_WRITE)
        bob_secret = factories.token(session, name="bob")
        job = factories.job(session, owner_token_id=alice.id)
        rows = [
            {"path": str(photos / "red.jpg"), "label": "Apple", "class_id": 0, "confidence": 0.9, "top5": []},
            {"path": str(photos / "bad.jpg"), "error_code": "truncated", "error_message": "cut short"},
            {"path": str(photos / "gone.jpg"), "label": "Pear", "class_id": 1, "confidence": 0.6, "top5": []},
            {"path": str(photos / "pipe.jpg"), "label": "Pear", "class_id": 1, "confidence": 0.6, "top5": []},
        ]
        predictions.add_predictions(session, job_id=job.id, rows=rows)
        job_id = str(job.id)
    client = make_app(auth="required", data_dir=data).test_client()
    return client, job_id, photos, {"alice": alice_secret, "bob": bob_secret}


def as_(secret: str) -> dict:
    return {"Authorization": f"Bearer {secret}"}


def test_class_details_name_the_product_and_its_iconic_image(setup):
    client, _, _, users = setup
    coarse = client.get("/classes/Apple", headers=as_(users["bob"])).get_json()
    assert coarse == {
        "name": "Apple",
        "level": "coarse",
        "product": "Red-Apple",
        "description": "A red-apple from the tiny set.",
        "iconic_image": "/classes/Apple/iconic",
    }
    assert client.get("/classes/Green-Pear", headers=as_(users["bob"])).get_json()["level"] == "fine"
    icon = client.get("/classes/Apple/iconic", headers=as_(users["bob"]))
    assert icon.mimetype == "image/jpeg" and Image.open(io.BytesIO(icon.data)).size == (55, 48)
    missing = client.get("/classes/Durian", headers=as_(users["bob"]))
    assert missing.status_code == 404 and missing.get_json()["error"]["code"] == "class_not_found"
    assert client.get("/classes/Apple").status_code == 401


def test_the_random_image_says_what_it_really_is(setup):
    client, _, _, users = setup
    response = client.get("/random-image", headers=as_(users["bob"]))
    path = response.headers["X-Image-Path"]
    fine = path.split("/")[2]
    coarse = {"Red-Apple": "Apple", "Pink-Apple": "Apple", "Green-Pear": "Pear", "Blue-Milk": "Milk"}[fine]
    assert response.mimetype == "image/jpeg" and path.startswith("val/")
    assert response.headers["X-Label-Fine"] == fine and response.headers["X-Label-Coarse"] == coarse


def test_a_result_image_preview_is_small_and_only_for_the_jobs_own_results(setup):
    client, job_id, photos, users = setup
    alice = as_(users["alice"])
    preview = client.get(
        f"/jobs/{job_id}/image", query_string={"path": str(photos / "red.jpg"), "size": 64}, headers=alice
    )
    assert preview.status_code == 200 and preview.mimetype == "image/jpeg"
    assert Image.open(io.BytesIO(preview.data)).size == (64, 43)  # fitted, aspect kept
    assert "max-age" in preview.headers["Cache-Control"]

    def error(path, headers=alice, **query) -> tuple[int, str]:
        response = client.get(f"/jobs/{job_id}/image", query_string={"path": path, **query}, headers=headers)
        return response.status_code, response.get_json()["error"]["code"]

    assert error("/etc/passwd") == (404, "result_not_found")  # only paths the job has a result for
    assert error(str(photos / "bad.jpg")) == (422, "truncated")
    assert error(str(photos / "gone.jpg")) == (422, "unreadable_image")
    assert error(str(photos / "pipe.jpg")) == (422, "unreadable_image")  # answered, not blocked on the FIFO
    assert error(str(photos / "red.jpg"), size=5000) == (400, "invalid_parameter")
    assert error("") == (400, "invalid_parameter")
    assert error(str(photos / "red.jpg"), headers=as_(users["bob"])) == (404, "not_found")  # not bob's job
    other = client.get(f"/jobs/{uuid.uuid4()}/image", query_string={"path": "x"}, headers=alice)
    assert other.status_code == 404


def test_the_ui_cookie_reads_but_never_writes(setup):
    client, job_id, photos, users = setup
    client.set_cookie(TOKEN_COOKIE, users["alice"])
    assert client.get(f"/jobs/{job_id}").status_code == 200
    assert client.get(f"/jobs/{job_id}/results?format=csv").status_code == 200
    refused = client.post(f"/jobs/{job_id}/cancel")
    assert refused.status_code == 401  # a forged cross-site form carries the cookie, and gets nothing
    assert client.post("/jobs", json={"type": "train"}).status_code == 401
    client.set_cookie(TOKEN_COOKIE, "forged")
    assert client.get(f"/jobs/{job_id}").status_code == 401


def test_signing_in_sets_a_strict_http_only_cookie(setup):
    client, _, _, users = setup
    wrong = client.post("/ui/login", data={"token": "nope"})
    assert wrong.status_code == 401 and b"unknown or revoked" in wrong.data
    signed = client.post("/ui/login", data={"token": users["alice"]})
    assert signed.status_code == 303 and signed.headers["Location"] == "/ui/"
    cookie = signed.headers["Set-Cookie"]
    assert cookie.startswith(f"{TOKEN_COOKIE}=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    out = client.get("/ui/logout")
    assert out.status_code == 303 and f"{TOKEN_COOKIE}=;" in out.headers["Set-Cookie"]


def test_the_ui_pages_need_a_sign_in_and_can_be_turned_off(setup, make_app):
    """Issue #14: with tokens required, only the sign-in page and its assets open without one."""
    client, *_, users = setup
    anonymous = client.get("/ui/jobs")
    assert anonymous.status_code == 303 and anonymous.headers["Location"] == "/ui/login"
    signin = client.get("/ui/login")
    assert signin.status_code == 200 and b"grocery-jobs" in signin.data
    assert client.get("/ui/assets/style.css").status_code == 200
    for path in ("/ui/_dash-layout", "/ui/_dash-dependencies"):
        assert client.get(path).status_code == 401, path
    client.set_cookie(TOKEN_COOKIE, "revoked-or-made-up")
    assert client.get("/ui/").headers["Location"] == "/ui/login"
    client.set_cookie(TOKEN_COOKIE, users["alice"])
    page = client.get("/ui/")
    assert page.status_code == 200 and b"grocery-jobs" in page.data
    assert client.get("/ui/_dash-layout").status_code == 200  # the shell: no data in it
    assert make_app(auth="required", ui=False).test_client().get("/ui/").status_code == 404
    assert Settings.from_env({"GROCERY_UI": "off"}).ui is False
    with pytest.raises(ValueError, match="GROCERY_UI"):
        Settings.from_env({"GROCERY_UI": "maybe"})


def value_of(values: dict, item: dict):
    """A callback input's value: by "id.property" where one component gives two (the URL's pathname
    and search), else by component id."""
    return values.get(f"{item['id']}.{item['property']}", values.get(item["id"]))


def dash_call(client, output_part: str, values: dict) -> tuple[int, dict]:
    """POST one UI callback as the browser would: the callback whose outputs name ``output_part``,
    each input and state taking its value from ``values`` (by component id, or id.property)."""
    callback = next(c for c in client.get("/ui/_dash-dependencies").get_json() if output_part in c["output"])
    spec = callback["output"]  # "..a.children...b.data.." for several outputs, "a.children" for one
    named = [dict(zip(("id", "property"), o.split("."), strict=True)) for o in spec.strip(".").split("...")]
    outputs = named if spec.startswith("..") else named[0]
    fill = [{**item, "value": value_of(values, item)} for item in callback["inputs"]]
    body = {
        "output": callback["output"],
        "outputs": outputs,
        "inputs": fill,
        "state": [{**item, "value": value_of(values, item)} for item in callback["state"]],
        "changedPropIds": [f"{fill[0]['id']}.{fill[0]['property']}"],
    }
    response = client.post("/ui/_dash-update-component", json=body)
    return response.status_code, response.get_json(silent=True) or {}


def test_a_failing_ui_callback_says_so_on_the_page(setup):
    client, job_id, _, users = setup
    client.set_cookie(TOKEN_COOKIE, users["alice"])
    # A gallery page state no browser sends: the callback raises, and the page gets a sentence for it.
    status, answer = dash_call(client, "gallery.children", {"gallery-page": "not a page", "job-id": job_id})
    assert status == 200
    shown = json.dumps(answer["sideUpdate"]["ui-error"])
    assert "Something went wrong on the server" in shown and "Traceback" not in shown
    status, answer = dash_call(
        client, "gallery.children", {"gallery-page": {"cursor": None, "previous": []}, "job-id": job_id}
    )
    assert status == 200 and len(answer["response"]["gallery"]["children"]) == 4  # the same call, well formed


def test_a_form_sent_twice_before_its_answer_makes_one_job(setup, tmp_path):
    """The browser sends a second click with the state it has: the key the first answer has not yet replaced."""
    client, *_, users = setup
    client.set_cookie(TOKEN_COOKIE, users["alice"])
    form = {"train-submit": 1, "train-key": "key-1", "train-epochs": 2, "train-arch": "mobilenet_v3_small"}
    first = dash_call(client, "train-message.children", form)[1]["response"]
    second = dash_call(client, "train-message.children", {**form, "train-submit": 2})[1]["response"]
    shown = [json.dumps(answer["train-message"]["children"]) for answer in (first, second)]
    job_id = re.search(r"[0-9a-f-]{36}", shown[0]).group()
    assert job_id in shown[1] and first["train-key"]["data"] not in ("key-1", None)
    third = dash_call(client, "train-message.children", {**form, "train-key": first["train-key"]["data"]})[1]
    assert job_id not in json.dumps(third["response"]["train-message"])
    jobs = client.get("/jobs?type=train", headers=as_(users["alice"])).get_json()["jobs"]
    assert len(jobs) == 2 and job_id in {job["id"] for job in jobs}


def test_the_jobs_list_shows_fifty_then_older_ones_on_request(setup, database_url):
    client, job_id, _, users = setup
    engine = make_engine(database_url)
    with make_session_factory(engine)() as session:
        owner = tokens.find_token(session, secret=users["alice"]).id
        for _ in range(59):  # alice has 60 jobs in all
            crud.create_job(session, new=NewJob(kind=KINDS["train"], params={}, owner_token_id=owner))
        session.commit()
    engine.dispose()
    client.set_cookie(TOKEN_COOKIE, users["alice"])

    def listed(clicks) -> tuple[int, bool]:
        answer = dash_call(client, "jobs-table.children", {"jobs-type": "all", "jobs-more": clicks})[1]["response"]
        rows = json.dumps(answer["jobs-table"]).count('"data-job"')
        return rows, answer["jobs-more"]["hidden"]

    assert listed(None) == (50, False)
    assert listed(1) == (60, True)


def test_a_training_shows_a_sentence_before_its_first_epoch_and_charts_from_one_point_on(setup, database_url):
    client, _, _, users = setup
    with factories.store_session(database_url) as session:
        owner = tokens.find_token(session, secret=users["alice"]).id
        job_id = factories.job(session, type="train", status="running", owner_token_id=owner).id
    client.set_cookie(TOKEN_COOKIE, users["alice"])

    def drawn() -> dict:
        return dash_call(client, "training-curves.children", {"job-id": str(job_id)})[1]["response"]

    def add_epoch(epoch: int, **data) -> None:
        metrics = {
            "train_loss": 1.0 / epoch,
            "train_acc": 0.5,
            "val_loss": 1.2 / epoch,
            "val_top1": 0.6,
            "val_top5": 1.0,
        }
        with factories.store_session(database_url) as session:
            crud.add_event(session, job_id=job_id, kind="epoch", data={"epoch": epoch, "epochs": 3, **metrics, **data})

    before = drawn()  # no empty axes, no blank matrix: sentences
    assert "Waiting for the first epoch" in json.dumps(before["training-curves"])
    assert "Graph" not in json.dumps(before["training-curves"]) + json.dumps(before["confusion-area"])
    assert "first validated epoch" in json.dumps(before["confusion-area"])

    add_epoch(1)
    after = drawn()
    figures = {g["props"]["id"]: g["props"]["figure"] for g in after["training-curves"]["children"]}
    for figure in figures.values():  # the whole run on the x axis from the first point on, a legend each
        assert figure["layout"]["xaxis"]["range"] == [0.5, 3.5] and figure["layout"]["showlegend"] is True
        assert all(trace["x"] == [1] for trace in figure["data"])
    assert [t["name"] for t in figures["loss-curve"]["data"]] == ["train", "validation"]
    assert [t["name"] for t in figures["accuracy-curve"]["data"]] == ["train", "validation top-1", "validation top-5"]
    assert "Graph" not in json.dumps(after["confusion-area"]) and "No epoch validated yet" in json.dumps(after)
    assert after["training-note"]["children"] == "epoch 1 of 3: validation top-1 60.0%"

    add_epoch(2, confusion={"classes": ["Apple", "Pear"], "matrix": [[3, 1], [0, 4]]})
    matrix = next(
        c for c in drawn()["confusion-area"]["children"] if c.get("props", {}).get("id") == "confusion-matrix"
    )
    assert matrix["props"]["figure"]["data"][0]["text"] == [[3, 1], [0, 4]]


def element(tree, element_id: str) -> dict:
    """The props of the component with ``element_id`` in a callback's answer (Dash's JSON of components)."""
    found = list(elements(tree, lambda props: props.get("id") == element_id))
    assert len(found) == 1, f"{len(found)} components with id {element_id!r}"
    return found[0]


def elements(tree, wanted):
    if isinstance(tree, list):
        for item in tree:
            yield from elements(item, wanted)
    elif isinstance(tree, dict):
        props = tree.get("props")
        if isinstance(props, dict):
            if wanted(props):
                yield props
            yield from elements(props.get("children"), wanted)
        else:
            for value in tree.values():
                yield from elements(value, wanted)


def text(tree) -> str:
    """What a component says: its strings and its children's, in order."""
    if isinstance(tree, str):
        return tree
    if isinstance(tree, list):
        return "".join(text(item) for item in tree)
    if isinstance(tree, dict):
        return text(tree.get("props", {}).get("children")) if "props" in tree else text(tree.get("children"))
    return "" if tree is None else str(tree)


def page_at(client, path: str, search: str = "") -> dict:
    """The page the router draws for a URL, as the browser receives it."""
    status, answer = dash_call(client, "..page.children", {"url.pathname": path, "url.search": search})
    assert status == 200, answer
    return answer["response"]["page"]["children"]


def test_an_evaluations_page_counts_files_without_a_label_and_labels_the_model_does_not_know(
    setup, database_url, tmp_path
):
    """Every figure the page shows is the job's; files the figures leave out are counted, and each
    file in the gallery says what its true label was and how it was scored."""
    client, _, _, users = setup
    truths = ["Apple", "Apple", "Pear", "Milk", None, "Durian"]
    answers = ["Apple", "Pear", "Pear", None, "Milk", "Apple"]
    with factories.store_session(database_url) as session:
        owner = tokens.find_token(session, secret=users["alice"]).id
        model = factories.model(session, artifact=tmp_path / "model")
        job_id = str(
            factories.evaluation(session, model=model, truths=truths, answers=answers, owner_token_id=owner).id
        )
    client.set_cookie(TOKEN_COOKIE, users["alice"])
    report = client.get(f"/jobs/{job_id}").get_json()["result"]["evaluation"]
    assert (report["count"], report["unlabelled"], report["unknown_labels"]) == (4, 1, {"Durian": 1})

    drawn = page_at(client, f"/ui/jobs/{job_id}")
    assert text(element(drawn, "job-header")).count("a manifest of 6 files") == 1  # the set, as its request named it
    summary = dash_call(client, "job-summary.data", {"job-id": job_id})[1]["response"]["job-summary"]["data"]
    figures = dash_call(client, "evaluation-metrics.children", {"job-summary": summary, "job-id": job_id})[1]
    metrics = figures["response"]["evaluation-metrics"]["children"]
    assert json.loads(element(metrics, "evaluation-top1")["data-value"]) == report["top1"] == 0.5
    assert text(element(metrics, "evaluation-top1")) == "50.0%"
    assert text(element(metrics, "evaluation-unlabelled")) == "1"
    assert text(element(metrics, "evaluation-unknown")) == "1: Durian (1)"
    assert text(element(metrics, "evaluation-errors")) == "1"  # the unreadable Milk photo: a miss
    rows = {props["data-class"]: text(props["children"]) for props in elements(metrics, lambda p: "data-class" in p)}
    assert rows == {"Apple": "Apple100.0%50.0%2", "Pear": "Pear50.0%100.0%1", "Milk": "Milk–0.0%1"}
    matrix = element(metrics, "confusion-matrix")["figure"]["data"][0]
    assert matrix["text"] == report["confusion"] and matrix["x"] == report["classes"]

    classes = element(drawn, "gallery-classes")["data"]
    assert classes == model.class_names
    page = {"cursor": None, "previous": []}
    gallery = dash_call(
        client, "gallery.children", {"gallery-page": page, "job-id": job_id, "gallery-classes": classes}
    )
    tiles = elements(gallery[1]["response"]["gallery"]["children"], lambda p: "data-verdict" in p)
    assert [tile["data-verdict"] for tile in tiles] == [
        "right",
        "wrong",
        "right",
        "wrong",
        "unlabelled",
        "unknown class",
    ]


def test_the_comparison_page_draws_the_apis_answer_or_its_refusal(setup, database_url, tmp_path):
    client, _, _, users = setup
    truths = ["Apple"] * 10 + ["Pear"] * 10
    with factories.store_session(database_url) as session:
        owner = tokens.find_token(session, secret=users["alice"]).id
        a, b, unevaluated = (factories.model(session, artifact=tmp_path / name) for name in "abc")
        answers = {a: ["Apple"] * 20, b: ["Apple"] * 9 + ["Milk"] + ["Pear"] * 10}
        jobs = [
            str(factories.evaluation(session, model=m, truths=truths, answers=said, owner_token_id=owner).id)
            for m, said in answers.items()
        ]
        registry.set_alias(session, name="production", model_id=a.id)
        a, b, unevaluated = str(a.id), str(b.id), str(unevaluated.id)
    client.set_cookie(TOKEN_COOKIE, users["alice"])
    query = {"a": a, "b": b, "evaluation": jobs[0]}
    expected = client.get("/models/compare", query_string=query).get_json()
    drawn = page_at(client, "/ui/compare", "?" + urlencode(query))
    for name, key in (("compare-a-top1", "a_top1"), ("compare-b-top1", "b_top1"), ("compare-difference", "difference")):
        assert json.loads(element(drawn, name)["data-value"]) == expected[key], name
    assert text(element(drawn, "compare-difference")) == "+45.0 points"
    assert json.loads(element(drawn, "compare-ci")["data-value"]) == expected["ci95"]
    assert text(element(drawn, "compare-p")) == f"McNemar's exact test: p = {expected['mcnemar']['p_value']:.3g}"
    assert [element(drawn, f"compare-{side}")["value"] for side in "ab"] == [a, b]  # the picker holds the choice
    assert element(drawn, "compare-evaluation")["value"] == jobs[0]
    by_alias = page_at(client, "/ui/compare", "?" + urlencode({**query, "a": "production"}))  # a link may name an alias
    assert element(by_alias, "compare-a")["value"] == a
    assert json.loads(element(by_alias, "compare-a-top1")["data-value"]) == expected["a_top1"]

    refused = {**query, "b": unevaluated}
    message = client.get("/models/compare", query_string=refused).get_json()["error"]["message"]
    assert text(element(page_at(client, "/ui/compare", "?" + urlencode(refused)), "comparison")) == message

    status, answer = dash_call(client, "compare-evaluation.options", {"compare-a": a, "compare-b": b})
    options = answer["response"]["compare-evaluation"]["options"]
    assert status == 200 and [option["value"] for option in options] == jobs
    assert ["A's evaluation" in options[0]["label"], "B's evaluation" in options[1]["label"]] == [True, True]


def test_a_job_without_per_file_results_has_its_header_alone(setup, database_url, tmp_path):
    """A promotion has no gallery to draw: its page is its header (the API would answer 409 no_results)."""
    client, _, _, users = setup
    with factories.store_session(database_url) as session:
        owner = tokens.find_token(session, secret=users["alice"]).id
        model = factories.model(session, artifact=tmp_path / "model")
        params = {"model": str(model.id), "alias": "production"}
        job_id = str(factories.job(session, type="promote", params=params, model_id=model.id, owner_token_id=owner).id)
    client.set_cookie(TOKEN_COOKIE, users["alice"])
    drawn = page_at(client, f"/ui/jobs/{job_id}")
    assert "alias production" in text(element(drawn, "job-header"))
    assert not list(elements(drawn, lambda props: props.get("id") in ("gallery", "training-curves")))


def test_a_training_with_next_steps_shows_its_chain_and_where_it_stopped(setup, database_url, tmp_path):
    """train -> evaluate -> promote: the training's page lists what it asked for, each step with its
    status and link, and why the chain stopped; each step's page names the job that made it."""
    client, _, _, users = setup
    then = {
        "evaluate": {"input": {"paths": ["/photos/a.jpg"]}, "labels": ["Apple"], "label_level": "coarse"},
        "promote": "production",
        "gate": {"min_top1": 0.9, "not_worse_than": "production"},
    }
    then["evaluate"]["named"] = {"index": {"split": "val"}}  # as the request named it: what the page shows
    with factories.store_session(database_url) as session:
        owner = tokens.find_token(session, secret=users["alice"]).id
        model = factories.model(session, artifact=tmp_path / "model")
        mine = {"owner_token_id": owner, "model_id": model.id}
        training = factories.job(session, type="train", status="succeeded", next_steps=then, **mine)
        evaluation = factories.job(session, type="evaluate", status="succeeded", parent_id=training.id, **mine)
        promotion = factories.job(session, type="promote", status="failed", parent_id=evaluation.id, **mine)
        promotion.error_code, promotion.error_message = "gate_failed", "production stays where it is: top-1 0.5"
        training_id, evaluation_id, promotion_id = str(training.id), str(evaluation.id), str(promotion.id)
    client.set_cookie(TOKEN_COOKIE, users["alice"])

    chain = text(element(page_at(client, f"/ui/jobs/{training_id}"), "job-chain"))
    assert "evaluate on split val, then promote to production if top-1 at least 90.0% and not worse than" in chain
    assert "succeeded evaluate" in chain and "failed promote" in chain
    assert "The chain stopped: the promotion failed: production stays where it is: top-1 0.5" in chain
    assert evaluation_id[:8] in chain and promotion_id[:8] in chain
    header = text(element(page_at(client, f"/ui/jobs/{promotion_id}"), "job-header"))
    assert f"made by{evaluation_id[:8]}" in header
