"""A job's page: live header; training curves and confusion matrix, or a prediction job's
counts per class, gallery (by class, low confidence, failures) and CSV download, or an evaluation's
figures (top-1/top-5, calibration, per class, confusion matrix) above the same gallery, each file
with its true label and right or wrong.

A page is its parts in order (``layout``): the header, then its kind's body (BODIES); a part that
some jobs have (a training's settings) is a function of the job that answers None for the others."""

from urllib.parse import quote, urlencode

from dash import Dash, Input, Output, State, ctx, dcc, html, no_update

from api.ui import charts, evaluation_views, training_views
from api.ui.components import (
    duration,
    elapsed_seconds,
    facts,
    job_badge,
    job_link,
    message,
    model_link,
    percent,
    progress_bar,
    short_id,
    status_badge,
    when,
)
from service.kinds import EVALUATE, PREDICT, TRAIN
from service.specs import set_name
from service.states import FINISHED_STATUSES, LIVE_STATUSES, Status

REFRESH_MS = 2000
UNSET = {"data_dir": "the service's dataset", "threads": "the cores it may use"}  # what a setting left None means
WAITING_FOR_EPOCH = "Waiting for the first epoch to end: its curves start then (the bar above counts its batches)."
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
    return html.Section(
        [
            dcc.Store(id="job-id", data=job_id),
            dcc.Interval(id="job-tick", interval=REFRESH_MS, disabled=job["status"] in FINISHED_STATUSES),
            html.Div(header(job), id="job-header"),
            html.Div(id="job-message"),
            html.Div(settings_part(job), id="job-settings-area"),
            BODIES[job["type"]](job, calls) if job["type"] in BODIES else None,
        ]
    )


# What a job's model is to it, and what its params are called, by kind.
MODEL_ROLES = {TRAIN.name: "trained model", EVALUATE.name: "evaluated model"}
REQUEST_NAMES = {PREDICT.name: "input", EVALUATE.name: "set", TRAIN.name: "parameters"}


