"""At the door, before any view (so before any body is read): the Host header, the origin of a
change, the API token and its scope, and the body's size. A token sees its own jobs (ops: all).

With GROCERY_AUTH=off (`make run` on loopback) every request is let in and owns nothing; the Host
and origin checks still apply, so no other web page can drive it.
"""

from urllib.parse import urlsplit

from flask import Flask, g, redirect, request

from api.errors import APIError
from api.resources import resources
from service import tokens

PUBLIC = {"health.healthz", "health.readyz", "openapi.openapi_json", "openapi.docs", "openapi.docs_asset"}
# Probes call these by IP, whatever GROCERY_ALLOWED_HOSTS says; they hold nothing a rebinding page could use.
ANY_HOST = {"health.healthz", "health.readyz"}
SCOPE_OF = {
    "jobs.submit_job": "jobs:write",
    "jobs.cancel_job": "jobs:write",
    "jobs.delete_job": "jobs:write",
    "models.delete_model": "ops",
    "workshop.predict": "jobs:write",
    "models.move_alias": "ops",
    "ops.workers": "ops",
    "ops.queues": "ops",
    "ops.metrics": "ops",
}
READ = "jobs:read"
UI_PREFIX = "/ui/"
TOKEN_COOKIE = "grocery_token"  # set by the web UI's sign-in form
# The web UI's sign-in page and what it (and every page) loads before signing in: no data in any.
UI_PUBLIC_ENDPOINTS = {"ui_signin.login_form", "ui_signin.login", "ui_signin.logout"}
UI_PUBLIC_PREFIXES = ("/ui/assets/", "/ui/_dash-component-suites/", "/ui/_favicon.ico")
UI_CALLBACK = "/ui/_dash-update-component"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def register_auth(app: Flask) -> None:
    app.before_request(at_the_door)


def at_the_door():
    """Before any view runs, and so before any body is read: the Host, the token, the origin of a
    change, and the body's size from its header."""
    g.token = None
    settings = resources().settings
    if request.endpoint not in ANY_HOST:
        check_host(settings.allowed_hosts)
    if request.method not in SAFE_METHODS:
        check_same_origin()
    if settings.auth == "required" and not is_public():
        try:
            authenticate()
        except APIError as e:
            if e.status == 401 and is_page_view():  # a browser is sent to sign in, not shown JSON
                return redirect("/ui/login", code=303)
            raise
    cap_body(settings)
    return None


def check_host(allowed: tuple[str, ...]) -> None:
    """DNS rebinding: a page on evil.example that resolves to 127.0.0.1 sends Host: evil.example."""
    if "*" in allowed:
        return
    host = request.host.lower()
    name = host[1 : host.index("]")] if host.startswith("[") and "]" in host else host.rsplit(":", 1)[0]
    if name not in allowed and host not in allowed:
        raise APIError(
            400, "host_not_allowed", f"this server does not answer to Host {request.host!r} (GROCERY_ALLOWED_HOSTS)"
        )


def check_same_origin() -> None:
    """A change comes from this origin or from no browser at all. Browsers send Origin with every
    cross-origin POST, form and fetch alike, and Sec-Fetch-Site with every request; curl and the
    CLI send neither. This is what stops a page elsewhere from submitting or cancelling jobs on a
    loopback `make run` with a simple (preflight-free) request."""
    origin = request.headers.get("Origin")
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if origin is not None and (origin == "null" or urlsplit(origin).netloc.lower() != request.host.lower()):
        raise APIError(403, "cross_origin", f"{request.method} from another origin ({origin}) is refused")
    if fetch_site in ("cross-site", "same-site"):
        raise APIError(403, "cross_origin", f"{request.method} from another site is refused")


def is_public() -> bool:
    if request.endpoint in PUBLIC or request.endpoint in UI_PUBLIC_ENDPOINTS:
        return True
    if request.path.startswith(UI_PUBLIC_PREFIXES):
        return True
    # Unknown routes answer 404 without reading anything; they need no token to say so.
    return request.endpoint is None and not _is_ui()


def _is_ui() -> bool:
    on = resources().settings.ui
    return on and (request.path == UI_PREFIX.rstrip("/") or request.path.startswith(UI_PREFIX))


def is_page_view() -> bool:
    """A web UI page opened in the browser (not one of Dash's own requests, /ui/_dash-*)."""
    return request.method == "GET" and _is_ui() and not request.path.startswith("/ui/_")


def authenticate() -> None:
    secret = presented_secret()
    if not secret:
        raise APIError(
            401,
            "unauthorized",
            "send an API token: Authorization: Bearer <token>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    with resources().sessions() as session:
        token = tokens.find_token(session, secret=secret)
    if token is None:
        raise APIError(
            401, "invalid_token", "the API token is unknown or revoked", headers={"WWW-Authenticate": "Bearer"}
        )
    scope = SCOPE_OF.get(request.endpoint, READ)
    if scope not in token.scopes:
        raise APIError(403, "forbidden", f"this token lacks the '{scope}' scope ({request.method} {request.path})")
    g.token = token


def cap_body(settings) -> None:
    """Each kind of body its own limit, refused from its Content-Length before a byte is read (and,
    without one, as the stream passes the limit)."""
    if request.path == UI_CALLBACK:
        limit, name = settings.max_ui_bytes, "GROCERY_MAX_UI_BYTES"
    elif request.mimetype == "multipart/form-data":
        limit, name = settings.max_upload_bytes, "GROCERY_MAX_UPLOAD_BYTES"
    else:
        limit, name = settings.max_json_bytes, "GROCERY_MAX_JSON_BYTES"
    request.max_content_length = limit
    if request.content_length is not None and request.content_length > limit:
        raise APIError(413, "request_entity_too_large", f"the request body exceeds {limit} bytes ({name})")


def presented_secret() -> str | None:
    """The Bearer token; else the web UI's cookie, for reads (an <img> or a download link sends no
    header) and for the UI's own callbacks, which are JSON: a cross-site form cannot send that
    Content-Type, and a cross-site fetch that does needs a preflight this API never grants (and its
    Origin is refused above). The callbacks then call the API with the token as a Bearer header."""
    scheme, _, secret = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and secret.strip():
        return secret.strip()
    if request.method in ("GET", "HEAD") or (request.path == UI_CALLBACK and request.mimetype == "application/json"):
        return request.cookies.get(TOKEN_COOKIE) or None
    return None


def owner_id():
    """The token new jobs belong to (None with authentication off)."""
    return g.token.id if g.get("token") is not None else None


def token_roots() -> list[str] | None:
    """The folders this request's token may read (None: the service's roots)."""
    return g.token.roots if g.get("token") is not None else None


def quotas() -> tuple[int, int]:
    """(jobs, files) this request's owner may have queued or running: its token's own, else the service's."""
    settings = resources().settings
    return tokens.quotas_of(
        g.get("token"), default_jobs=settings.token_max_active_jobs, default_files=settings.token_max_active_files
    )


def sees_every_job() -> bool:
    return g.get("token") is None or "ops" in g.token.scopes
