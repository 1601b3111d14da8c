"""Models: the registry with metrics, the job that produced each, its aliases (each model links to its
page); move `production` here; pick two models and an evaluated set to compare."""

from dash import ALL, Dash, Input, Output, ctx, dcc, html, no_update

from api.ui import compare_page
from api.ui.components import job_link, message, model_link, percent, short_id, when


def layout(calls) -> html.Section:
    return html.Section(
        [
            html.H1("Models"),
            dcc.Store(id="models-changed"),
            html.Div(id="models-message"),
            html.Div(id="models-table"),
            html.H2("Compare two models"),
            *compare_picker(calls),
        ]
    )


def compare_picker(calls) -> list:
    """Two models and a set one of them was evaluated on: the comparison page's own picker."""
    reply = calls.get("/models")
    if not reply.ok:
        return []  # the table's callback says why
    return [compare_page.picker(reply.body["models"], compare_page.chosen_of(None), calls)]


def models_table(models: list[dict]):
    if not models:
        return html.P("No models yet: start a training job on the Jobs page.", className="muted")
    columns = (
        "Version",
        "Model",
        "Architecture",
        "Labels",
        "Val top-1",
        "Val top-5",
        "Epochs",
        "Created",
        "Job",
        "Aliases",
        "",
    )
    head = html.Thead(html.Tr([html.Th(c) for c in columns]))
    return html.Table([head, html.Tbody([model_row(m) for m in models])], className="table", id="models-list")


def model_row(model: dict) -> html.Tr:
    metrics = model.get("metrics") or {}
    aliases = model["aliases"]
    promote = None
    if "production" not in aliases:
        promote = html.Button("Make production", id={"type": "promote", "model": model["id"]}, className="small")
    return html.Tr(
        [
            html.Td(model_link(model["id"], f"v{model['version']}")),
            html.Td(model_link(model["id"])),
            html.Td(model["arch"]),
            html.Td(f"{model['label_level']} ({len(model['classes'])})"),
            html.Td(percent(metrics.get("val_top1"))),
            html.Td(percent(metrics.get("val_top5"))),
            html.Td(str(metrics.get("epoch", ""))),
            html.Td(when(model["created_at"])),
            html.Td(job_link(model["job_id"]) if model.get("job_id") else "registered"),
            html.Td([html.Span(a, className=f"badge alias alias-{a}") for a in aliases]),
            html.Td(promote),
        ],
        className="model-row",
        **{"data-model": model["id"]},
    )


def register(ui: Dash, calls) -> None:
    @ui.callback(
        Output("models-table", "children"),
        Output("models-message", "children", allow_duplicate=True),
        Input("models-table", "id"),
        Input("models-changed", "data"),
        prevent_initial_call="initial_duplicate",
    )
    def refresh(_, _changed):
        reply = calls.get("/models")
        if not reply.ok:
            return no_update, message(reply.error)
        return models_table(reply.body["models"]), no_update

    @ui.callback(
        Output("models-message", "children"),
        Output("models-changed", "data"),
        Input({"type": "promote", "model": ALL}, "n_clicks"),
        prevent_initial_call=True,
    )
    def promote(clicks):
        # Redrawn buttons arrive with no clicks: only a real click moves the alias.
        if not isinstance(ctx.triggered_id, dict) or not any(clicks):
            return no_update, no_update
        model_id = ctx.triggered_id["model"]
        reply = calls.put_json("/models/aliases/production", {"model_id": model_id})
        if not reply.ok:
            return message(reply.error), no_update
        return message(f"production now points at model {short_id(model_id)}.", "ok"), model_id
