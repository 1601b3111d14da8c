"""At the door (issue #14): the token before any body is read, a cap per kind of body, changes only
from this origin, and only the Host names the service answers to. Real PostgreSQL and Redis."""

import io
import json
import re

import factories
import pytest
from test_api_ui import dash_call

from api.auth import TOKEN_COOKIE
from service.settings import LOOPBACK_HOSTS, Settings


class UnreadBody(io.RawIOBase):
    """A request body of ``size`` bytes that counts what was read of it."""

    def __init__(self, size: int):
        self.size, self.position, self.read_bytes = size, 0, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = 0) -> int:
        self.position = {0: offset, 1: self.position + offset, 2: self.size + offset}[whence]
        return self.position

    def readinto(self, buffer) -> int:
        n = max(0, min(len(buffer), self.size - self.position))
        buffer[:n] = b"{" * n
        self.position += n
        self.read_bytes += n
        return n


class AtHost:
    """A test client whose every request names ``host`` in its Host header."""

    def __init__(self, client, host: str):
        self.client, self.host = client, host

    def get(self, path, **options):
        return self.client.get(path, headers={**options.pop("headers", {}), "Host": self.host}, **options)

    def post(self, path, **options):
        return self.client.post(path, headers={**options.pop("headers", {}), "Host": self.host}, **options)


def as_(secret: str) -> dict:
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def door(make_app, database_url):
    """A client of the API with tokens required unless told otherwise (``app(**overrides)``), and one token."""
    with factories.store_session(database_url) as session:
        secret = factories.token(session, name="a")

    def app(**overrides):
        return make_app(**{"auth": "required", **overrides}).test_client()

    return app, secret


def post_unread(client, path: str, size: int, content_type="application/json", **headers):
    body = UnreadBody(size)
    response = client.post(path, input_stream=body, content_length=size, content_type=content_type, headers=headers)
    return response, body.read_bytes


def test_nothing_anonymous_reaches_the_ui_callbacks_nor_is_read(door):
    app, secret = door
    client = app()
    for path in ("/ui/_dash-update-component", "/jobs", "/predict", "/ui/_dash-layout"):
        response, read = post_unread(client, path, 20 * 2**20)
        assert response.status_code == 401 and read == 0, path
        assert response.get_json()["error"]["code"] == "unauthorized"
    # A signed-in browser's callback has its own cap, refused before it is read.
    client = app(max_ui_bytes=1000)
    client.set_cookie(TOKEN_COOKIE, secret)
    response, read = post_unread(client, "/ui/_dash-update-component", 20 * 2**20)
    assert (
        response.status_code == 413 and read == 0 and "GROCERY_MAX_UI_BYTES" in response.get_json()["error"]["message"]
    )
    # The cookie authorises the UI's JSON callbacks only: never a form post, never the API's own routes.
    response, read = post_unread(client, "/ui/_dash-update-component", 10, content_type="text/plain")
    assert response.status_code == 401 and read == 0
    assert client.post("/jobs", json={"type": "train"}).status_code == 401


def test_json_bodies_are_capped_apart_from_uploads(door):
    app, secret = door
    client = app(max_json_bytes=4096)
    response, read = post_unread(client, "/jobs", 64 * 2**20, **as_(secret))
    assert response.status_code == 413 and read == 0
    assert "GROCERY_MAX_JSON_BYTES" in response.get_json()["error"]["message"]
    paths = [f"/x/{i:06d}.jpg" for i in range(1000)]  # 15 kB of JSON
    big = client.post("/jobs", json={"type": "predict", "input": {"paths": paths}}, headers=as_(secret))
    assert big.status_code == 413
    # Without a Content-Length, the stream stops at the limit.
    chunked = client.post(
        "/jobs",
        input_stream=io.BytesIO(json.dumps({"type": "predict", "input": {"paths": paths}}).encode()),
        content_type="application/json",
        headers={**as_(secret), "Transfer-Encoding": "chunked"},
    )
    assert chunked.status_code in (400, 413), chunked.get_json()
    # Uploads keep their own, larger limit.
    files = {"files": [(io.BytesIO(b"x" * 8000), "a.jpg")]}
    upload = client.post("/jobs", data=files, content_type="multipart/form-data", headers=as_(secret))
    assert upload.status_code != 413, upload.get_json()


