"""An evaluation's figures as parts of a page: its job's page shows them in full (numbers, per-class
table, confusion matrix), the model's page lists the model's evaluations, the comparison page names
the set both were evaluated on. Everything shown is the API's answer (the job's `result.evaluation`,
the card's `evaluations`), never worked out again here."""

from urllib.parse import urlencode

from dash import dcc, html

from api.ui import training_views
from api.ui.components import exact, job_link, percent, when
from service.specs import set_name

NO_FIGURE = "–"  # a class nothing was predicted as has no precision; one with no file has no recall


def compare_href(**chosen: str | None) -> str:
    """The comparison page with what is chosen so far (a, b, evaluation): a link a user can keep."""
    return "/ui/compare?" + urlencode({name: value for name, value in chosen.items() if value})


def share(value: float | None) -> str:
    return NO_FIGURE if value is None else percent(value)


def number(title: str, shown: str, element_id: str, value) -> html.Div:
    """A figure in large type, the API's exact value in its data-value."""
    return html.Div(
        [
            html.Div(title, className="card-title"),
            html.Div(shown, className="big-number", id=element_id, **exact(value)),
        ],
        className="card",
    )


def metrics_part(report: dict, *, job_id: str) -> list:
    """An evaluation job's result in full: top-1/top-5 and calibration, what was and was not scored, per
    class precision, recall and support, and the confusion matrix."""
    matrix = {"classes": report["classes"], "matrix": report["confusion"]}
    return [
        html.Div(
            [
                number("Top-1", percent(report["top1"]), "evaluation-top1", report["top1"]),
                number("Top-5", percent(report["top5"]), "evaluation-top5", report["top5"]),
                number("Calibration error (ECE)", f"{report['ece']:.3f}", "evaluation-ece", report["ece"]),
            ],
            className="numbers",
        ),
        counted_part(report),
        html.P(
            dcc.Link(
                "Compare with another model on this set",
                href=compare_href(a=report.get("model_id"), evaluation=job_id),
                id="evaluation-compare",
            )
        ),
        html.H2("Per class"),
        per_class_table(report),
        *training_views.confusion(matrix, "Confusion matrix", "No file was scored."),
    ]


def counted_part(report: dict) -> html.Dl:
    """Which files the figures count, and those they leave out (counted, never silently dropped)."""
    unknown = report.get("unknown_labels") or {}
    named = ", ".join(f"{name} ({count})" for name, count in unknown.items())
    return html.Dl(
        [
            *entry("set", f"{set_name(report.get('set'))}, {report.get('label_level')} labels"),
            *entry("scored files", str(report["count"]), "evaluation-count"),
            *entry("unreadable (scored as misses)", str(report["errors"]), "evaluation-errors"),
            *entry("without a label (not scored)", str(report["unlabelled"]), "evaluation-unlabelled"),
            *entry(
                "labels the model does not know (not scored)",
                f"{sum(unknown.values())}" + (f": {named}" if named else ""),
                "evaluation-unknown",
            ),
        ],
        className="facts",
        id="evaluation-counts",
    )


def entry(name: str, value: str, element_id: str | None = None) -> list:
    return [html.Dt(name), html.Dd(value, **({"id": element_id} if element_id else {}))]


def per_class_table(report: dict) -> html.Table:
    head = html.Thead(html.Tr([html.Th(c) for c in ("Class", "Precision", "Recall", "Support")]))
    rows = [
        html.Tr(
            [
                html.Td(name),
                html.Td(share(stats["precision"])),
                html.Td(share(stats["recall"])),
                html.Td(str(stats["support"])),
            ],
            className="class-row",
            **{"data-class": name},
        )
        for name, stats in ((name, report["per_class"][name]) for name in report["classes"])
    ]
    return html.Table([head, html.Tbody(rows)], className="table narrow", id="evaluation-classes")


def evaluations_table(model_id: str, evaluations: list[dict]):
    """A model's evaluations (its card's, newest first): the set, its figures, the job, and a comparison."""
    if not evaluations:
        return html.P(
            "No evaluation yet: submit one (POST /jobs with type evaluate and this model).",
            className="muted",
            id="model-evaluations",
        )
    columns = ("Set", "Labels", "Top-1", "Top-5", "ECE", "Scored", "Finished", "Job", "")
    head = html.Thead(html.Tr([html.Th(c) for c in columns]))
    rows = [
        html.Tr(
            [
                html.Td(set_name(e["set"])),
                html.Td(e["label_level"]),
                html.Td(percent(e["top1"]), className="evaluation-top1"),
                html.Td(percent(e["top5"])),
                html.Td(f"{e['ece']:.3f}" if e.get("ece") is not None else ""),
                html.Td(str(e["count"])),
                html.Td(when(e["finished_at"])),
                html.Td(job_link(e["job_id"])),
                html.Td(dcc.Link("compare", href=compare_href(a=model_id, evaluation=e["job_id"]))),
            ],
            className="evaluation-row",
            **{"data-evaluation": e["job_id"]},
        )
        for e in evaluations
    ]
    return html.Table([head, html.Tbody(rows)], className="table", id="model-evaluations")
