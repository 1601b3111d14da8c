"""A model's page: what it scored and how it learned (its training job's curves and confusion matrix),
its card (where it comes from, its evaluations, its files to download), the runtime each machine
measured and serves it on, its aliases, the job that trained it, and delete."""

from dash import Dash, Input, Output, State, dcc, html, no_update

from api.ui import card_views, evaluation_views, training_views
from api.ui.components import duration, facts, job_link, message, percent, short_id, when
from api.ui.job_page import all_events

# The metrics a training reports, as shown; any other the API gives is shown under its own name.
METRIC_NAMES = {
    "val_top1": "validation top-1",
    "val_top5": "validation top-5",
    "val_fine_top1": "validation top-1, fine classes",
    "val_loss": "validation loss",
    "train_acc": "training accuracy",
    "train_loss": "training loss",
    "epoch": "epochs trained",
    "train_images_per_s": "training images/s (last epoch)",
    "train_seconds": "training time (last epoch)",
}
SHARES = {"val_top1", "val_top5", "val_fine_top1", "train_acc"}


def layout(model_id: str, calls):
    reply = calls.get(f"/models/{model_id}")
    if not reply.ok:
        return message(reply.error)
    model = reply.body
    return html.Section(
        [
            dcc.Store(id="model-id", data=model["id"]),
            html.H1(
                [
                    f"Model v{model['version']} ",
                    html.Span(short_id(model["id"]), className="mono", title=model["id"]),
                    " ",
                    *[html.Span(a, className=f"badge alias alias-{a}") for a in model["aliases"]],
                ],
                id="model-title",
            ),
            about(model),
            html.H2("Metrics"),
            metrics_table(model.get("metrics") or {}),
            *card_parts(model["id"], calls),
            html.H2("Download"),
            card_views.downloads_part(model["id"]),
            *training_parts(model, calls),
            html.H2("Serving"),
            runtimes_table((model.get("serving") or {}).get("runtimes") or {}),
            html.H2("Delete"),
            html.P(
                "Deletes the model and its files. The API refuses while an alias names it or a queued or running "
                "job uses it.",
                className="muted",
            ),
            dcc.ConfirmDialogProvider(
                html.Button("Delete model", id="model-delete", className="small danger"),
                id="model-delete-confirm",
                message=f"Delete model v{model['version']} ({short_id(model['id'])}) and its files?",
            ),
            html.Div(id="model-message"),
        ]
    )


def about(model: dict) -> html.Dl:
    return facts(
        {
            "architecture": model["arch"],
            "labels": f"{model['label_level']}, {len(model['classes'])} classes",
            "created": when(model["created_at"]),
            "trained by": job_link(model["job_id"]) if model.get("job_id") else "registered without a job",
            "aliases": ", ".join(model["aliases"]) or "none (move one on the Models page)",
            "artifact": html.Span(model["artifact"], className="mono"),
        }
    )


def card_parts(model_id: str, calls) -> list:
    """Its card's lineage and evaluations (GET /models/<id>/card)."""
    reply = calls.get(f"/models/{model_id}/card")
    if not reply.ok:
        return [html.H2("Model card"), message(reply.error)]
    return [
        html.H2("Model card: where it comes from"),
        *card_views.lineage_part(reply.body),
        html.H2("Evaluations"),
        evaluation_views.evaluations_table(model_id, reply.body["evaluations"]),
    ]


def metrics_table(metrics: dict):
    if not metrics:
        return html.P("The registry holds no metrics for this model.", className="muted")
    rows = [
        html.Tr([html.Th(METRIC_NAMES.get(name, name)), html.Td(metric(name, value))], **{"data-metric": name})
        for name, value in metrics.items()
    ]
    return html.Table(html.Tbody(rows), className="table narrow", id="model-metrics")


def metric(name: str, value) -> str:
    if name == "train_seconds":
        return duration(value)
    if name == "train_images_per_s":
        return f"{value:.1f}"
    if isinstance(value, float):
        return percent(value) if name in SHARES else f"{value:.4f}"
    return str(value)


def training_parts(model: dict, calls) -> list:
    """Curves and confusion matrix from the training job's epochs, while that job is kept."""
    missing = "No curves: the job that trained this model is gone; the metrics above are its last epoch's."
    if not model.get("job_id"):
        return [html.H2("Training curves"), html.P(missing, className="muted", id="curves-waiting")]
    events, failed = all_events(calls, model["job_id"])
    epochs = training_views.epochs_of(events) if failed is None else []
    matrix, validated = training_views.last_confusion(epochs) or (None, None)
    return [
        html.H2("Training curves"),
        html.Div(training_views.curves(epochs, missing), id="training-curves", className="chart-pair"),
        *training_views.confusion(
            matrix, f"Confusion matrix (validation, epoch {validated})", "Its training validated no epoch."
        ),
    ]


def runtimes_table(runtimes: dict):
    """Per machine: the variants it measured, the one it chose (and serves with) first."""
    if not runtimes:
        return html.P(
            "No machine has measured this model yet: an idle prediction worker measures its runtimes in the "
            "background, and jobs serve on fp32 meanwhile.",
            className="muted",
        )
    head = html.Thead(html.Tr([html.Th(c) for c in ("Runtime", "Images/s", "Batch", "Agreement", "")]))
    rows = [row for machine, choice in runtimes.items() for row in machine_rows(machine, choice)]
    return html.Table([head, html.Tbody(rows)], className="table", id="model-runtimes")


def machine_rows(machine: str, choice: dict) -> list[html.Tr]:
    title = [html.Span(machine, className="mono"), f" serves it with {choice['runtime']}"]
    if choice.get("chosen_at"):
        title.append(html.Span(f", measured {when(choice['chosen_at'])}", className="muted"))
    variants = choice.get("variants") or {choice["runtime"]: {}}
    ordered = sorted(variants.items(), key=lambda item: (item[0] != choice["runtime"], item[0]))
    return [
        html.Tr(html.Th(title, colSpan=5), className="machine-row"),
        *(variant_row(machine, name, measured, name == choice["runtime"]) for name, measured in ordered),
    ]


def variant_row(machine: str, name: str, measured: dict, serves: bool) -> html.Tr:
    if serves:
        verdict = html.Span("serves here", className="badge ok")
    elif measured.get("error"):
        verdict = html.Span(f"failed: {measured['error']}", className="muted")
    else:
        verdict = html.Span("accepted" if measured.get("accepted") else "refused: answers differ", className="muted")
    return html.Tr(
        [
            html.Td(name),
            html.Td(str(measured.get("images_per_s", ""))),
            html.Td(str(measured.get("inference_batch", ""))),
            html.Td(percent(measured.get("agreement"))),
            html.Td(verdict),
        ],
        className="runtime-row serving" if serves else "runtime-row",
        **{"data-runtime": name, "data-machine": machine},
    )


def register(ui: Dash, calls) -> None:
    @ui.callback(
        Output("model-message", "children"),
        Output("model-delete", "disabled"),
        Input("model-delete-confirm", "submit_n_clicks"),
        State("model-id", "data"),
        prevent_initial_call=True,
    )
    def delete(clicks, model_id):
        if not clicks:
            return no_update, no_update
        reply = calls.call("DELETE", f"/models/{model_id}")
        if not reply.ok:
            return message(reply.error), False  # e.g. 409: an alias names it, or a live job uses it
        done = [
            "Model ",
            html.Span(short_id(model_id), className="mono"),
            " deleted. ",
            dcc.Link("All models", href="/ui/models"),
        ]
        return html.Div(done, className="message ok", role="status"), True
