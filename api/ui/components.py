"""Small pieces every page uses: messages, status badges, progress bars, times, links."""

import base64
import json
from datetime import datetime, timezone

from dash import dcc, html

from service.states import LIVE_STATUSES, Status

CANCELLING = "cancelling"  # not a status of its own: a live job whose cancel was asked


def message(text: str, kind: str = "error") -> html.Div:
    """A visible sentence: what went wrong (the API's message) or what happened."""
    return html.Div(text, className=f"message {kind}", role="alert" if kind == "error" else "status")


def status_badge(status: str) -> html.Span:
    return html.Span(status, className=f"badge status-{status}")


def shown_status(job: dict) -> str:
    """The job's status as a user reads it: a live job whose cancel was asked is 'cancelling'."""
    return CANCELLING if job.get("cancel_requested") and job["status"] in LIVE_STATUSES else job["status"]


def job_badge(job: dict) -> html.Span:
    return status_badge(shown_status(job))


def progress_bar(job: dict) -> html.Div:
    """Done of total units, and within the unit what the job reports (a training's batches), so a
    long epoch moves the bar; a failed job's bar says it failed instead."""
    progress = job["progress"]
    done, total, unit = progress.get("done") or 0, progress.get("total"), progress.get("unit") or ""
    label = f"{done}/{total} {unit}" if total else f"{done} {unit}".strip()
    batches = progress.get("batches") or {}
    within = batches["done"] / batches["total"] if batches.get("total") else 0.0
    if batches.get("total"):
        label += f", batch {batches['done']}/{batches['total']}"
    status = shown_status(job)
    if status == Status.FAILED:
        bar, label = html.Progress(value="1", max="1"), f"failed at {label}"
    elif total:
        bar = html.Progress(value=f"{min(total, done + within):.3f}", max=str(total))
    else:
        bar = html.Progress()  # no max: indeterminate
    if status in (CANCELLING, Status.CANCELLED):
        label = f"{status} at {label}"
    return html.Div([bar, html.Span(label, className="progress-label")], className=f"progress progress-{status}")


def short_id(uuid_text: str | None) -> str:
    return uuid_text[:8] if uuid_text else ""


def job_link(job_id: str) -> dcc.Link:
    return dcc.Link(short_id(job_id), href=f"/ui/jobs/{job_id}", className="mono", title=job_id)


def model_link(model_id: str, text: str | None = None) -> dcc.Link:
    return dcc.Link(text or short_id(model_id), href=f"/ui/models/{model_id}", className="mono", title=model_id)


def when(iso_text: str | None) -> str:
    if not iso_text:
        return ""
    return datetime.fromisoformat(iso_text).strftime("%Y-%m-%d %H:%M:%S")


def elapsed_seconds(job: dict) -> float | None:
    """From the start of its (last) attempt to its end, or to now while it runs."""
    if job["progress"].get("elapsed_seconds") is not None:
        return job["progress"]["elapsed_seconds"]
    if not job.get("started_at"):
        return None
    ended = datetime.fromisoformat(job["finished_at"]) if job.get("finished_at") else datetime.now(timezone.utc)
    return max(0.0, (ended - datetime.fromisoformat(job["started_at"])).total_seconds())


def duration(seconds: float) -> str:
    """3 s, 4 min 05 s, 2 h 03 min."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def percent(fraction: float | None) -> str:
    return "" if fraction is None else f"{fraction:.1%}"


def exact(value) -> dict:
    """The API's own figure (JSON) in data-value beside the rounded one shown: what a reader checks against."""
    return {"data-value": json.dumps(value)}


def field(label: str, control, hint: str | None = None) -> html.Label:
    parts = [html.Span(label, className="field-label"), control]
    if hint:
        parts.append(html.Small(hint, className="hint"))
    return html.Label(parts, className="field")


def facts(items: dict) -> html.Dl:
    """Name: value pairs; empty values left out."""
    return html.Dl(
        [part for name, value in items.items() if value not in (None, "") for part in (html.Dt(name), html.Dd(value))],
        className="facts",
    )


def uploaded_file(contents: str) -> tuple[str, bytes]:
    """dcc.Upload's "data:image/png;base64,..." as (media type, bytes)."""
    header, _, data = contents.partition(",")
    return header.removeprefix("data:").split(";")[0] or "application/octet-stream", base64.b64decode(data)
