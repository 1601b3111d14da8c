import ast
import subprocess
import sys
from pathlib import Path


def _modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return {name.split(".")[0] for name in out.split()}


def test_library_loads_no_service_frameworks():
    loaded = _modules_after("import grocery.cli, grocery.engine, grocery.predict, grocery.export, grocery.evaluation")
    assert "torch" in loaded  # the statement really imported the library
    assert not loaded & {"flask", "celery", "sqlalchemy", "redis", "kombu"}


def test_index_and_package_are_torch_free():
    # The API reads class names (grocery.index) and the training parameters (grocery.config) and must not pay for torch.
    loaded = _modules_after("import grocery, grocery.index, grocery.config")
    assert "grocery" in loaded and "torch" not in loaded


def test_api_never_imports_torch():
    # The whole app, web UI included (create_app connects to nothing until a request comes).
    loaded = _modules_after("import api; from service.settings import Settings; api.create_app(Settings())")
    assert {"flask", "celery", "api", "dash", "plotly"} <= loaded and "torch" not in loaded


SERVICE_PACKAGES = {"api", "service", "worker", "cli"}


def test_library_imports_nothing_of_the_service_even_lazily():
    # Every import statement in grocery/, at module level or inside a function.
    library = Path(__file__).resolve().parents[1] / "grocery"
    found = []
    for source in sorted(library.rglob("*.py")):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            found += [f"{source.name}: {n}" for n in names if n.split(".")[0] in SERVICE_PACKAGES]
    assert len(list(library.rglob("*.py"))) > 10 and found == []


def test_result_rows_have_one_shape_from_library_to_table():
    from grocery.results import RESULT_COLUMNS, Prediction
    from service.tables import PredictionRow

    table_columns = set(PredictionRow.__table__.columns.keys())
    assert set(RESULT_COLUMNS) <= table_columns
    failed = Prediction.failed("a.jpg", "not_an_image", "cannot identify image file")
    assert Prediction.from_row(failed.to_row()) == failed
    row = Prediction("b.jpg", "Apple", 0, 0.9, [{"label": "Apple", "class_id": 0, "confidence": 0.9}]).to_row()
    assert list(row) == list(RESULT_COLUMNS) and row["error_code"] is None
