import subprocess
import sys


def _modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return {name.split(".")[0] for name in out.split()}


def test_library_loads_no_service_frameworks():
    loaded = _modules_after("import grocery.cli, grocery.engine, grocery.predict, grocery.export, grocery.evaluation")
    assert "torch" in loaded  # the statement really imported the library
    assert not loaded & {"flask", "celery", "sqlalchemy", "redis", "kombu"}


def test_index_and_package_are_torch_free():
    # The API reads class names through grocery.index and must not pay for torch.
    loaded = _modules_after("import grocery, grocery.index")
    assert "grocery" in loaded and "torch" not in loaded


def test_api_never_imports_torch():
    # The whole app, web UI included (create_app connects to nothing until a request comes).
    loaded = _modules_after("import api; from service.settings import Settings; api.create_app(Settings())")
    assert {"flask", "celery", "api", "dash", "plotly"} <= loaded and "torch" not in loaded
