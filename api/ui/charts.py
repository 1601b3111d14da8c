"""Plotly figures from the API's JSON: pure functions, no I/O."""

import plotly.graph_objects as go
from plotly.subplots import make_subplots

ACCENT = "#2f6f3e"  # the UI's green (assets/style.css)
LAYOUT = {"margin": {"l": 50, "r": 20, "t": 40, "b": 40}, "template": "plotly_white", "height": 340}


def training_curves(epochs: list[dict]) -> go.Figure:
    """Loss and accuracy per epoch, from the job's `epoch` events."""
    x = [e["epoch"] for e in epochs]
    figure = make_subplots(rows=1, cols=2, subplot_titles=("Loss", "Accuracy"))
    for key, name in (("train_loss", "train loss"), ("val_loss", "validation loss")):
        figure.add_trace(go.Scatter(x=x, y=[e.get(key) for e in epochs], name=name, mode="lines+markers"), 1, 1)
    for key, name in (("train_acc", "train"), ("val_top1", "validation top-1"), ("val_top5", "validation top-5")):
        figure.add_trace(go.Scatter(x=x, y=[e.get(key) for e in epochs], name=name, mode="lines+markers"), 1, 2)
    total = epochs[-1]["epochs"] if epochs else 1
    figure.update_xaxes(title_text="epoch", dtick=1, range=[0.5, total + 0.5])  # the whole run: how far along
    figure.update_yaxes(range=[0, 1], tickformat=".0%", row=1, col=2)
    figure.update_layout(**LAYOUT)
    return figure


def confusion_heatmap(confusion: dict) -> go.Figure:
    """Rows: true class, columns: predicted; colour is the share of the row, the text the count."""
    classes, matrix = confusion["classes"], confusion["matrix"]
    shares = [[count / max(1, sum(row)) for count in row] for row in matrix]
    figure = go.Figure(
        go.Heatmap(
            z=shares,
            x=classes,
            y=classes,
            text=matrix,
            texttemplate="%{text}" if len(classes) <= 20 else None,
            colorscale="Blues",
            zmin=0,
            zmax=1,
            hovertemplate="true %{y}<br>predicted %{x}<br>%{text} images (%{z:.0%} of the row)<extra></extra>",
        )
    )
    side = max(360, 22 * len(classes) + 160)
    figure.update_layout(**{**LAYOUT, "height": side}, xaxis_title="predicted", yaxis_title="true")
    figure.update_yaxes(autorange="reversed")
    return figure


def class_counts(labels: dict[str, int]) -> go.Figure:
    """How many files each class got, largest first."""
    ordered = sorted(labels.items(), key=lambda item: item[1])
    bars = go.Bar(x=[n for _, n in ordered], y=[name for name, _ in ordered], orientation="h", marker_color=ACCENT)
    figure = go.Figure(bars)
    figure.update_layout(**{**LAYOUT, "height": max(240, 24 * len(ordered) + 80)}, xaxis_title="files")
    return figure
