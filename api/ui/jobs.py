"""Jobs: the live list with filters and cancel, and the forms that submit training and prediction jobs."""

import uuid

from dash import ALL, Dash, Input, Output, State, ctx, dcc, html, no_update

from api.ui.components import (
    field,
    job_badge,
    job_link,
    message,
    model_link,
    progress_bar,
    uploaded_file,
    when,
)
from grocery.config import TRAIN_PARAMS
from service.kinds import JOB_TYPES
from service.states import LIVE_STATUSES, Lane, Status

# The training parameters the form sets, in the order train_request takes their values.
FORM_PARAMS = (
    "arch",
    "weights",
    "label_level",
    "epochs",
    "batch_size",
    "learning_rate",
    "input_size",
    "freeze",
    "data_dir",
)
FORM_EPOCHS = 5  # a short first run, not the recipe's
REFRESH_MS = 2000
PAGE, MAX_LISTED = 50, 500  # jobs shown at first, and at most ("Show older jobs" adds a page)
MAX_UPLOAD_BYTES = 64 * 1024 * 1024  # through the browser; bigger sets: a folder, or `grocery jobs submit`


def layout() -> html.Section:
    return html.Section(
        [
            html.H1("Jobs"),
            html.Div(
                [
                    field("Type", dcc.RadioItems(["all", *JOB_TYPES], "all", id="jobs-type", inline=True)),
                    field(
                        "Status",
                        dcc.Dropdown(
                            [str(status) for status in Status], None, id="jobs-status", placeholder="any status"
                        ),
                    ),
                    html.Div(
                        dcc.Checklist(
                            [{"label": "show one-file jobs", "value": Lane.INTERACTIVE}], [], id="jobs-interactive"
                        ),
                        title="the workshop's photos, POST /predict's files and other small interactive jobs",
                    ),
                ],
                className="filters",
            ),
            html.Div(id="jobs-message"),
            html.Div(id="jobs-list-error"),
            html.Div(id="jobs-table"),
            html.Button("Show older jobs", id="jobs-more", className="small", hidden=True),
            dcc.Store(id="jobs-digest"),
            dcc.Interval(id="jobs-tick", interval=REFRESH_MS),
            html.Div([train_form(), predict_form()], className="forms"),
        ]
    )


def train_form() -> html.Details:
    arch, weights, label_level = (TRAIN_PARAMS[name] for name in ("arch", "weights", "label_level"))
    return html.Details(
        [
            html.Summary("New training job"),
            field(
                "Architecture", dcc.Dropdown(list(arch.choices), arch.default, id=element_id("arch"), clearable=False)
            ),
            field(
                "Pretrained weights",
                dcc.Dropdown(list(weights.named), weights.default, id=element_id("weights"), clearable=False),
            ),
            field(
                "Labels",
                dcc.RadioItems(
                    list(label_level.choices), label_level.default, id=element_id("label_level"), inline=True
                ),
            ),
            field("Epochs", number_input("epochs", value=FORM_EPOCHS)),
            field("Batch size", number_input("batch_size")),
            field("Learning rate", number_input("learning_rate")),
            html.Details(
                [
                    html.Summary("Advanced"),
                    field("Input size (px)", number_input("input_size")),
                    field("Frozen blocks", number_input("freeze")),
                    field(
                        "Dataset folder",
                        dcc.Input(id=element_id("data_dir"), type="text", placeholder="server default"),
                        "a folder on the server, inside its allowed input roots",
                    ),
                ]
            ),
            dcc.Store(id="train-key", data=new_key()),
            html.Button("Start training", id="train-submit", className="primary"),
            html.Div(id="train-message"),
        ],
        className="form",
    )


def element_id(name: str) -> str:
    """The form element of a training parameter (browser tests find them by these ids)."""
    return "train-" + name.replace("_", "-")


def number_input(name: str, **props) -> dcc.Input:
    """A number box for a training parameter: its inclusive bounds as min and max (the API checks the
    others), its default as the placeholder: what an empty box gets."""
    p = TRAIN_PARAMS[name]
    limits = {key: value for key, value in (("min", p.ge), ("max", p.le)) if value is not None}
    return dcc.Input(id=element_id(name), type="number", placeholder=str(p.default), **limits, **props)


