"""The Kubernetes manifests (deploy/kubernetes/): valid against the Kubernetes schemas offline (kubernetes-validate
bundles them), KEDA's ScaledObjects against a schema taken from KEDA's CRD, and consistent with the code they run:
the queues each scaler watches are the ones its workers serve (service/kinds.py), the commands are the compose
file's, the settings are service/settings.py's."""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from conftest import ROOT

from cli.worker import plan
from service.confinement import configuration_problems
from service.kinds import JOB_TYPES, QUEUES, worker_queues
from service.settings import Settings

MANIFESTS = ROOT / "deploy" / "kubernetes"
COMPOSE = ROOT / "docker-compose.yml"
# The oldest Kubernetes release still commonly run, and the newest the validator knows.
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
KEDA = "keda.sh/v1alpha1"

# KEDA's ScaledObject (keda.sh/v1alpha1), from its CRD (config/crd/bases/keda.sh_scaledobjects.yaml): its required
# fields and types, closed where these manifests write, so a misspelt field fails as the API server would fail it.
# The HPA behaviour it passes on is checked against the core autoscaling/v2 schema (hpa_keda_makes below).
SCALED_OBJECT_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": KEDA},
        "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": {"type": "string", "minLength": 1},
                        "envSourceContainerName": {"type": "string"},
                    },
                },
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "initialCooldownPeriod": {"type": "integer", "minimum": 0},
                "idleReplicaCount": {"type": "integer", "minimum": 0},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "fallback": {"type": "object"},
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {"name": {"type": "string"}, "behavior": {"type": "object"}},
                        },
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "scalingModifiers": {"type": "object"},
                    },
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                            "authenticationRef": {"type": "object", "required": ["name"]},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "useCachedMetrics": {"type": "boolean"},
                        },
                    },
                },
            },
        },
    },
}
# The redis (lists) scaler's metadata as these manifests give it: where Redis is, which list, what target.
REDIS_TRIGGER_METADATA = {
    "type": "object",
    "required": ["addressFromEnv", "listName", "listLength"],
    "additionalProperties": False,
    "properties": {
        "addressFromEnv": {"type": "string"},
        "passwordFromEnv": {"type": "string"},
        "databaseIndex": {"type": "string", "pattern": "^[0-9]+$"},
        "listName": {"type": "string"},
        "listLength": {"type": "string", "pattern": "^[1-9][0-9]*$"},
        "activationListLength": {"type": "string", "pattern": "^[0-9]+$"},
    },
}


def listed_files() -> list[str]:
    return yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())["resources"]


def manifests() -> list[dict]:
    return [doc for name in listed_files() for doc in yaml.safe_load_all((MANIFESTS / name).read_text()) if doc]


def of_kind(kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in manifests() if doc["kind"] == kind}


def pod_templates() -> dict[str, dict]:
    """Every pod the manifests run (Deployments' and Jobs'), by its owner's name."""
    return {
        doc["metadata"]["name"]: doc["spec"]["template"]["spec"]
        for doc in manifests()
        if doc["kind"] in ("Deployment", "Job")
    }


def worker_deployments() -> dict[str, dict]:
    return {
        name: deployment
        for name, deployment in of_kind("Deployment").items()
        if deployment["metadata"]["labels"].get("app.kubernetes.io/component") == "worker"
    }


def option(command: list[str], flag: str, default: str | None = None) -> str | None:
    return command[command.index(flag) + 1] if flag in command else default


def served_job_types(command: list[str]) -> list[str]:
    """The job types `grocery worker --queues ...` serves (its default: all)."""
    return option(command, "--queues", ",".join(JOB_TYPES)).split(",")


def test_kustomization_lists_every_manifest_once():
    files = listed_files()
    assert len(files) == len(set(files))
    assert set(files) == {p.name for p in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}
    assert yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())["namespace"] == "grocery"
    assert {doc["metadata"].get("namespace") for doc in manifests() if doc["kind"] != "Namespace"} == {"grocery"}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_core_resources_validate_against_the_kubernetes_schemas(version):
    """Strict: a field the schema does not know fails, as `kubectl apply --validate=strict` would."""
    core = [doc for doc in manifests() if doc["apiVersion"] != KEDA]
    assert {doc["kind"] for doc in core} == {
        "Namespace",
        "Secret",
        "ConfigMap",
        "PersistentVolumeClaim",
        "Job",
        "Deployment",
        "Service",
    }
    for doc in core:
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_refuses_a_broken_manifest():
    """The check above can fail: a misspelt field of a container is refused."""
    deployment = of_kind("Deployment")["grocery-api"]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/readyz"}}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def hpa_keda_makes(scaled: dict) -> dict:
    """The HorizontalPodAutoscaler KEDA creates for a ScaledObject: its bounds and the behaviour passed on."""
    spec = scaled["spec"]
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": f"keda-hpa-{scaled['metadata']['name']}"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": spec["scaleTargetRef"]["name"]},
            "minReplicas": max(1, spec.get("minReplicaCount", 0)),
            "maxReplicas": spec.get("maxReplicaCount", 100),
            **({"behavior": b} if (b := hpa_behaviour(spec)) else {}),
        },
    }


