"""GET /models/compare: two models' evaluations of one set, paired file by file, against figures
worked out by hand (McNemar's exact p-value from the binomial table; the bootstrap's interval against
the normal approximation it should be close to)."""

import math

import factories

from grocery.evaluation import mcnemar_exact, paired_bootstrap

TRUTHS = ["Apple"] * 10 + ["Pear"] * 10
A_SAYS = ["Apple"] * 20  # right on the ten apples only
B_SAYS = ["Apple"] * 9 + ["Milk"] + ["Pear"] * 10  # one apple worse, ten pears better


def evaluation(session, model, answers: list[str]):
    return factories.evaluation(session, model=model, truths=TRUTHS, answers=answers)


def test_two_models_on_one_set_give_the_hand_computed_difference_interval_and_p_value(client, settings, tmp_path):
    with factories.store_session(settings.database_url) as session:
        a, b = factories.model(session, artifact=tmp_path / "a"), factories.model(session, artifact=tmp_path / "b")
        a_job = evaluation(session, a, A_SAYS)
        evaluation(session, b, B_SAYS)
        ids = str(a.id), str(b.id), str(a_job.id)
    report = client.get(
        "/models/compare", query_string=dict(zip(("a", "b", "evaluation"), ids, strict=True))
    ).get_json()
    assert "files" in report, report
    assert (report["files"], report["a_top1"], report["b_top1"]) == (20, 0.5, 0.95)
    assert report["difference"] == 0.45
    # Discordant files: 1 only A got right, 10 only B: p = 2 * (C(11,0) + C(11,1)) / 2^11.
    assert report["mcnemar"] == {"a_only": 1, "b_only": 10, "p_value": 2 * 12 / 2048}
    # Per file +1 ten times, -1 once, 0 nine times: the mean's standard error is sqrt(0.3475 / 20).
    low, high = report["ci95"]
    margin = 1.96 * math.sqrt((11 / 20 - 0.45**2) / 20)
    assert abs(low - (0.45 - margin)) < 0.03 and abs(high - (0.45 + margin)) < 0.03
    assert report["classes_changed"][0] == {"class": "Pear", "files": 10, "a_top1": 0.0, "b_top1": 1.0, "change": 1.0}
    assert report["a"]["model_id"] == ids[0] and report["b"]["model_id"] == ids[1]


def test_the_statistics_are_the_tables_and_the_seeds(settings):
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(0, 6) == 2 / 64  # the smallest count that reaches p < 0.05
    assert paired_bootstrap(10, 1, 20, resamples=2000, seed=7) == paired_bootstrap(10, 1, 20, resamples=2000, seed=7)
    assert paired_bootstrap(0, 0, 20, resamples=100, seed=0) == [0.0, 0.0]


def test_a_model_without_an_evaluation_of_the_set_is_a_409_that_says_what_to_run(client, settings, tmp_path):
    with factories.store_session(settings.database_url) as session:
        a, b = factories.model(session, artifact=tmp_path / "a"), factories.model(session, artifact=tmp_path / "b")
        a_job = evaluation(session, a, A_SAYS)
        ids = str(a.id), str(b.id), str(a_job.id)
    refused = client.get("/models/compare", query_string=dict(zip(("a", "b", "evaluation"), ids, strict=True)))
    error = refused.get_json()["error"]
    assert refused.status_code == 409 and error["code"] == "not_evaluated" and error["details"]["model_id"] == ids[1]
    assert client.get("/models/compare?a=latest").status_code == 400


def test_a_gate_moves_an_alias_only_when_it_holds_and_says_why_when_not(client, settings, tmp_path):
    with factories.store_session(settings.database_url) as session:
        a, b, c = (factories.model(session, artifact=tmp_path / name) for name in "abc")
        a_job = evaluation(session, a, A_SAYS)  # 0.5
        evaluation(session, b, B_SAYS)  # 0.95
        evaluation(session, c, A_SAYS)  # 0.5
        a, b, c, the_set = str(a.id), str(b.id), str(c.id), str(a_job.id)
    assert client.put("/models/aliases/production", json={"model_id": a}).status_code == 200
    gate = {"evaluation": the_set, "min_top1": 0.9, "not_worse_than": "production"}
    moved = client.put("/models/aliases/production", json={"model_id": b, "gate": gate})
    assert moved.status_code == 200 and moved.get_json()["id"] == b
    refused = client.put("/models/aliases/production", json={"model_id": c, "gate": {**gate, "min_top1": None}})
    error = refused.get_json()["error"]
    assert refused.status_code == 409 and error["code"] == "gate_failed"
    figures = error["details"]["figures"]
    assert figures["model"]["top1"] == 0.5 and figures["not_worse_than"]["top1"] == 0.95
    assert figures["not_worse_than"]["model_id"] == b and "below production's 0.9500" in error["message"]
    assert client.get("/models/production").get_json()["id"] == b  # nothing moved
    # Within the margin it passes; below the floor it does not, whatever else holds.
    lenient = {**gate, "min_top1": None, "margin": 0.5}
    assert client.put("/models/aliases/production", json={"model_id": c, "gate": lenient}).status_code == 200
    floor = client.put(
        "/models/aliases/staging", json={"model_id": a, "gate": {"evaluation": the_set, "min_top1": 0.6}}
    )
    assert floor.status_code == 409 and "below the gate's 0.6000" in floor.get_json()["error"]["message"]
    unevaluated = factories.store_session(settings.database_url)
    with unevaluated as session:
        d = str(factories.model(session, artifact=tmp_path / "d").id)
    missing = client.put("/models/aliases/staging", json={"model_id": d, "gate": {"evaluation": the_set}})
    assert missing.status_code == 409 and "no succeeded evaluation" in missing.get_json()["error"]["message"]
