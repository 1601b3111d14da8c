"""The frame of every page: header, navigation, sign-in state, and the router."""

import re

from dash import Dash, Input, Output, dcc, html, set_props
from flask import current_app, request

from api.auth import TOKEN_COOKIE
from api.resources import resources
from api.ui import compare_page, job_page, jobs, model_page, registry, workshop
from api.ui.components import message

JOB_PATH = re.compile(r"^/ui/jobs/([0-9a-fA-F-]{36})/?$")
MODEL_PATH = re.compile(r"^/ui/models/([0-9a-fA-F-]{36})/?$")


def layout() -> html.Div:
    return html.Div(
        [
            dcc.Location(id="url"),
            html.Header(
                [
                    dcc.Link("grocery-jobs", href="/ui/", className="brand"),
                    html.Nav(
                        [
                            dcc.Link("Workshop", href="/ui/"),
                            dcc.Link("Jobs", href="/ui/jobs"),
                            dcc.Link("Models", href="/ui/models"),
                            html.A("API", href="/docs"),
                        ]
                    ),
                    html.Div(id="signin-state", className="signin"),
                ]
            ),
            html.Main([html.Div(id="ui-error"), html.Div(id="page")]),
        ]
    )


def page_for(pathname: str | None, search: str | None, calls):
    """The page a path shows; ``search``, the URL's query, only the comparison's reads (a link to keep)."""
    path = (pathname or "/ui/").rstrip("/") or "/ui"
    if path == "/ui":
        return workshop.layout()
    if path == "/ui/jobs":
        return jobs.layout()
    if path == "/ui/models":
        return registry.layout(calls)
    if path == "/ui/compare":
        return compare_page.layout(search, calls)
    if match := JOB_PATH.match(path):
        return job_page.layout(match.group(1), calls)
    if match := MODEL_PATH.match(path):
        return model_page.layout(match.group(1), calls)
    return message(f"No page at {pathname}: try Workshop, Jobs or Models above.")


def signin_state():
    if resources().settings.auth == "off":
        return html.Span("authentication off", className="muted")
    if request.cookies.get(TOKEN_COOKIE):
        return html.A("Sign out", href="/ui/logout")
    return html.A("Sign in", href="/ui/login")


def show_internal_error(error: Exception) -> None:
    """Any callback's unexpected exception: logged in full, and a sentence on the page (not a blank one)."""
    current_app.logger.error("web UI callback failed", exc_info=error)
    set_props("ui-error", {"children": message("Something went wrong on the server; it is logged. Try again.")})


def register(ui: Dash, calls) -> None:
    @ui.callback(
        Output("page", "children"),
        Output("signin-state", "children"),
        Output("ui-error", "children"),
        Input("url", "pathname"),
        Input("url", "search"),
    )
    def route(pathname, search):
        return page_for(pathname, search, calls), signin_state(), None