def hpa_behaviour(spec: dict) -> dict | None:
    return spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")


def test_scaled_objects_validate_against_kedas_schema():
    scaled_objects = of_kind("ScaledObject")
    assert scaled_objects
    for scaled in scaled_objects.values():
        jsonschema.validate(scaled, SCALED_OBJECT_SCHEMA)
        spec = scaled["spec"]
        assert spec.get("minReplicaCount", 0) <= spec["maxReplicaCount"]
        for trigger in spec["triggers"]:
            assert trigger["type"] == "redis"
            jsonschema.validate(trigger["metadata"], REDIS_TRIGGER_METADATA)
        kubernetes_validate.validate(hpa_keda_makes(scaled), KUBERNETES_VERSIONS[-1], strict=True)


def test_kedas_schema_refuses_a_misnamed_field():
    scaled = of_kind("ScaledObject")["grocery-worker-cpu"]
    scaled["spec"]["maxReplicas"] = 3  # the HPA's name for it, not KEDA's
    with pytest.raises(jsonschema.ValidationError, match="maxReplicas"):
        jsonschema.validate(scaled, SCALED_OBJECT_SCHEMA)


def test_each_worker_deployment_scales_on_exactly_the_queues_it_serves():
    """One ScaledObject per worker Deployment, with one trigger per queue that `grocery worker --queues` takes
    work from (service.kinds.worker_queues), so adding a queue there fails here until the scaler watches it."""
    workers, scaled_objects = worker_deployments(), of_kind("ScaledObject")
    targets = [scaled["spec"]["scaleTargetRef"]["name"] for scaled in scaled_objects.values()]
    assert sorted(targets) == sorted(workers)
    for scaled in scaled_objects.values():
        name = scaled["spec"]["scaleTargetRef"]["name"]
        command = workers[name]["spec"]["template"]["spec"]["containers"][0]["command"]
        watched = [trigger["metadata"]["listName"] for trigger in scaled["spec"]["triggers"]]
        assert watched == worker_queues(served_job_types(command)), name


def test_the_cpu_workers_serve_every_queue():
    command = worker_deployments()["grocery-worker-cpu"]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert sorted(served_job_types(command)) == sorted(JOB_TYPES)
    assert worker_queues(served_job_types(command)) == list(QUEUES)


def test_scalers_read_the_redis_the_workers_use():
    """KEDA reads REDIS_ADDRESS and REDIS_PASSWORD from the target's container, which builds REDIS_URL from the
    same two and names the database index the scaler counts in."""
    workers = worker_deployments()
    for scaled in of_kind("ScaledObject").values():
        container = workers[scaled["spec"]["scaleTargetRef"]["name"]]["spec"]["template"]["spec"]["containers"][0]
        env = {variable["name"]: variable for variable in container["env"]}
        database = re.fullmatch(r"redis://:\$\(REDIS_PASSWORD\)@\$\(REDIS_ADDRESS\)/(\d+)", env["REDIS_URL"]["value"])
        assert database, env["REDIS_URL"]
        for trigger in scaled["spec"]["triggers"]:
            metadata = trigger["metadata"]
            assert metadata["databaseIndex"] == database.group(1)
            for variable in (metadata["addressFromEnv"], metadata["passwordFromEnv"]):
                assert env[variable]["valueFrom"]["secretKeyRef"] == {"name": "grocery-secrets", "key": variable}


def test_every_app_pod_gets_the_same_configuration():
    """Each pod running the image reads the ConfigMap and the Secret; each one that talks to Redis builds
    REDIS_URL (defined after the two variables it expands, as Kubernetes requires) the same way."""
    secret_keys = set(of_kind("Secret")["grocery-secrets"]["stringData"])
    for name, pod in pod_templates().items():
        container = pod["containers"][0]
        assert container["envFrom"] == [
            {"configMapRef": {"name": "grocery-config"}},
            {"secretRef": {"name": "grocery-secrets"}},
        ], name
        env = [variable["name"] for variable in container.get("env", [])]
        if name != "grocery-migrate":
            assert env[:3] == ["REDIS_ADDRESS", "REDIS_PASSWORD", "REDIS_URL"], name
        for variable in container.get("env", []):
            if "valueFrom" in variable:
                assert variable["valueFrom"]["secretKeyRef"]["key"] in secret_keys, (name, variable)
        assert pod["securityContext"]["runAsNonRoot"] is True
        for each in (container, *pod.get("initContainers", [])):
            assert each["securityContext"]["allowPrivilegeEscalation"] is False, (name, each["name"])
            assert each["envFrom"] == container["envFrom"], (name, each["name"])


