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


def test_the_limits_of_issue_14_come_from_the_environment():
    settings = Settings.from_env(
        {
            "GROCERY_MAX_JSON_BYTES": "1024",
            "GROCERY_MAX_UI_BYTES": "2048",
            "GROCERY_MAX_UPLOAD_FILES": "7",
            "GROCERY_MIN_SHARD_SIZE": "10",
            "GROCERY_MAX_JOB_SHARDS": "20",
            "GROCERY_TOKEN_MAX_ACTIVE_JOBS": "3",
            "GROCERY_TOKEN_MAX_ACTIVE_FILES": "30",
            "GROCERY_ALLOWED_HOSTS": "grocery.example",
        }
    )
    assert (settings.max_json_bytes, settings.max_ui_bytes, settings.max_upload_files) == (1024, 2048, 7)
    assert (settings.min_shard_size, settings.max_job_shards) == (10, 20)
    assert (settings.token_max_active_jobs, settings.token_max_active_files) == (3, 30)
    assert settings.allowed_hosts == ("grocery.example",)
    defaults = Settings.from_env({})
    assert defaults.max_json_bytes < defaults.max_ui_bytes < defaults.max_upload_bytes
    assert defaults.min_shard_size > 1 and defaults.max_job_files // defaults.max_job_shards <= defaults.shard_size


def test_to_env_gives_another_process_the_same_settings(tmp_path):
    settings = Settings.from_env(
        {
            "GROCERY_INPUT_ROOTS": f"{tmp_path}/a:{tmp_path}/b",
            "GROCERY_AUTH": "off",
            "GROCERY_UI": "off",
            "GROCERY_HOST": "0.0.0.0",
            "GROCERY_MAX_FAILED_FRACTION": "0.25",
            "GROCERY_JOB_LEASE_SECONDS": "2.5",
            "GROCERY_JOB_RETENTION": "30d",
            "GROCERY_PREDICT_RETENTION": "90s",
        }
    )
    assert Settings.from_env(settings.to_env()) == settings
    assert Settings.from_env(Settings.from_env({}).to_env()) == Settings.from_env({})
