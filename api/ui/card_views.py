"""A model's card (GET /models/<id>/card) as parts of its page: where it comes from (training set,
code, settings, base weights, parent, machine and minutes) and the files to take it elsewhere."""

from dash import html

from api.ui.components import duration, model_link

# The downloads GET /models/<id>/download offers, as the page names them.
DOWNLOADS = {"onnx": "ONNX (answers in the model's own labels)", "safetensors": "safetensors (the weights)"}


def lineage_part(card: dict) -> list:
    """The card's lineage as facts, its settings folded away; a sentence for a model that has none."""
    lineage = card.get("lineage")
    if not lineage:
        return [
            html.P(
                "Registered before models recorded where they come from: no lineage.",
                className="muted",
                id="card-lineage",
            )
        ]
    settings = lineage.get("settings") or {}
    return [
        lineage_facts(lineage),
        html.Details(
            [
                html.Summary(f"Every setting of its training ({len(settings)})"),
                html.Dl(
                    [part for name in sorted(settings) for part in setting(name, settings[name])],
                    className="facts settings",
                ),
            ],
            id="card-settings",
        ),
    ]


def lineage_facts(lineage: dict) -> html.Dl:
    data, code, machine = (lineage.get(part) or {} for part in ("data", "code", "machine"))
    photos = data.get("photos") or {}
    parent = lineage.get("parent_model")  # the API records none yet: every model starts from base weights
    shown = {
        "training set": f"split {data.get('splits')} of {data.get('data_dir') or 'the service dataset'}",
        "photos": f"{photos.get('files')} photos, {size(photos.get('bytes'))}",
        "photos digest": mono(photos.get("digest")),
        "index digest": mono(data.get("index_fingerprint")),
        "code": [
            f"{code.get('package')} {code.get('version') or '(version unknown)'}, commit ",
            mono(code.get("git_commit") or "unknown"),
        ],
        "base weights": lineage.get("base_weights"),
        "parent model": model_link(parent) if parent else "none: trained from its base weights",
        "machine": f"{machine.get('host')}: {machine.get('cpu')}, {machine.get('cores')} cores",
        "device": machine.get("device"),
        "training time": training_time(lineage.get("training_seconds")),
    }
    entries = [part for name, value in shown.items() for part in (html.Dt(name), html.Dd(value, **{"data-fact": name}))]
    return html.Dl(entries, className="facts", id="card-lineage")


def setting(name: str, value) -> list:
    return [html.Dt(name), html.Dd(html.Span("not set" if value is None else str(value), className="mono"))]


def training_time(seconds: float | None) -> str:
    if seconds is None:
        return "not recorded"
    return f"{seconds / 60:.1f} minutes ({duration(seconds)})"


def size(count: int | None) -> str:
    if count is None:
        return "size unknown"
    shown, unit = float(count), "bytes"
    for larger in ("KB", "MB", "GB"):
        if shown < 1000:
            break
        shown, unit = shown / 1000, larger
    return f"{count} bytes" if unit == "bytes" else f"{shown:.1f} {unit}"


def mono(text: str | None) -> html.Span:
    return html.Span(text or "unknown", className="mono")


def downloads_part(model_id: str) -> html.Ul:
    """The model's files through the API (the browser's cookie reads them), and its card as Markdown."""
    links = [
        html.Li(html.A(text, href=f"/models/{model_id}/download?format={fmt}", id=f"download-{fmt}"))
        for fmt, text in DOWNLOADS.items()
    ]
    card = html.A("its card as Markdown", href=f"/models/{model_id}/card?format=markdown", id="card-markdown")
    return html.Ul([*links, html.Li(card)], id="model-downloads")
