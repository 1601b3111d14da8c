"""The UI's only way to data: the API's own routes, called in process with the visitor's token.

Every rule of the API (validation, scopes, who sees which job, error bodies) applies to the UI
unchanged, and no request leaves the process: nothing to configure, no worker waits on another.
"""

import contextvars
import hashlib
import io
from dataclasses import dataclass
from urllib.parse import quote

from flask import Flask, request
from werkzeug.test import Client

from api.auth import TOKEN_COOKIE


@dataclass
class Reply:
    status: int
    body: dict | None  # the JSON body, if it was JSON
    content: bytes
    headers: dict[str, str]

    @property
    def ok(self) -> bool:
        return self.status < 400

    @property
    def digest(self) -> str:
        """What the answer said, in a few bytes: a page redraws only when it changes."""
        return hashlib.sha256(self.content).hexdigest()

    @property
    def error(self) -> str:
        """The API's own message, e.g. 'input.folder: ... is outside the allowed input roots'."""
        error = (self.body or {}).get("error") or {}
        if self.status == 401:
            return f"{error.get('message', 'sign in first')}: sign in with an API token (Sign in, top right)"
        return error.get("message") or f"the API answered {self.status}"


class LocalAPI:
    def __init__(self, app: Flask):
        self.client = Client(app, use_cookies=False)  # never carry one visitor's cookies to another

    def call(self, method: str, path: str, *, headers: dict | None = None, **options) -> Reply:
        token = request.cookies.get(TOKEN_COOKIE)
        headers = {**(headers or {}), **({"Authorization": f"Bearer {token}"} if token else {})}
        # An empty context: the inner request gets its own app context (and `g`), not the UI callback's.
        # The visitor's Host, so that the API's GROCERY_ALLOWED_HOSTS check sees the name it was reached by.
        response = contextvars.Context().run(
            self.client.open, path, method=method, headers=headers, buffered=True, base_url=request.host_url, **options
        )
        body = response.get_json(silent=True) if response.is_json else None
        return Reply(response.status_code, body, response.get_data(), dict(response.headers))

    def get(self, path: str, **query) -> Reply:
        return self.call("GET", path, query_string={k: v for k, v in query.items() if v is not None})

    def post_json(self, path: str, payload: dict | None = None, *, key: str | None = None) -> Reply:
        """``key``: an Idempotency-Key, so that a double click submits one job."""
        headers = {"Idempotency-Key": key} if key else {}
        return self.call("POST", path, json=payload if payload is not None else {}, headers=headers)

    def post_files(
        self, path: str, files: list[tuple[str, bytes]], field: str, *, key: str | None = None, **fields
    ) -> Reply:
        """multipart/form-data: each (filename, bytes) under ``field``, plus plain form fields."""
        form = {field: [(io.BytesIO(data), name) for name, data in files], **fields}
        headers = {"Idempotency-Key": key} if key else {}
        return self.call("POST", path, data=form, content_type="multipart/form-data", headers=headers)

    def put_json(self, path: str, payload: dict) -> Reply:
        return self.call("PUT", path, json=payload)


def segment(text: str) -> str:
    """A value placed in a URL path (a class name may hold spaces or slashes)."""
    return quote(text, safe="")
