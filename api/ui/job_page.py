"""A job's page: live header; training curves and confusion matrix, or a prediction job's
counts per class, gallery (by class, low confidence, failures) and CSV download."""

from urllib.parse import quote, urlencode

from dash import Dash, Input, Output, State, ctx, dcc, html, no_update

from api.ui import charts
from api.ui.components import message, percent, progress_bar, short_id, status_badge, when
from service.kinds import PREDICT, TRAIN
from service.states import FINISHED_STATUSES

REFRESH_MS = 2000
GALLERY_PAGE = 48
THUMBNAIL_PX = 160
CONFIDENCE_CHOICES = [
    {"label": "any confidence", "value": 1.0},
    {"label": "below 90%", "value": 0.9},
    {"label": "below 70%", "value": 0.7},
    {"label": "below 50%", "value": 0.5},
]


def layout(job_id: str, calls):
    reply = calls.get(f"/jobs/{job_id}")
    if not reply.ok:
        return message(reply.error)
    job = reply.body
    body = training_body() if job["type"] == TRAIN.name else prediction_body()
    return html.Section(
        [
            dcc.Store(id="job-id", data=job_id),
            dcc.Interval(id="job-tick", interval=REFRESH_MS, disabled=job["status"] in FINISHED_STATUSES),
            html.Div(header(job), id="job-header"),
            html.Div(id="job-message"),
            body,
        ]
    )


def header(job: dict) -> list:
    facts = {
        "type": job["type"],
        "created": when(job["created_at"]),
        "started": when(job["started_at"]),
        "finished": when(job["finished_at"]),
        "attempts": str(job["attempts"]),
        "worker": job.get("worker") or "",
        "device": job.get("device") or "",
    }
    if job.get("model_id"):
        facts["model"] = dcc.Link(short_id(job["model_id"]), href="/ui/models", className="mono")
    facts["input" if job["type"] == PREDICT.name else "parameters"] = described(job["params"])
    parts = [
        html.H1(
            [
                "Job ",
                html.Span(short_id(job["id"]), className="mono", title=job["id"]),
                " ",
                status_badge(job["status"]),
            ],
            id="job-title",
        ),
        progress_bar(job["progress"]),
        html.Dl(
            [item for name, value in facts.items() if value for item in (html.Dt(name), html.Dd(value))],
            className="facts",
        ),
    ]
    if waiting := job.get("waiting"):  # why it is not running yet, under its status
        estimate = waiting["estimated_start_seconds"]
        said = [
            waiting["reason"]["message"],
            estimate and f"it should start in about {estimate:.0f} s",
            waiting["quota"]["message"],
        ]
        parts.insert(1, html.P("Waiting: " + "; ".join(filter(None, said)), id="job-waiting", className="muted"))
    if job.get("error"):
        parts.append(message(f"{job['error']['code']}: {job['error']['message']}"))
    if job["status"] not in FINISHED_STATUSES:
        parts.append(html.Button("Cancel job", id="job-cancel", className="small"))
    return parts


def described(params: dict) -> str:
    """A job's request in a line: a training job's settings, or what a prediction job reads."""
    source = params.get("input")
    if source is None:
        return ", ".join(f"{name} {value}" for name, value in params.items()) or "the default recipe"
    if "upload" in source:
        return f"{source['upload']['files']} uploaded file(s)"
    if "folder" in source or "url" in source:
        return source.get("folder") or source["url"]
    return f"{source.get('paths_count', len(source['paths']))} listed file(s)"


def training_body() -> html.Div:
    return html.Div(
        [
            html.H2("Training curves"),
            html.Div(id="training-note", className="muted"),
            dcc.Graph(id="training-curves", config={"displaylogo": False}),
            html.H2("Confusion matrix (validation, last epoch)"),
            dcc.Graph(id="confusion-matrix", config={"displaylogo": False}),
        ]
    )


def prediction_body() -> html.Div:
    return html.Div(
        [
            html.H2("Files per class"),
            html.Div(id="prediction-summary", className="muted"),
            dcc.Graph(id="class-counts", config={"displaylogo": False}),
            html.H2("Results"),
            html.Div(
                [
                    dcc.Dropdown(id="gallery-label", placeholder="every class", className="grow"),
                    dcc.RadioItems(CONFIDENCE_CHOICES, 1.0, id="gallery-confidence", inline=True),
                    dcc.Checklist([{"label": "failed files only", "value": "errors"}], [], id="gallery-errors"),
                    html.A("Download CSV", id="results-csv", className="button", href=""),
                ],
                className="filters",
            ),
            dcc.Store(id="gallery-page", data={"cursor": None, "previous": []}),
            dcc.Store(id="gallery-next-cursor"),
            dcc.Store(id="gallery-digest"),
            html.Div(id="gallery", className="gallery"),
            html.Div(
                [
                    html.Button("Previous page", id="gallery-previous", className="small"),
                    html.Button("Next page", id="gallery-next", className="small"),
                ],
                className="actions",
            ),
        ]
    )


def result_filters(label, max_confidence, errors) -> dict:
    filters = {"label": label or None, "errors_only": "true" if errors else None}
    if max_confidence is not None and max_confidence < 1:
        filters["max_confidence"] = max_confidence
    return {name: value for name, value in filters.items() if value is not None}