def predict_form() -> html.Details:
    return html.Details(
        [
            html.Summary("New prediction job"),
            field("Model", dcc.Dropdown(id="predict-model", placeholder="latest"), "a model, or an alias"),
            field(
                "Folder on the server, or bucket prefix",
                dcc.Input(id="predict-folder", type="text", placeholder="/data/photos or s3://bucket/photos/"),
                "classified with its subfolders",
            ),
            field(
                "or upload images",
                dcc.Upload(
                    html.Div(["Drop images or a .zip here, or ", html.A("choose files")]),
                    id="predict-files",
                    multiple=True,
                    max_size=MAX_UPLOAD_BYTES,
                    className="dropzone",
                ),
                f"up to {MAX_UPLOAD_BYTES // 2**20} MiB in all; bigger sets: a folder, or `grocery jobs submit`",
            ),
            html.Div(id="predict-files-chosen", className="muted"),
            dcc.Store(id="predict-key", data=new_key()),
            html.Button("Start prediction", id="predict-submit", className="primary"),
            html.Div(id="predict-message"),
        ],
        className="form",
    )


def jobs_table(jobs: list[dict]) -> html.Table | html.P:
    if not jobs:
        return html.P("No jobs yet.", className="muted")
    columns = ("Job", "Type", "Status", "Progress", "Model", "Created", "Worker", "")
    head = html.Thead(html.Tr([html.Th(c) for c in columns]))
    return html.Table([head, html.Tbody([job_row(job) for job in jobs])], className="table", id="jobs-list")


def job_row(job: dict) -> html.Tr:
    cancel = None
    if job["status"] in LIVE_STATUSES and not job.get("cancel_requested"):
        cancel = html.Button("Cancel", id={"type": "cancel-job", "job": job["id"]}, className="small")
    return html.Tr(
        [
            html.Td(job_link(job["id"])),
            html.Td(job["type"]),
            html.Td(job_badge(job)),
            html.Td(progress_bar(job)),
            html.Td(model_link(job["model_id"]) if job.get("model_id") else ""),
            html.Td(when(job["created_at"])),
            html.Td(job.get("worker") or "", className="mono"),
            html.Td(cancel),
        ],
        className=f"job-row job-{job['status']}",
        **{"data-job": job["id"]},
    )


def train_request(*values) -> dict:
    """The job request for the form's values (FORM_PARAMS' order); empty ones take the recipe's default."""
    params = dict(zip(FORM_PARAMS, values, strict=True))
    params["data_dir"] = (params["data_dir"] or "").strip() or None
    return {"type": "train", "params": {k: v for k, v in params.items() if v not in (None, "")}}


def listed_lane(shown: list | None) -> Lane | None:
    """The jobs listed: bulk ones only, unless one-file (interactive) jobs are asked for too."""
    return None if Lane.INTERACTIVE in (shown or []) else Lane.BULK


def accepted(reply) -> html.Div:
    job = reply.body
    return html.Div(
        ["Job ", dcc.Link(job["id"], href=f"/ui/jobs/{job['id']}", className="mono"), f" is {job['status']}."],
        className="message ok",
        role="status",
    )


def new_key() -> str:
    """One form submission's Idempotency-Key: a second click sent before the first one's answer came
    back, or a retry, gets the same job; the form takes a new key once a job was accepted."""
    return str(uuid.uuid4())


def submitted(reply, key: str) -> tuple:
    """The form's message, and the key its next submission uses."""
    if not reply.ok:
        return message(reply.error), key
    return accepted(reply), new_key()


def uploaded(contents: list[str], names: list[str]) -> list[tuple[str, bytes]]:
    return [(name, uploaded_file(data)[1]) for name, data in zip(names, contents, strict=True)]


