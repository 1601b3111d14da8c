"""Sign in to the web UI with an API token: it is kept in an HttpOnly, SameSite=Strict cookie.

The cookie lets the browser read (pages' images, CSV downloads); changes go through the UI's
callbacks, which send the token as a Bearer header (api/auth.py: a cookie never authorises a change).
"""

from flask import Blueprint, make_response, redirect, request

from api.auth import TOKEN_COOKIE
from api.resources import resources
from service import tokens

blueprint = Blueprint("ui_signin", __name__)
COOKIE_DAYS = 30

PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Sign in · grocery-jobs</title>
<link rel="stylesheet" href="/ui/assets/style.css"></head><body><main class="signin-page">
<h1>Sign in</h1>{notice}
<form method="post" action="/ui/login">
<label class="field"><span class="field-label">API token</span>
<input type="password" name="token" id="token" autocomplete="off" required autofocus></label>
<button type="submit" id="signin">Sign in</button></form>
<p class="hint">An operator makes tokens with <code>grocery tokens create --name NAME</code>.</p>
</main></body></html>"""


def page(notice: str = "", status: int = 200):
    return PAGE.format(notice=notice), status, {"Content-Type": "text/html; charset=utf-8"}


@blueprint.get("/ui/login")
def login_form():
    if resources().settings.auth == "off":
        return page('<p class="message info">Authentication is off on this server: no token is needed.</p>')
    return page()


@blueprint.post("/ui/login")
def login():
    secret = (request.form.get("token") or "").strip()
    with resources().sessions() as session:
        token = tokens.find_token(session, secret=secret) if secret else None
    if token is None:
        notice = '<p class="message error" role="alert">That token is unknown or revoked.</p>'
        return page(notice, 401)
    response = make_response(redirect("/ui/", code=303))
    response.set_cookie(
        TOKEN_COOKIE,
        secret,
        max_age=COOKIE_DAYS * 86400,
        httponly=True,
        samesite="Strict",
        secure=request.is_secure,
    )
    return response


@blueprint.get("/ui/logout")
def logout():
    response = make_response(redirect("/ui/login", code=303))
    response.delete_cookie(TOKEN_COOKIE)
    return response
