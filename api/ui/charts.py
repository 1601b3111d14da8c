"""Plotly figures from the API's JSON: pure functions, no I/O."""

import plotly.graph_objects as go

ACCENT = "#2f6f3e"  # the UI's green (assets/style.css)
SECOND = "#7c8aa5"  # beside the green one: model A beside model B
SECOND = "#7c8aa5"  # a second series beside the green one (model A beside model B)
LAYOUT = {"margin": {"l": 50, "r": 20, "t": 40, "b": 40}, "template": "plotly_white", "height": 340}
# Each chart's own legend, below its plot: two charts side by side never share one.
LEGEND_BELOW = {"orientation": "h", "x": 0, "y": -0.22, "xanchor": "left", "yanchor": "top"}
LOSSES = (("train_loss", "train"), ("val_loss", "validation"))
ACCURACIES = (("train_acc", "train"), ("val_top1", "validation top-1"), ("val_top5", "validation top-5"))


def loss_curves(epochs: list[dict]) -> go.Figure:
    """Training and validation loss per epoch, from the job's `epoch` events (at least one)."""
    figure = epoch_lines(epochs, LOSSES, "Loss")
    figure.update_yaxes(rangemode="tozero")
    return figure


def accuracy_curves(epochs: list[dict]) -> go.Figure:
    figure = epoch_lines(epochs, ACCURACIES, "Accuracy")
    figure.update_yaxes(range=[0, 1.02], tickformat=".0%")
    return figure


def epoch_lines(epochs: list[dict], series: tuple, title: str) -> go.Figure:
    """One line per metric the epochs report (a metric no epoch has is left out of the legend)."""
    x = [e["epoch"] for e in epochs]
    figure = go.Figure()
    for key, name in series:
        if any(e.get(key) is not None for e in epochs):
            figure.add_trace(go.Scatter(x=x, y=[e.get(key) for e in epochs], name=name, mode="lines+markers"))
    total = epochs[-1].get("epochs") or x[-1]
    # The whole run on the axis, whole epochs only: how far along it is, from the first point on.
    figure.update_xaxes(title_text="epoch", range=[0.5, total + 0.5], tick0=1, dtick=max(1, -(-total // 12)))
    figure.update_layout(**LAYOUT, title={"text": title, "x": 0.02}, legend=LEGEND_BELOW, showlegend=True)
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
    if not labels:  # no empty axes: a sentence until the first file is classified
        figure.update_xaxes(visible=False)
        figure.update_yaxes(visible=False)
        figure.add_annotation(text="No file classified yet", showarrow=False, font={"size": 15, "color": "#6b7280"})
    return figure


def recall_bars(classes: list[str], recalls: dict[str, list[float | None]]) -> go.Figure:
    """Per class, each model's recall side by side (one bar a model, named by ``recalls``' keys); a
    class a model's evaluation has no file of is a gap, not a zero."""
    figure = go.Figure(
        [
            go.Bar(
                x=values,
                y=classes,
                name=name,
                orientation="h",
                marker_color=colour,
                hovertemplate="%{y}: %{x:.1%}<extra>" + name + "</extra>",
            )
            for (name, values), colour in zip(recalls.items(), (SECOND, ACCENT), strict=False)
        ]
    )
    height = max(260, 18 * len(recalls) * len(classes) + 140)
    figure.update_layout(**{**LAYOUT, "height": height}, barmode="group", legend=LEGEND_BELOW, showlegend=True)
    figure.update_xaxes(range=[0, 1.02], tickformat=".0%", title_text="recall")
    figure.update_yaxes(autorange="reversed")  # the first class on top, as in the tables
    return figure