def register(ui: Dash, calls) -> None:
    @ui.callback(
        Output("jobs-table", "children"),
        Output("jobs-list-error", "children"),
        Output("jobs-digest", "data"),
        Output("jobs-more", "hidden"),
        Input("jobs-tick", "n_intervals"),
        Input("jobs-type", "value"),
        Input("jobs-status", "value"),
        Input("jobs-more", "n_clicks"),
        Input("jobs-interactive", "value"),
        State("jobs-digest", "data"),
    )
    def refresh(_tick, job_type, status, more, interactive, shown_digest):
        limit = min(MAX_LISTED, PAGE * (1 + (more or 0)))
        job_type = None if job_type == "all" else job_type
        reply = calls.get("/jobs", type=job_type, status=status, lane=listed_lane(interactive), limit=limit)
        if not reply.ok:
            return no_update, message(reply.error), None, True
        # Most ticks find the list as it was: send nothing, and the browser redraws nothing.
        if reply.digest == shown_digest:
            return no_update, None, no_update, no_update
        jobs = reply.body["jobs"]
        return jobs_table(jobs), None, reply.digest, not reply.body["next_cursor"] or limit >= MAX_LISTED

    @ui.callback(
        Output("train-message", "children"),
        Output("train-key", "data"),
        Input("train-submit", "n_clicks"),
        State("train-key", "data"),
        *(State(element_id(name), "value") for name in FORM_PARAMS),
        prevent_initial_call=True,
    )
    def submit_train(_clicks, key, *fields):
        reply = calls.post_json("/jobs", train_request(*fields), key=key)
        return submitted(reply, key)

    @ui.callback(Output("predict-model", "options"), Input("predict-model", "id"))
    def model_choices(_):
        reply = calls.get("/models")
        aliases = ["latest", "production"]
        if not reply.ok:
            return aliases
        versions = [
            {"label": f"v{m['version']} {m['arch']} ({m['id'][:8]})", "value": m["id"]} for m in reply.body["models"]
        ]
        return [*aliases, *versions]

    @ui.callback(Output("predict-files-chosen", "children"), Input("predict-files", "filename"))
    def files_chosen(names):
        return f"{len(names)} file(s): {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}" if names else None

    @ui.callback(
        Output("predict-message", "children"),
        Output("predict-key", "data"),
        Output("jobs-interactive", "value"),
        Input("predict-submit", "n_clicks"),
        State("predict-key", "data"),
        State("predict-model", "value"),
        State("predict-folder", "value"),
        State("predict-files", "contents"),
        State("predict-files", "filename"),
        prevent_initial_call=True,
    )
    def submit_predict(_clicks, key, model, folder, contents, names):
        reply = predict_request(key, model or "latest", folder, contents, names)
        if reply is None:
            return (
                message("Give a folder on the server or a bucket prefix, or choose images to upload."),
                no_update,
                no_update,
            )
        # A few uploaded files make an interactive job: the list shows those too, so that it shows this one.
        listed = [Lane.INTERACTIVE] if reply.ok and reply.body["lane"] == Lane.INTERACTIVE else no_update
        return *submitted(reply, key), listed

    def predict_request(key, model, folder, contents, names):
        """POST /jobs for the form's upload or folder; None when it names neither."""
        if contents:
            files = uploaded(contents, names)
            field = "archive" if len(files) == 1 and files[0][0].lower().endswith(".zip") else "files"
            return calls.post_files("/jobs", files, field, key=key, model=model)
        if (folder or "").strip():
            location = folder.strip()
            source = {"url": location} if location.startswith("s3://") else {"folder": location}
            return calls.post_json("/jobs", {"type": "predict", "model": model, "input": source}, key=key)
        return None

    @ui.callback(
        Output("jobs-message", "children"),
        Input({"type": "cancel-job", "job": ALL}, "n_clicks"),
        prevent_initial_call=True,
    )
    def cancel(clicks):
        # The list is redrawn every few seconds: new buttons arrive with no clicks and must do nothing.
        if not ctx.triggered_id or not any(clicks):
            return no_update
        job_id = ctx.triggered_id["job"]
        reply = calls.post_json(f"/jobs/{job_id}/cancel")
        if not reply.ok:
            return message(reply.error)
        return message(f"Job {job_id[:8]}: cancel requested ({reply.body['status']}).", "ok")
