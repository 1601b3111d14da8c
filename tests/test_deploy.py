"""The deployment files: the compose file validates, and says what a deployment needs."""

import os
import re
import shutil
import subprocess

import pytest
import yaml
from conftest import ROOT

COMPOSE = ROOT / "docker-compose.yml"


def test_compose_file_validates():
    """`docker-compose config` from Debian's package (no Docker engine needed); .ci/run installs it
    and sets GROCERY_REQUIRE_COMPOSE, so CI cannot skip this."""
    binary = shutil.which("docker-compose")
    if binary is None:
        if os.environ.get("GROCERY_REQUIRE_COMPOSE"):
            pytest.fail("docker-compose is not installed (apt-get install docker-compose)")
        pytest.skip("docker-compose is not installed")
    env = {**os.environ, "POSTGRES_PASSWORD": "validation-only"}
    for profiles in ([], ["--profile", "gpu"], ["--profile", "cpu", "--profile", "flower"], ["--profile", "minio"]):
        result = subprocess.run(
            [binary, "-f", str(COMPOSE), *profiles, "config", "-q"], env=env, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr


def test_compose_services_hold_together():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    assert "pgdata:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    assert "healthcheck" in services["postgres"] and "healthcheck" in services["redis"]
    assert "--appendonly" in services["redis"]["command"]
    assert services["migrate"]["command"] == ["alembic", "upgrade", "head"] and services["migrate"]["restart"] == "no"
    assert services["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    gpu_workers = [name for name in services if name.startswith("worker-gpu")]
    device_ids = [
        services[name]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] for name in gpu_workers
    ]
    assert len(gpu_workers) >= 2 and sorted(device_ids) == [[str(n)] for n in range(len(gpu_workers))]
    assert services["worker-cpu"]["profiles"] == ["cpu"] and services["flower"]["profiles"] == ["flower"]
    assert services["api"]["environment"]["GROCERY_AUTH"] == "required"  # a deployment requires tokens
    for name in ("api", "worker-cpu", *gpu_workers):
        mounts = {next(p for p in volume.rsplit(":", 2) if p.startswith("/")) for volume in services[name]["volumes"]}
        assert {"/srv/models", "/srv/uploads", "/data"} <= mounts, name


def test_flower_needs_a_password_and_is_not_published():
    flower = yaml.safe_load(COMPOSE.read_text())["services"]["flower"]
    assert all(str(port).startswith("127.0.0.1:") for port in flower["ports"]), flower["ports"]
    script = " ".join(flower["command"])
    assert "--basic-auth=" in script and 'test -n "$$FLOWER_BASIC_AUTH" || {' in script and "exit 1" in script


def default_of(value: str) -> str:
    """What ``${NAME:-default}`` in the compose file is when NAME is unset."""
    match = re.fullmatch(r"\$\{\w+:-(.*)\}", value)
    return match.group(1) if match else value


def test_uploads_are_no_input_root_of_the_deployment():
    environment = yaml.safe_load(COMPOSE.read_text())["x-app"]["environment"]
    assert "/srv/uploads" not in default_of(environment["GROCERY_INPUT_ROOTS"]).split(":")
    assert default_of(environment["GROCERY_UPLOAD_DIR"]) == "/srv/uploads"


def test_minio_is_a_profile_wired_through_the_standard_aws_variables():
    compose = yaml.safe_load(COMPOSE.read_text())
    services, environment = compose["services"], compose["x-app"]["environment"]
    assert services["minio"]["profiles"] == services["minio-bucket"]["profiles"] == ["minio"]
    assert all(str(port).startswith("127.0.0.1:") for port in services["minio"]["ports"])
    assert 'test -n "$$MINIO_ROOT_PASSWORD" || {' in " ".join(services["minio"]["command"])
    assert services["minio"]["environment"]["MINIO_ROOT_USER"] == environment["AWS_ACCESS_KEY_ID"]
    assert {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"} <= set(environment)


def test_images_are_multi_stage_and_run_as_a_user():
    dockerfile = (ROOT / "Dockerfile").read_text().splitlines()
    stages = [line for line in dockerfile if line.startswith("FROM ")]
    users = [line.split()[1] for line in dockerfile if line.startswith("USER ")]
    assert len(stages) == 2 and users and users[-1] not in ("root", "0")
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "var"} <= set(ignored)


def test_every_setting_is_documented():
    """Each variable Settings reads appears in the configuration table (docs/configuration.md, moved there
    from the README) and in .env.example."""
    from service.settings import Settings

    variables = set(Settings.variables())  # each field declares its variable (service/settings.py)
    readme, example = (ROOT / "docs" / "configuration.md").read_text(), (ROOT / ".env.example").read_text()
    assert len(variables) >= 15
    assert {v for v in variables if f"`{v}`" not in readme} == set()
    assert {v for v in variables if f"{v}=" not in example} == set()