def header(job: dict) -> list:
    parts = [
        html.H1(
            ["Job ", html.Span(short_id(job["id"]), className="mono", title=job["id"]), " ", job_badge(job)],
            id="job-title",
        ),
        progress_bar(job),
        facts(
            {
                "type": job["type"],
                "created": when(job["created_at"]),
                "started": when(job["started_at"]),
                "finished": when(job["finished_at"]),
                "elapsed": elapsed(job),
                "remaining": remaining(job),
                "attempts": str(job["attempts"]),
                "worker": job.get("worker"),
                "device": job.get("device"),
                MODEL_ROLES.get(job["type"], "model"): model_link(job["model_id"]) if job.get("model_id") else None,
                REQUEST_NAMES.get(job["type"], "parameters"): described(job),
                "made by": job_link(job["parent_id"]) if job.get("parent_id") else None,  # a chain's step
            }
        ),
        chain_part(job.get("chain")),
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
    if job["status"] in LIVE_STATUSES and not job.get("cancel_requested"):
        parts.append(html.Button("Cancel job", id="job-cancel", className="small"))
    return parts


def chain_part(chain: dict | None) -> html.Section | None:
    """A training's chain (train -> evaluate -> promote): what it asked for, each step made so far,
    and where and why it stopped."""
    if chain is None:
        return None
    then = chain["then"]
    asked = [f"evaluate on {set_name(then['evaluate'])}"]
    if then.get("promote"):
        gate = then.get("gate") or {}
        rules = [f"top-1 at least {percent(gate['min_top1'])}" if gate.get("min_top1") is not None else None]
        rules.append(f"not worse than {gate['not_worse_than']}" if gate.get("not_worse_than") else None)
        rules = [rule for rule in rules if rule]
        asked.append(f"promote to {then['promote']}" + (f" if {' and '.join(rules)}" if rules else ""))
    steps = [
        html.Li(
            [
                status_badge(step["status"]),
                f" {step['type']} ",
                job_link(step["id"]),
                *((" of model ", model_link(step["model_id"])) if step["model_id"] else ()),
                f": {step['error']['message']}" if step["error"] else "",
            ]
        )
        for step in chain["steps"]
    ]
    return html.Section(
        [
            html.H2("Then"),
            html.P(", then ".join(asked)),
            html.Ol(steps) if steps else html.P("No step yet: they follow the training's success.", className="muted"),
            message(f"The chain stopped: {chain['stopped']}") if chain["stopped"] else None,
        ],
        id="job-chain",
    )


def settings_part(job: dict) -> html.Section | None:
    """A training's settings, once its run has started (the worker fills in the defaults)."""
    settings = (job.get("result") or {}).get("settings")
    return settings_section(settings, given=job["params"]) if settings else None


def elapsed(job: dict) -> str | None:
    seconds = elapsed_seconds(job)
    if seconds is None:
        return None
    return duration(seconds) + (" so far" if job["status"] == Status.RUNNING else "")


def remaining(job: dict) -> str | None:
    """While it runs: the API's estimate at the pace so far, once it has one."""
    if job["status"] != Status.RUNNING:
        return None
    seconds = job["progress"].get("remaining_seconds")
    return f"about {duration(seconds)}" if seconds is not None else "estimating (after the first batches)"


def settings_section(settings: dict, given: dict) -> html.Section:
    """Every setting the run uses, defaults filled in; those the job asked for are marked."""
    entries = []
    for name, value in settings.items():
        shown = str(value) if value is not None else UNSET.get(name, "not set")
        mark = html.Span("given", className="badge given") if name in given else None
        entries += [html.Dt(name), html.Dd([html.Span(shown, className="mono"), " ", mark])]
    return html.Section(
        [
            html.H2("Settings"),
            html.P(
                f"Every setting this run uses: {len(given)} given with the job, the rest the recipe's defaults.",
                className="muted",
            ),
            html.Dl(entries, className="facts settings", id="job-settings"),
        ]
    )


def described(job: dict) -> str:
    """A job's request in a line: a training job's settings, what a prediction job reads, or the set
    an evaluation scores."""
    params = job["params"]
    if job["type"] == EVALUATE.name:
        return set_name(params.get("named"))
    source = params.get("input")
    if source is None:
        return ", ".join(f"{name} {value}" for name, value in params.items()) or "the default recipe"
    if "upload" in source:
        return f"{source['upload']['files']} uploaded file(s)"
    if "folder" in source or "url" in source:
        return source.get("folder") or source["url"]
    return f"{source.get('paths_count', len(source['paths']))} listed file(s)"


def training_body(_job: dict, _calls) -> html.Div:
    return html.Div(
        [
            html.H2("Training curves"),
            html.Div(id="training-note", className="muted"),
            html.Div(id="training-curves", className="chart-pair"),
            html.Div(id="confusion-area"),
            dcc.Store(id="training-epochs-shown"),
        ]
    )


def before_first_epoch(job) -> tuple[list, list]:
    """Curves and confusion matrix before any epoch ended: a sentence each, no empty axes or blank matrix."""
    if not job.ok or job.body["status"] in LIVE_STATUSES:
        waiting, missing = WAITING_FOR_EPOCH, "The confusion matrix comes with the first validated epoch."
    else:
        waiting, missing = "No epoch ended: this job has no curves.", "No epoch was validated."
    return training_views.curves([], waiting), training_views.confusion(None, "", missing)


def all_events(calls, job_id: str):
    """Every event of the job, page after page (a long training has one per epoch), or the reply that failed."""
    events, cursor = [], None
    while True:
        reply = calls.get(f"/jobs/{job_id}/events", cursor=cursor)
        if not reply.ok:
            return None, reply
        events += reply.body["events"]
        cursor = reply.body["next_cursor"]
        if not cursor:
            return events, None


def accuracy_card(summary: dict, finished: bool) -> list:
    """Top-1 over the files whose folder or name is one of the model's classes (the API's accuracy)."""
    accuracy = summary.get("accuracy")
    if accuracy:
        return [
            html.Div("Accuracy on labelled files", className="card-title"),
            html.Div(percent(accuracy["top1"]), className="big-number", id="accuracy-top1"),
            html.P(
                f"{accuracy['correct']} of {accuracy['labelled']} files whose folder or name is one of the model's "
                "classes got that class.",
                className="muted",
            ),
        ]
    if finished:
        return [html.P("No accuracy: no file's folder or name is one of the model's classes.", className="muted")]
    return [html.P("The accuracy over labelled files comes when the job ends.", className="muted")]


def runtimes_text(runtimes: dict[str, int]) -> str:
    """Where the shards ran: "ran on onnx-fp32 (3 shards), torch (1 shard)"."""
    if not runtimes:
        return ""
    ran = ", ".join(f"{name} ({count} shard{'s' if count != 1 else ''})" for name, count in runtimes.items())
    return f"ran on {ran}"


def prediction_body(_job: dict, _calls) -> html.Div:
    return html.Div(
        [
            *counts_part("Files per class", html.Div(id="prediction-accuracy", className="card")),
            *gallery_part(classes=None),
        ]
    )


def evaluation_body(job: dict, calls) -> html.Div:
    """The evaluation's figures once it ends, then what a prediction job's page shows: the files per
    predicted class and the gallery, where each file also shows its true label and whether it was right."""
    model = calls.get(f"/models/{job['model_id']}") if job.get("model_id") else None
    classes = model.body["classes"] if model is not None and model.ok else []
    return html.Div(
        [
            html.H2("Evaluation"),
            html.Div(id="evaluation-metrics"),
            *counts_part("Files per predicted class", html.Div(id="evaluation-scored", className="card")),
            *gallery_part(classes=classes),
        ]
    )


def counts_part(title: str, beside) -> list:
    """The files per class chart, ``beside`` it a card of the kind's own; the job's summary for both."""
    return [
        html.H2(title),
        html.Div(id="prediction-summary", className="muted"),
        html.Div(
            [dcc.Graph(id="class-counts", config={"displaylogo": False}), beside],
            className="counts-grid",
        ),
        dcc.Store(id="job-summary"),
    ]


def gallery_part(classes: list[str] | None) -> list:
    """The results a page at a time; ``classes``: an evaluated model's, whose files are right or wrong."""
    return [
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
        dcc.Store(id="gallery-classes", data=classes),
        html.Div(id="gallery", className="gallery"),
        html.Div(
            [
                html.Button("Previous page", id="gallery-previous", className="small"),
                html.Button("Next page", id="gallery-next", className="small"),
            ],
            className="actions",
        ),
    ]


def evaluation_metrics(summary: dict, finished: bool, job_id: str) -> list:
    """The evaluation's figures, kept with the job as it ended; a sentence until then, or if it failed."""
    report = summary.get("evaluation")
    if report:
        return evaluation_views.metrics_part(report, job_id=job_id)
    if finished:
        return [html.P("No figures: the evaluation did not succeed.", className="muted", id="evaluation-missing")]
    waiting = "The figures (top-1, top-5, calibration, per class) come when every file is classified."
    return [html.P(waiting, className="muted", id="evaluation-missing")]


def scored_card(summary: dict) -> list:
    """Beside the counts: how many files the figures score, and those they leave out."""
    report = summary.get("evaluation")
    if not report:
        return [html.P("Files are scored against their labels when the job ends.", className="muted")]
    left_out = report["unlabelled"] + sum((report.get("unknown_labels") or {}).values())
    return [
        html.Div("Scored against their labels", className="card-title"),
        html.Div(str(report["count"]), className="big-number"),
        html.P(f"files; {left_out} left out (no label, or one the model does not know).", className="muted"),
    ]


def result_filters(label, max_confidence, errors) -> dict:
    filters = {"label": label or None, "errors_only": "true" if errors else None}
    if max_confidence is not None and max_confidence < 1:
        filters["max_confidence"] = max_confidence
    return {name: value for name, value in filters.items() if value is not None}


def verdict(result: dict, classes: list[str]) -> str:
    """An evaluated file as its figures count it: right, wrong, or not scored (no label, or a label
    the model does not know); an unreadable file is a miss."""
    truth = result.get("true_label")
    if truth is None:
        return "unlabelled"
    if truth not in classes:
        return "unknown class"
    return "right" if result.get("label") == truth else "wrong"


def truth_caption(result: dict, classes: list[str] | None) -> list:
    if classes is None:
        return []
    shown = verdict(result, classes)
    return [
        html.Span(["true: ", html.Strong(result.get("true_label") or "none")], className="tile-truth"),
        html.Span(shown, className=f"badge verdict-{shown.replace(' ', '-')}"),
    ]


def tile(job_id: str, result: dict, classes: list[str] | None = None) -> html.Figure:
    """One file's result; with ``classes`` (an evaluation's), its true label and whether it was right."""
    name = result["path"].rsplit("/", 1)[-1]
    evaluated = {} if classes is None else {"data-verdict": verdict(result, classes)}
    if result.get("error"):
        return html.Figure(
            [
                html.Div(result["error"]["code"], className="tile-error"),
                html.Figcaption(
                    [
                        html.Span(name, className="mono", title=result["path"]),
                        html.Span(result["error"]["message"], className="muted"),
                        *truth_caption(result, classes),
                    ]
                ),
            ],
            className="tile failed",
            **evaluated,
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
                    *truth_caption(result, classes),
                ]
            ),
        ],
        className="tile",
        **{"data-label": result["label"], "data-confidence": str(result["confidence"])},
        **({"data-true-label": result.get("true_label") or ""} if classes is not None else {}),
        **evaluated,
    )


