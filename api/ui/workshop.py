"""The workshop's page: a random validation image, or your own photo, next to its predicted product."""

import base64
from urllib.parse import unquote

from dash import Dash, Input, Output, State, ctx, dcc, html, no_update

from api.ui.calls import segment
from api.ui.components import message, percent, uploaded_file

MAX_PHOTO_BYTES = 20 * 1024 * 1024


def layout() -> html.Section:
    return html.Section(
        [
            html.H1("What's in the picture?"),
            html.P("A photo from the validation set, or one of yours, and the product the serving model sees in it."),
            html.Div(
                [
                    html.Button("Random image", id="random-image", className="primary"),
                    dcc.Upload(
                        html.Button("Upload a photo", type="button"),
                        id="photo",
                        accept="image/*",
                        max_size=MAX_PHOTO_BYTES,
                    ),
                ],
                className="actions",
            ),
            dcc.Loading(html.Div(id="workshop-result"), type="dot"),
        ]
    )


def register(ui: Dash, calls) -> None:
    @ui.callback(
        Output("workshop-result", "children"),
        Input("random-image", "n_clicks"),
        Input("photo", "contents"),
        State("photo", "filename"),
        prevent_initial_call=True,
    )
    def show_prediction(_clicks, contents, filename):
        if ctx.triggered_id == "photo":
            if not contents:
                return no_update
            mime, picture = uploaded_file(contents)
            return predicted(calls, picture, filename or "photo.jpg", None, mime)
        reply = calls.get("/random-image")
        if not reply.ok:
            return message(reply.error)
        truth = unquote(reply.headers.get("X-Label-Coarse", "")), unquote(reply.headers.get("X-Label-Fine", ""))
        return predicted(calls, reply.content, unquote(reply.headers.get("X-Image-Path", "random.jpg")), truth)


def predicted(calls, picture: bytes, filename: str, truth: tuple | None, mime: str = "image/jpeg"):
    reply = calls.post_files("/predict", [(filename, picture)], "file")
    photo = photo_card(picture, filename, truth, mime)
    if not reply.ok:
        return html.Div([photo, message(reply.error)], className="workshop-grid")
    prediction = reply.body
    return html.Div(
        [photo, prediction_card(prediction, truth), product_card(calls, prediction)],
        className="workshop-grid",
    )


def photo_card(picture: bytes, filename: str, truth: tuple | None, mime: str) -> html.Figure:
    source = f"data:{mime};base64," + base64.b64encode(picture).decode()
    caption = [html.Span(filename, className="mono")]
    if truth and truth[0]:
        caption.append(html.Span(f"true class: {truth[0]}" + (f" ({truth[1]})" if truth[1] else "")))
    return html.Figure([html.Img(src=source, id="workshop-photo", alt=filename), html.Figcaption(caption)])


def prediction_card(prediction: dict, truth: tuple | None) -> html.Div:
    label, confidence = prediction["prediction"], prediction.get("confidence")
    verdict = None
    if truth and truth[0]:
        right = label == truth[0] or label == truth[1]
        verdict = html.Span("right" if right else "wrong", className=f"badge {'ok' if right else 'bad'}")
    top = [
        html.Li(
            [
                html.Span(entry["label"]),
                html.Meter(value=str(entry["confidence"]), min="0", max="1"),
                html.Span(percent(entry["confidence"])),
            ]
        )
        for entry in prediction.get("top5") or []
    ]
    return html.Div(
        [
            html.Div("Prediction", className="card-title"),
            html.Div([html.Span(label, id="prediction-label"), verdict], className="prediction"),
            html.Div(f"confidence {percent(confidence)}", id="prediction-confidence", className="muted"),
            html.Ol(top, className="top5"),
            html.Small(f"model {prediction.get('model_id', '')[:8]}", className="muted mono"),
        ],
        className="card",
    )


def product_card(calls, prediction: dict) -> html.Div:
    reply = calls.get(f"/classes/{segment(prediction['prediction'])}")
    if not reply.ok:
        return html.Div(
            [html.Div("The product", className="card-title"), message(reply.error, "info")], className="card"
        )
    details = reply.body
    title = (
        details["name"]
        if details.get("product") in (None, details["name"])
        else f"{details['name']}: {details['product']}"
    )
    parts = [html.Div(title, className="card-title")]
    if details.get("iconic_image"):
        parts.append(html.Img(src=details["iconic_image"], className="iconic", alt=f"{details['name']} (iconic)"))
    parts.append(html.P(details.get("description") or "No description in the dataset.", className="description"))
    return html.Div(parts, className="card product", id="product-card")
