"""The web UI at /ui/: Dash pages served by the API's own Flask app, Plotly charts.

Pages: the workshop (random image or your photo -> prediction), jobs (live list, forms,
cancel), a job (training curves and confusion matrix, a prediction job's counts, accuracy,
gallery and CSV, or an evaluation's figures and right/wrong gallery), models (metrics, aliases,
a comparison's picker), a model (card, evaluations, downloads, curves, serving runtimes, delete),
a comparison of two models on one evaluated set. The
pages hold no data: their callbacks call the API in process with the visitor's token
(api/ui/calls.py), so the API's rules are the UI's rules.
"""

from pathlib import Path

from flask import Flask

from api.auth import UI_PREFIX


def mount_ui(app: Flask) -> None:
    import dash  # only when the UI is on: the API stays importable without it

    from api.ui import compare_page, job_page, jobs, model_page, registry, shell, signin, workshop
    from api.ui.calls import LocalAPI

    ui = dash.Dash(
        __name__,
        server=app,
        url_base_pathname=UI_PREFIX,
        assets_folder=str(Path(__file__).parent / "assets"),
        title="grocery-jobs",
        update_title=None,
        suppress_callback_exceptions=True,  # each page's components exist only while it is shown
        on_error=shell.show_internal_error,
    )
    calls = LocalAPI(app)
    ui.layout = shell.layout
    for page in (shell, workshop, jobs, job_page, registry, model_page, compare_page):
        page.register(ui, calls)
    app.register_blueprint(signin.blueprint)