# Each kind's body under the header; a kind not named here (a promotion) has its header alone.
BODIES = {TRAIN.name: training_body, PREDICT.name: prediction_body, EVALUATE.name: evaluation_body}


def register(ui: Dash, calls) -> None:
    @ui.callback(
        Output("job-header", "children"),
        Output("job-tick", "disabled"),
        Output("job-settings-area", "children"),
        Input("job-tick", "n_intervals"),
        State("job-id", "data"),
        State("job-settings-area", "children"),
        prevent_initial_call=True,
    )
    def refresh_header(_tick, job_id, settings_shown):
        reply = calls.get(f"/jobs/{job_id}")
        if not reply.ok:
            return message(reply.error), True, no_update
        # The settings are written once, when the run starts: drawn then, not at every tick.
        settings = no_update if settings_shown else settings_part(reply.body)
        return header(reply.body), reply.body["status"] in FINISHED_STATUSES, settings

    @ui.callback(
        Output("job-message", "children"),
        Output("job-header", "children", allow_duplicate=True),
        Input("job-cancel", "n_clicks"),
        State("job-id", "data"),
        prevent_initial_call=True,
    )
    def cancel(clicks, job_id):
        if not clicks:
            return no_update, no_update
        reply = calls.post_json(f"/jobs/{job_id}/cancel")
        if not reply.ok:
            return message(reply.error), no_update
        # The job as the cancel left it: a running one says "cancelling" at once, not at the next tick.
        stops = "it stops at its next progress report" if reply.body["status"] == Status.RUNNING else "it ended"
        return message(f"Cancel requested: {stops}.", "ok"), header(reply.body)

    @ui.callback(
        Output("training-curves", "children"),
        Output("confusion-area", "children"),
        Output("training-note", "children"),
        Output("training-epochs-shown", "data"),
        Input("job-tick", "n_intervals"),
        State("job-id", "data"),
        State("training-epochs-shown", "data"),
    )
    def training_figures(_tick, job_id, epochs_shown):
        events, failed = all_events(calls, job_id)
        if failed is not None:
            return no_update, no_update, message(failed.error), no_update
        epochs = training_views.epochs_of(events)
        if epochs and len(epochs) == epochs_shown:  # no new epoch: the charts stay as drawn
            return (no_update,) * 4
        if not epochs:
            return *before_first_epoch(calls.get(f"/jobs/{job_id}")), None, 0
        last = epochs[-1]
        note = f"epoch {last['epoch']} of {last['epochs']}: validation top-1 {percent(last.get('val_top1'))}"
        matrix, validated = training_views.last_confusion(epochs) or (None, None)
        confusion = training_views.confusion(
            matrix, f"Confusion matrix (validation, epoch {validated})", "No epoch validated yet."
        )
        return training_views.curves(epochs, ""), confusion, note, len(epochs)

    @ui.callback(
        Output("class-counts", "figure"),
        Output("prediction-summary", "children"),
        Output("gallery-label", "options"),
        Output("job-summary", "data"),
        Input("job-tick", "n_intervals"),
        State("job-id", "data"),
    )
    def prediction_counts(_tick, job_id):
        reply = calls.get(f"/jobs/{job_id}")
        if not reply.ok:
            return no_update, message(reply.error), no_update, no_update
        summary = reply.body.get("summary") or {}
        labels = summary.get("labels") or {}
        counts = (
            f"{summary.get('done', 0)} of {summary.get('total', 0)} files done, {summary.get('failed', 0)} failed"
            + (f", {summary['images_per_s']} images/s" if summary.get("images_per_s") else "")
        )
        ran = runtimes_text(summary.get("runtimes") or {})
        shown = [counts, *(["; ", html.Span(ran, id="prediction-runtimes")] if ran else [])]
        finished = reply.body["status"] in FINISHED_STATUSES
        return (
            charts.class_counts(labels),
            shown if summary else "Listing the input...",
            sorted(labels),
            {"summary": summary, "finished": finished},
        )

    # The parts each kind draws from the job's summary (prediction_counts reads it once per tick).
    @ui.callback(Output("prediction-accuracy", "children"), Input("job-summary", "data"), prevent_initial_call=True)
    def prediction_accuracy(shown):
        return accuracy_card(shown["summary"], shown["finished"])

    @ui.callback(
        Output("evaluation-metrics", "children"),
        Output("evaluation-scored", "children"),
        Input("job-summary", "data"),
        State("job-id", "data"),
        prevent_initial_call=True,
    )
    def evaluation_figures(shown, job_id):
        return evaluation_metrics(shown["summary"], shown["finished"], job_id), scored_card(shown["summary"])

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
        State("gallery-classes", "data"),
    )
    def gallery(page, _tick, label, max_confidence, errors, job_id, shown_digest, classes):
        filters = result_filters(label, max_confidence, errors)
        csv = f"/jobs/{job_id}/results?" + urlencode({**filters, "format": "csv"})
        reply = calls.get(f"/jobs/{job_id}/results", limit=GALLERY_PAGE, cursor=page["cursor"], **filters)
        if not reply.ok:
            return message(reply.error), None, csv, True, True, None
        shown = f"{csv} {page} {reply.digest}"  # the same question, answered the same
        if shown == shown_digest:  # e.g. a full page stays full while the job runs on
            return (no_update,) * 6
        results, next_cursor = reply.body["results"], reply.body["next_cursor"]
        tiles = [tile(job_id, r, classes) for r in results] or [html.P("No results match.", className="muted")]
        return tiles, next_cursor, csv, not next_cursor, not page["previous"], shown
