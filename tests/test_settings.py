from pathlib import Path

from service.settings import Settings


def test_defaults_resolve_paths_and_roots():
    settings = Settings.from_env({})
    assert settings.database_url.startswith("postgresql+psycopg://")
    assert settings.data_dir.is_absolute() and settings.model_dir.is_absolute()
    assert settings.input_roots == (settings.data_dir,)  # the upload storage is never a root
    assert settings.port == 8000
    assert settings.auth == "required"  # tokens unless a deployment turns them off


def test_environment_overrides(tmp_path):
    settings = Settings.from_env(
        {
            "DATABASE_URL": "postgresql+psycopg://u@db:5432/jobs",
            "REDIS_URL": "redis://cache:6379/2",
            "GROCERY_MODEL_DIR": str(tmp_path / "models"),
            "GROCERY_INPUT_ROOTS": f"{tmp_path}/a:{tmp_path}/b",
            "GROCERY_PORT": "9000",
        }
    )
    assert settings.database_url == "postgresql+psycopg://u@db:5432/jobs"
    assert settings.redis_url == "redis://cache:6379/2"
    assert settings.model_dir == tmp_path / "models"
    assert settings.input_roots == (Path(f"{tmp_path}/a"), Path(f"{tmp_path}/b"))
    assert settings.port == 9000
