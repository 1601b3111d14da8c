"""/openapi.json covers the app's API routes, every method of each, and names none the app lacks (api/openapi.py)."""

import re

from api.openapi import IMPLICIT_METHODS, OPERATIONS, api_rules, document, undocumented_routes


def resolved(app, document: dict) -> set[tuple[str, str]]:
    """(endpoint, METHOD) that each documented operation reaches, found by werkzeug's own matching of a URL made
    from its path (a sample value for each {parameter}): independent of how api/openapi.py derived the paths."""
    urls = app.url_map.bind("localhost")
    reached = set()
    for path, operations in document["paths"].items():
        url = re.sub(r"\{\w+\}", "1", path)  # "1" matches the string and int converters alike
        for method in operations:
            endpoint, _ = urls.match(url, method.upper())  # raises NotFound / MethodNotAllowed for a stale entry
            reached.add((endpoint, method.upper()))
    return reached


def test_every_api_route_is_documented_and_the_document_names_no_other(app, client):
    assert undocumented_routes(app) == []
    routes = {(rule.endpoint, method) for rule in api_rules(app) for method in rule.methods - IMPLICIT_METHODS}
    assert resolved(app, client.get("/openapi.json").get_json()) == routes
    # No entry outlives its route.
    assert set(OPERATIONS) <= {rule.endpoint for rule in app.url_map.iter_rules()}
    # The exclusions are the non-API routes, not some of the API.
    excluded = {rule.rule for rule in app.url_map.iter_rules()} - {rule.rule for rule in api_rules(app)}
    assert {"/openapi.json", "/docs", "/docs/<name>", "/ui/", "/ui/login"} <= excluded
    assert all(path.startswith(("/ui/", "/static/", "/docs", "/openapi.json")) for path in excluded), excluded


def test_a_route_without_an_entry_is_reported_and_still_listed(make_app):
    from openapi_spec_validator import validate

    app = make_app()
    app.add_url_rule("/jobs/<job_id>/pause", "jobs.pause_job", lambda job_id: "", methods=["POST"])
    app.add_url_rule("/things/<int:number>", "things", lambda number: "", methods=["GET", "PATCH"])
    app.add_url_rule("/ui/extra", "ui_extra", lambda: "")  # the web UI's: not API
    assert undocumented_routes(app) == ["POST /jobs/{id}/pause", "GET /things/{number}", "PATCH /things/{number}"]

    paths = document(app)["paths"]
    assert paths["/jobs/{id}/pause"]["post"]["summary"].startswith("Undocumented")
    assert paths["/things/{number}"]["patch"]["parameters"] == [
        {"name": "number", "in": "path", "required": True, "schema": {"type": "integer"}}
    ]
    assert not any(path.startswith("/ui") for path in paths)
    validate(document(app))