def test_the_config_map_holds_settings_the_service_reads_and_they_parse():
    data = of_kind("ConfigMap")["grocery-config"]["data"]
    known = set(Settings.variables())
    assert {key for key in data if not key.startswith("AWS_")} <= known
    # Pods share no disk: models and uploads in the bucket, every other path on a volume of the pod.
    assert data["GROCERY_MODEL_DIR"].startswith("s3://") and data["GROCERY_UPLOAD_DIR"].startswith("s3://")
    assert data["GROCERY_AUTH"] == "required"
    secrets = of_kind("Secret")["grocery-secrets"]["stringData"]
    settings = Settings.from_env({**data, "DATABASE_URL": secrets["DATABASE_URL"], "REDIS_URL": "redis://r:6379/0"})
    assert settings.model_dir == data["GROCERY_MODEL_DIR"] and settings.upload_dir == data["GROCERY_UPLOAD_DIR"]
    assert "*" not in settings.allowed_hosts
    assert configuration_problems(settings) == []
    mounted = {
        mount["mountPath"] for pod in pod_templates().values() for mount in pod["containers"][0].get("volumeMounts", [])
    }
    for local in (settings.artifact_cache, settings.export_dir, settings.data_dir):
        assert any(str(local).startswith(path + "/") for path in mounted), local


def test_the_secret_is_a_template_without_real_values():
    secret = of_kind("Secret")["grocery-secrets"]
    assert "data" not in secret  # stringData only: what is shown is all there is
    values = secret["stringData"]
    assert {"DATABASE_URL", "REDIS_ADDRESS", "REDIS_PASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(
        values
    )
    for key, value in values.items():
        assert "CHANGE-ME" in value or ".example." in value, key


def compose_services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def test_the_api_and_the_migration_run_as_the_compose_file_runs_them():
    api = of_kind("Deployment")["grocery-api"]["spec"]["template"]["spec"]
    container = api["containers"][0]
    assert container["command"] == compose_services()["api"]["command"]
    port = int(option(container["command"], "--bind").rsplit(":", 1)[1])
    assert container["ports"] == [{"name": "http", "containerPort": port}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    service = of_kind("Service")["grocery-api"]
    assert service["spec"]["selector"] == of_kind("Deployment")["grocery-api"]["spec"]["selector"]["matchLabels"]
    migrate = of_kind("Job")["grocery-migrate"]["spec"]["template"]["spec"]
    assert migrate["containers"][0]["command"] == compose_services()["migrate"]["command"]
    assert migrate["restartPolicy"] == "Never"


def test_gpu_workers_hold_one_gpu_each_and_cpu_workers_none():
    """`grocery worker` starts one process per GPU it is given (cli.worker.plan): each GPU pod asks the device
    plugin for one GPU and names that one device; a CPU pod runs one process on its one core."""
    gpu = worker_deployments()["grocery-worker-gpu"]["spec"]["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert len(plan(option(gpu["command"], "--gpus"), 1, {})) == 1
    cpu = worker_deployments()["grocery-worker-cpu"]["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in cpu["resources"].get("limits", {})
    threads = {variable["name"]: variable.get("value") for variable in cpu["env"]}["GROCERY_WORKER_THREADS"]
    slots = plan(option(cpu["command"], "--gpus"), int(option(cpu["command"], "--processes")), {})
    assert len(slots) == 1 and threads == cpu["resources"]["requests"]["cpu"] == "1"


def seconds(duration: str) -> int:
    """A compose duration such as 2m or 90s."""
    number, unit = re.fullmatch(r"(\d+)([ms])", duration).groups()
    return int(number) * {"m": 60, "s": 1}[unit]


def test_workers_have_the_grace_of_a_warm_shutdown():
    """At least what the compose file allows a worker to stop (the manifests' comment says how it is reached)."""
    compose_grace = seconds(compose_services()["worker-cpu"]["stop_grace_period"])
    for name, deployment in worker_deployments().items():
        assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= compose_grace, name


def test_the_operations_page_says_how_to_apply_them():
    operations = (ROOT / "docs" / "operations.md").read_text()
    assert "kubectl apply -k deploy/kubernetes" in operations
    for name in listed_files():
        assert name in operations, name


def schema_wait(pod: dict) -> list[str]:
    (init,) = pod["initContainers"]
    assert init["name"] == "wait-for-schema"
    return init["command"]


def run_in_image_shell(command: list[str], database_url: str) -> tuple[int | None, str]:
    """The container's command here (alembic from this environment, run from the project root as in the image):
    its exit code and output once it ends, or (None, its first line) once it says it waits (then it is stopped)."""
    env = {**os.environ, "DATABASE_URL": database_url, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        first = process.stdout.readline()
        if process.poll() is None and first:
            return None, first
        return process.wait(timeout=60), first + process.stdout.read()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        process.stdout.close()


def test_workers_start_once_the_schema_is_at_head(database_url, empty_database):
    """Each worker pod waits for the migration: its init container returns at once on a migrated database and
    keeps waiting on an empty one (a worker started before the schema would never register itself)."""
    commands = [schema_wait(pod) for name, pod in pod_templates().items() if name in worker_deployments()]
    assert len(commands) == len(worker_deployments()) and all(c == commands[0] for c in commands)
    assert run_in_image_shell(commands[0], database_url) == (0, "")
    assert run_in_image_shell(commands[0], empty_database) == (None, "waiting for the migration Job\n")