def test_changes_come_from_this_origin_only(door):
    app, _ = door
    client = app(auth="off")  # a loopback `make run`: no tokens, so the origin is all that protects it
    for headers in (
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://localhost:9999"},
        {"Sec-Fetch-Site": "cross-site"},
    ):
        files = {"files": [(io.BytesIO(b"x"), "a.jpg")]}
        submitted = client.post("/jobs", data=files, content_type="multipart/form-data", headers=headers)
        assert submitted.status_code == 403 and submitted.get_json()["error"]["code"] == "cross_origin", headers
        cancelled = client.post("/jobs/00000000-0000-0000-0000-000000000000/cancel", headers=headers)
        assert cancelled.status_code == 403, headers
        predicted = client.post("/predict", data={"file": (io.BytesIO(b"x"), "a.jpg")}, headers=headers)
        assert predicted.status_code == 403, headers
        assert client.get("/jobs", headers=headers).status_code == 200  # reads are not changes
    same = client.post("/jobs", json={"type": "train"}, headers={"Origin": "http://localhost"})
    assert same.status_code == 202
    assert client.post("/jobs", json={"type": "train"}, headers={"Sec-Fetch-Site": "same-origin"}).status_code == 202
    assert client.post("/jobs", json={"type": "train"}).status_code == 202  # curl, the CLI: no browser


def test_only_the_allowed_host_names_are_answered(door):
    app, secret = door
    client = app(auth="off")  # the default: a loopback bind answers to the loopback names
    rebound = client.get("/jobs", headers={"Host": "evil.example"})
    assert rebound.status_code == 400 and rebound.get_json()["error"]["code"] == "host_not_allowed"
    assert client.post("/jobs", json={"type": "train"}, headers={"Host": "evil.example:8000"}).status_code == 400
    for host in ("localhost", "127.0.0.1:8000", "[::1]:8000"):
        assert client.get("/jobs", headers={"Host": host}).status_code == 200, host
    assert client.get("/healthz", headers={"Host": "10.0.0.7:8000"}).status_code == 200  # probes by IP
    # A deployment's own name; the web UI's in-process calls carry it through.
    client = app(allowed_hosts=("grocery.example",))
    assert client.get("/jobs", headers={**as_(secret), "Host": "localhost"}).status_code == 400
    client.set_cookie(TOKEN_COOKIE, secret, domain="grocery.example")
    client = AtHost(client, "grocery.example")
    assert client.get("/ui/jobs").status_code == 200
    form = {"train-submit": 1, "train-key": "key-1", "train-epochs": 2, "train-arch": "mobilenet_v3_small"}
    status, answer = dash_call(client, "train-message.children", form)
    assert status == 200 and re.search(r"[0-9a-f-]{36}", json.dumps(answer["response"]["train-message"])), answer


def test_allowed_hosts_default_to_the_bind_host():
    assert Settings.from_env({}).allowed_hosts == LOOPBACK_HOSTS
    assert Settings.from_env({"GROCERY_HOST": "0.0.0.0"}).allowed_hosts == ("*",)
    assert Settings.from_env({"GROCERY_HOST": "10.1.2.3"}).allowed_hosts == ("10.1.2.3",)
    explicit = Settings.from_env({"GROCERY_ALLOWED_HOSTS": "grocery.example, API.example"})
    assert explicit.allowed_hosts == ("grocery.example", "api.example")


def test_docs_load_nothing_from_elsewhere(door):
    """Swagger UI's files come from this server (the swagger-ui-py package), under a policy that lets
    no other origin's script run beside the user's cookie."""
    from api.openapi import swagger_ui_folder

    app, _ = door
    client = app()
    page = client.get("/docs")
    assert page.status_code == 200 and b"/openapi.json" in page.data
    assert b"https://" not in page.data and b"http://" not in page.data
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy
    assert client.get("/docs/LICENSE").status_code == 404  # only the files the page needs
    if swagger_ui_folder() is None:
        pytest.skip("swagger-ui-py is not installed: /docs says so instead of loading Swagger UI")
    for asset in ("swagger-ui.css", "swagger-ui-bundle.js", "init.js"):
        response = client.get(f"/docs/{asset}")
        assert response.status_code == 200 and len(response.data) > 20, asset
        assert f"/docs/{asset}".encode() in page.data
    assert b"SwaggerUIBundle" in client.get("/docs/swagger-ui-bundle.js").data
