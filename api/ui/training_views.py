"""A training's curves and confusion matrix as parts of a page: the job page shows them live, the
model page as its training left them."""

from dash import dcc, html

from api.ui import charts

GRAPH_CONFIG = {"displaylogo": False}


def epochs_of(events: list[dict]) -> list[dict]:
    """The `epoch` events' data, oldest first (GET /jobs/<id>/events)."""
    return [e["data"] for e in events if e["kind"] == "epoch"]


def curves(epochs: list[dict], waiting: str) -> list:
    """Loss and accuracy side by side, each with its own legend; before the first epoch a sentence
    (``waiting``) instead of empty axes."""
    if not epochs:
        return [html.P(waiting, className="waiting", id="curves-waiting")]
    return [
        dcc.Graph(id="loss-curve", figure=charts.loss_curves(epochs), config=GRAPH_CONFIG),
        dcc.Graph(id="accuracy-curve", figure=charts.accuracy_curves(epochs), config=GRAPH_CONFIG),
    ]


def last_confusion(epochs: list[dict]) -> tuple[dict, int] | None:
    """The newest validated epoch's confusion matrix and that epoch (not every epoch is validated)."""
    for epoch in reversed(epochs):
        if epoch.get("confusion"):
            return epoch["confusion"], epoch["epoch"]
    return None


def confusion(matrix: dict | None, title: str, missing: str) -> list:
    """The heatmap under its title, or only a sentence saying why there is none (no blank matrix)."""
    if not matrix or not matrix.get("matrix"):
        return [html.H2("Confusion matrix"), html.P(missing, className="muted", id="confusion-missing")]
    return [
        html.H2(title),
        dcc.Graph(id="confusion-matrix", figure=charts.confusion_heatmap(matrix), config=GRAPH_CONFIG),
    ]