def tile(job_id: str, result: dict) -> html.Figure:
    name = result["path"].rsplit("/", 1)[-1]
    if result.get("error"):
        return html.Figure(
            [
                html.Div(result["error"]["code"], className="tile-error"),
                html.Figcaption(
                    [
                        html.Span(name, className="mono", title=result["path"]),
                        html.Span(result["error"]["message"], className="muted"),
                    ]
                ),
            ],
            className="tile failed",
        )
    source = f"/jobs/{job_id}/image?" + urlencode({"path": result["path"], "size": THUMBNAIL_PX}, quote_via=quote)
    return html.Figure(
        [
            html.Img(src=source, alt=name),
            html.Figcaption(
                [
                    html.Strong(result["label"], className="tile-label"),
                    html.Span(percent(result["confidence"]), className="tile-confidence"),
                    html.Span(name, className="mono muted", title=result["path"]),
                ]
            ),
        ],
        className="tile",
        **{"data-label": result["label"], "data-confidence": str(result["confidence"])},
    )


def register(ui: Dash, calls) -> None:
    @ui.callback(
        Output("job-header", "children"),
        Output("job-tick", "disabled"),
        Input("job-tick", "n_intervals"),
        State("job-id", "data"),
        prevent_initial_call=True,
    )
    def refresh_header(_tick, job_id):
        reply = calls.get(f"/jobs/{job_id}")
        if not reply.ok:
            return message(reply.error), True
        return header(reply.body), reply.body["status"] in FINISHED_STATUSES

    @ui.callback(
        Output("job-message", "children"),
        Input("job-cancel", "n_clicks"),
        State("job-id", "data"),
        prevent_initial_call=True,
    )
    def cancel(clicks, job_id):
        if not clicks:
            return no_update
        reply = calls.post_json(f"/jobs/{job_id}/cancel")
        return (
            message(f"Cancel requested: the job is {reply.body['status']}.", "ok") if reply.ok else message(reply.error)
        )

    @ui.callback(
        Output("training-curves", "figure"),
        Output("confusion-matrix", "figure"),
        Output("training-note", "children"),
        Input("job-tick", "n_intervals"),
        State("job-id", "data"),
    )
    def training_figures(_tick, job_id):
        reply = calls.get(f"/jobs/{job_id}/events")
        if not reply.ok:
            return no_update, no_update, message(reply.error)
        epochs = [e["data"] for e in reply.body["events"] if e["kind"] == "epoch"]
        if not epochs:
            return charts.training_curves([]), no_update, "The curves start when the first epoch ends."
        last = epochs[-1]
        note = f"epoch {last['epoch']} of {last['epochs']}: validation top-1 {percent(last.get('val_top1'))}"
        confusion = last.get("confusion") or {"classes": [], "matrix": []}
        return charts.training_curves(epochs), charts.confusion_heatmap(confusion), note

    @ui.callback(
        Output("class-counts", "figure"),
        Output("prediction-summary", "children"),
        Output("gallery-label", "options"),
        Input("job-tick", "n_intervals"),
        State("job-id", "data"),
    )
    def prediction_counts(_tick, job_id):
        reply = calls.get(f"/jobs/{job_id}")
        if not reply.ok:
            return no_update, message(reply.error), no_update
        summary = reply.body.get("summary") or {}
        labels = summary.get("labels") or {}
        text = (
            f"{summary.get('done', 0)} of {summary.get('total', 0)} files done, {summary.get('failed', 0)} failed"
            + (f", {summary['images_per_s']} images/s" if summary.get("images_per_s") else "")
        )
        return charts.class_counts(labels), text if summary else "Listing the input...", sorted(labels)

    @ui.callback(
        Output("gallery-page", "data"),
        Input("gallery-label", "value"),
        Input("gallery-confidence", "value"),
        Input("gallery-errors", "value"),
        Input("gallery-next", "n_clicks"),
        Input("gallery-previous", "n_clicks"),
        State("gallery-page", "data"),
        State("gallery-next-cursor", "data"),
        prevent_initial_call=True,
    )
    def turn_page(_label, _confidence, _errors, _next, _previous, page, next_cursor):
        if ctx.triggered_id == "gallery-next":
            if not next_cursor:
                return no_update
            return {"cursor": next_cursor, "previous": [*page["previous"], page["cursor"]]}
        if ctx.triggered_id == "gallery-previous":
            if not page["previous"]:
                return no_update
            return {"cursor": page["previous"][-1], "previous": page["previous"][:-1]}
        return {"cursor": None, "previous": []}  # a filter changed: back to the first page

    @ui.callback(
        Output("gallery", "children"),
        Output("gallery-next-cursor", "data"),
        Output("results-csv", "href"),
        Output("gallery-next", "disabled"),
        Output("gallery-previous", "disabled"),
        Output("gallery-digest", "data"),
        Input("gallery-page", "data"),
        Input("job-tick", "n_intervals"),
        State("gallery-label", "value"),
        State("gallery-confidence", "value"),
        State("gallery-errors", "value"),
        State("job-id", "data"),
        State("gallery-digest", "data"),
    )
    def gallery(page, _tick, label, max_confidence, errors, job_id, shown_digest):
        filters = result_filters(label, max_confidence, errors)
        csv = f"/jobs/{job_id}/results?" + urlencode({**filters, "format": "csv"})
        reply = calls.get(f"/jobs/{job_id}/results", limit=GALLERY_PAGE, cursor=page["cursor"], **filters)
        if not reply.ok:
            return message(reply.error), None, csv, True, True, None
        shown = f"{csv} {page} {reply.digest}"  # the same question, answered the same
        if shown == shown_digest:  # e.g. a full page stays full while the job runs on
            return (no_update,) * 6
        results, next_cursor = reply.body["results"], reply.body["next_cursor"]
        tiles = [tile(job_id, r) for r in results] or [html.P("No results match.", className="muted")]
        return tiles, next_cursor, csv, not next_cursor, not page["previous"], shown
