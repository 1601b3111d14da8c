"""Two models side by side on one labelled set: /ui/compare?a=&b=&evaluation= (a link to keep).

The figures are GET /models/compare's answer (both top-1, B's difference with its 95% interval and
McNemar's p-value, the classes that changed most), and each side's recall per class its own
evaluation job's: nothing is worked out again here. The picker (here and on the Models page) chooses
A, B and an evaluated set among the evaluations the two models have."""

from urllib.parse import parse_qs

from dash import Dash, Input, Output, State, dcc, html

from api.ui import charts
from api.ui.components import exact, field, job_link, message, model_link, percent, short_id, when
from api.ui.evaluation_views import compare_href, share
from api.ui.training_views import GRAPH_CONFIG
from service.specs import set_name

QUERY = ("a", "b", "evaluation")
SIDES = {"a": "A", "b": "B"}
SIGNIFICANCE = 0.05


def chosen_of(search: str | None) -> dict:
    """The page's query: a and b (model ids or aliases) and evaluation (an evaluation job id)."""
    query = parse_qs((search or "").lstrip("?"))
    return {name: (query.get(name) or [None])[0] for name in QUERY}


def layout(search: str | None, calls):
    chosen = chosen_of(search)
    models = calls.get("/models")
    if not models.ok:
        return message(models.error)
    if all(chosen.values()):
        result = comparison(chosen, calls)
    else:
        result = html.P(
            "Pick models A and B and a set one of them was evaluated on: the comparison pairs the two "
            "models' evaluations of that set file by file.",
            className="muted",
        )
    return html.Section(
        [
            html.H1("Compare two models"),
            picker(models.body["models"], chosen, calls),
            html.Div(result, id="comparison"),
        ]
    )


def picker(models: list[dict], chosen: dict, calls) -> html.Div:
    """A, B and the evaluated set, and a link to their comparison (the URL holds the choice)."""
    options = [{"label": model_label(m), "value": m["id"]} for m in models]
    a, b = (model_id_of(models, chosen[side]) for side in SIDES)
    sets = evaluation_options(a, b, chosen["evaluation"], calls)
    return html.Div(
        [
            field("Model A", dcc.Dropdown(options, a, id="compare-a", placeholder="the model to compare with")),
            field("Model B", dcc.Dropdown(options, b, id="compare-b", placeholder="the model compared")),
            field(
                "Evaluated set",
                dcc.Dropdown(
                    sets, chosen["evaluation"], id="compare-evaluation", placeholder="an evaluation of A or B"
                ),
                "both models need a succeeded evaluation of it",
            ),
            dcc.Link("Compare", href=compare_href(**chosen), id="compare-go", className="button"),
        ],
        className="filters",
        id="compare-picker",
    )


def model_label(model: dict) -> str:
    aliases = f" ({', '.join(model['aliases'])})" if model["aliases"] else ""
    return f"v{model['version']} {short_id(model['id'])} {model['arch']}{aliases}"


def model_id_of(models: list[dict], reference: str | None) -> str | None:
    """The id a URL's model reference (an id or an alias) names among the listed models, for the picker."""
    for model in models:
        if reference == model["id"] or reference in model["aliases"]:
            return model["id"]
    return reference


def evaluation_options(a: str | None, b: str | None, current: str | None, calls) -> list[dict]:
    """The evaluations on the models' cards, A's then B's (and the one the URL names)."""
    options = {}
    for side, reference in ((SIDES["a"], a), (SIDES["b"], b)):
        card = calls.get(f"/models/{reference}/card") if reference else None
        for entry in card.body["evaluations"] if card is not None and card.ok else []:
            label = (
                f"{set_name(entry['set'])}, {entry['label_level']} labels: {side}'s evaluation of "
                f"{when(entry['finished_at'])}, top-1 {percent(entry['top1'])}"
            )
            options.setdefault(entry["job_id"], {"label": label, "value": entry["job_id"]})
    if current and current not in options:
        options[current] = {"label": f"evaluation job {short_id(current)}", "value": current}
    return list(options.values())


def comparison(chosen: dict, calls) -> list:
    reply = calls.get("/models/compare", **chosen)
    if not reply.ok:
        return [message(reply.error)]
    report = reply.body
    models = {side: calls.get(f"/models/{report[side]['model_id']}") for side in SIDES}
    evaluations = {side: calls.get(f"/jobs/{report[side]['evaluation']}") for side in SIDES}
    if not report["files"]:
        return [message("The two evaluations share no labelled file: nothing to compare.", "info")]
    named = next((e.body["params"].get("named") for e in evaluations.values() if e.ok), None)
    return [
        html.H2(f"On {set_name(named)}: {report['files']} files, each scored for both", id="comparison-set"),
        html.Div(
            [
                side_card("a", report, models["a"]),
                difference_card(report),
                side_card("b", report, models["b"]),
            ],
            className="compare-grid",
        ),
        html.H2("Classes that changed most"),
        changed_table(report["classes_changed"]),
        html.H2("Recall per class"),
        *recall_part(evaluations, models),
    ]


