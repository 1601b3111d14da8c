"""Small pieces every page uses: messages, status badges, progress bars, times."""

import base64
from datetime import datetime

from dash import dcc, html


def message(text: str, kind: str = "error") -> html.Div:
    """A visible sentence: what went wrong (the API's message) or what happened."""
    return html.Div(text, className=f"message {kind}", role="alert" if kind == "error" else "status")


def status_badge(status: str) -> html.Span:
    return html.Span(status, className=f"badge status-{status}")


def progress_bar(progress: dict) -> html.Div:
    done, total, unit = progress.get("done") or 0, progress.get("total"), progress.get("unit") or ""
    label = f"{done}/{total} {unit}" if total else f"{done} {unit}".strip()
    bar = html.Progress(value=str(done), max=str(total)) if total else html.Progress()  # no max: indeterminate
    return html.Div([bar, html.Span(label, className="progress-label")], className="progress")


def short_id(uuid_text: str | None) -> str:
    return uuid_text[:8] if uuid_text else ""


def job_link(job_id: str) -> dcc.Link:
    return dcc.Link(short_id(job_id), href=f"/ui/jobs/{job_id}", className="mono", title=job_id)


def when(iso_text: str | None) -> str:
    if not iso_text:
        return ""
    return datetime.fromisoformat(iso_text).strftime("%Y-%m-%d %H:%M:%S")


def percent(fraction: float | None) -> str:
    return "" if fraction is None else f"{fraction:.1%}"


def field(label: str, control, hint: str | None = None) -> html.Label:
    parts = [html.Span(label, className="field-label"), control]
    if hint:
        parts.append(html.Small(hint, className="hint"))
    return html.Label(parts, className="field")


def uploaded_file(contents: str) -> tuple[str, bytes]:
    """dcc.Upload's "data:image/png;base64,..." as (media type, bytes)."""
    header, _, data = contents.partition(",")
    return header.removeprefix("data:").split(";")[0] or "application/octet-stream", base64.b64decode(data)
