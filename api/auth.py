"""API tokens at the door: each route needs a scope; a token sees its own jobs (an ops token, all).

With GROCERY_AUTH=off (`make run` on loopback) every request is let in and owns nothing.
"""

from flask import Flask, g, request

from api import services
from api.errors import APIError
from service import tokens

PUBLIC = {"health.healthz", "health.readyz", "openapi.openapi_json", "openapi.docs"}
SCOPE_OF = {
    "jobs.submit_job": "jobs:write",
    "jobs.cancel_job": "jobs:write",
    "workshop.predict": "jobs:write",
    "models.move_alias": "ops",
    "ops.workers": "ops",
    "ops.queues": "ops",
    "ops.metrics": "ops",
}
READ = "jobs:read"
UI_PREFIX = "/ui/"
TOKEN_COOKIE = "grocery_token"  # set by the web UI's sign-in form


def register_auth(app: Flask) -> None:
    app.before_request(authenticate)


def authenticate() -> None:
    g.token = None
    if services().settings.auth == "off" or request.endpoint in PUBLIC or request.endpoint is None:
        return
    if request.path == UI_PREFIX.rstrip("/") or request.path.startswith(UI_PREFIX):
        return  # the web UI's pages hold no data: its callbacks call these routes with the visitor's token
    secret = presented_secret()
    if not secret:
        raise APIError(
            401,
            "unauthorized",
            "send an API token: Authorization: Bearer <token>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    with services().sessions() as session:
        token = tokens.find_token(session, secret=secret)
    if token is None:
        raise APIError(
            401, "invalid_token", "the API token is unknown or revoked", headers={"WWW-Authenticate": "Bearer"}
        )
    scope = SCOPE_OF.get(request.endpoint, READ)
    if scope not in token.scopes:
        raise APIError(403, "forbidden", f"this token lacks the '{scope}' scope ({request.method} {request.path})")
    g.token = token


def presented_secret() -> str | None:
    """The Bearer token; for reads only, the web UI's cookie (an <img> or a download link sends no header,
    and a cookie never authorises a change, so a forged cross-site form can do nothing)."""
    scheme, _, secret = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and secret.strip():
        return secret.strip()
    if request.method in ("GET", "HEAD"):
        return request.cookies.get(TOKEN_COOKIE) or None
    return None


def owner_id():
    """The token new jobs belong to (None with authentication off)."""
    return g.token.id if g.get("token") is not None else None


def token_roots() -> list[str] | None:
    """The folders this request's token may read (None: the service's roots)."""
    return g.token.roots if g.get("token") is not None else None


def sees_every_job() -> bool:
    return g.get("token") is None or "ops" in g.token.scopes