def side_card(side: str, report: dict, model) -> html.Div:
    top1 = report[f"{side}_top1"]
    model_id = report[side]["model_id"]
    named = (
        [model_link(model_id, f"v{model.body['version']}"), f" {model.body['arch']} ", *alias_badges(model.body)]
        if model.ok
        else [model_link(model_id)]
    )
    return html.Div(
        [
            html.Div(f"Model {SIDES[side]}", className="card-title"),
            html.Div(percent(top1), className="big-number", id=f"compare-{side}-top1", **exact(top1)),
            html.P(named, id=f"compare-{side}-model"),
            html.P(["top-1 on these files; its evaluation: ", job_link(report[side]["evaluation"])], className="muted"),
        ],
        className="card",
        id=f"compare-side-{side}",
    )


def alias_badges(model: dict) -> list:
    return [html.Span(a, className=f"badge alias alias-{a}") for a in model["aliases"]]


def points(fraction: float) -> str:
    return f"{fraction * 100:+.1f}"


def difference_card(report: dict) -> html.Div:
    """B's top-1 less A's, its 95% interval, and McNemar's p-value with the files it counts."""
    low, high = report["ci95"]
    mcnemar = report["mcnemar"]
    p = mcnemar["p_value"]
    verdict = (
        f"A difference this large is unlikely to be chance (p < {SIGNIFICANCE})."
        if p < SIGNIFICANCE
        else f"This difference could be chance (p ≥ {SIGNIFICANCE})."
    )
    return html.Div(
        [
            html.Div("B less A", className="card-title"),
            html.Div(
                f"{points(report['difference'])} points",
                className="big-number",
                id="compare-difference",
                **exact(report["difference"]),
            ),
            html.P(
                f"95% interval {points(low)} to {points(high)} points (paired bootstrap over the files)",
                id="compare-ci",
                **exact(report["ci95"]),
            ),
            html.P(f"McNemar's exact test: p = {p:.3g}", id="compare-p", **exact(p)),
            html.P(
                f"{mcnemar['b_only']} files only B got right, {mcnemar['a_only']} only A. {verdict}",
                className="muted",
                id="compare-discordant",
            ),
        ],
        className="card",
        id="compare-difference-card",
    )


def changed_table(rows: list[dict]):
    if not rows:
        return html.P("No class to show.", className="muted")
    head = html.Thead(html.Tr([html.Th(c) for c in ("Class", "Files", "A top-1", "B top-1", "Change")]))
    body = [
        html.Tr(
            [
                html.Td(row["class"]),
                html.Td(str(row["files"])),
                html.Td(percent(row["a_top1"])),
                html.Td(percent(row["b_top1"])),
                html.Td(f"{points(row['change'])} points"),
            ],
            className="changed-row",
            **{"data-class": row["class"]},
        )
        for row in rows
    ]
    return html.Table([head, html.Tbody(body)], className="table narrow", id="compare-changed")


def recall_part(evaluations: dict, models: dict) -> list:
    """Each model's recall per class from its own evaluation job of the set (the classes with files)."""
    for reply in evaluations.values():
        if not reply.ok:
            return [message(reply.error)]
    reports = {side: reply.body["result"]["evaluation"] for side, reply in evaluations.items()}
    classes = list(
        dict.fromkeys(
            name for report in reports.values() for name in report["classes"] if report["per_class"][name]["support"]
        )
    )
    recalls = {side_name(side, models[side]): [recall_of(reports[side], name) for name in classes] for side in SIDES}
    table = recall_table(classes, recalls)
    figure = dcc.Graph(id="compare-recall", figure=charts.recall_bars(classes, recalls), config=GRAPH_CONFIG)
    return [figure, table]


def side_name(side: str, model) -> str:
    return f"{SIDES[side]}: v{model.body['version']}" if model.ok else SIDES[side]


def recall_of(report: dict, name: str) -> float | None:
    stats = report["per_class"].get(name)
    return stats["recall"] if stats else None


def recall_table(classes: list[str], recalls: dict[str, list]) -> html.Details:
    head = html.Thead(html.Tr([html.Th("Class"), *(html.Th(name) for name in recalls)]))
    rows = [
        html.Tr(
            [html.Td(name), *(html.Td(share(values[i])) for values in recalls.values())],
            **{"data-class": name},
        )
        for i, name in enumerate(classes)
    ]
    return html.Details(
        [html.Summary("As a table"), html.Table([head, html.Tbody(rows)], className="table narrow")],
        id="compare-recall-table",
    )


def register(ui: Dash, calls) -> None:
    @ui.callback(
        Output("compare-evaluation", "options"),
        Input("compare-a", "value"),
        Input("compare-b", "value"),
        State("compare-evaluation", "value"),
        prevent_initial_call=True,
    )
    def sets(a, b, current):
        return evaluation_options(a, b, current, calls)

    @ui.callback(
        Output("compare-go", "href"),
        Input("compare-a", "value"),
        Input("compare-b", "value"),
        Input("compare-evaluation", "value"),
        prevent_initial_call=True,
    )
    def link(a, b, evaluation):
        return compare_href(a=a, b=b, evaluation=evaluation)
