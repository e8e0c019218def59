"""The deployment files in infra/, checked against the code they deploy.

Nothing here starts Docker, Kubernetes or AWS. What these tests catch is the drift that
would otherwise show only at deploy time: a pin that disagrees with the lock, an offline
switch missing from a worker, a port open beyond localhost, a policy prefix the code no
longer writes to.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from stillroom.config import load_config
from stillroom.env import OFFLINE_ENV
from stillroom.teacher import CACHE_PREFIX

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
COMPOSE_DIR = INFRA / "compose"
DOCKER_DIR = INFRA / "docker"
K8S_DIR = INFRA / "k8s"

REQUIRED_SERVICES = {
    "postgres",
    "prefect-server",
    "mlflow",
    "minio",
    "minio-init",
    "worker-cpu",
    "worker-gpu",
}
WORKERS = {"worker-cpu": "cpu", "worker-gpu": "gpu"}
DOCKERFILES = {"cpu": DOCKER_DIR / "Dockerfile.cpu", "gpu": DOCKER_DIR / "Dockerfile.gpu"}
SECRET_WORDS = ("PASSWORD", "SECRET", "API_KEY", "ACCESS_KEY")


# --- readers --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((COMPOSE_DIR / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return read_env_file(COMPOSE_DIR / ".env.example")


@pytest.fixture(scope="module")
def job_template() -> dict[str, Any]:
    return json.loads((K8S_DIR / "gpu-base-job-template.json").read_text())


@pytest.fixture(scope="module")
def helm_values() -> dict[str, Any]:
    return yaml.safe_load((K8S_DIR / "worker-values.yaml").read_text())


@pytest.fixture(scope="module")
def iam_policy() -> dict[str, Any]:
    return json.loads((INFRA / "aws" / "iam-policy.json").read_text())


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
            values[key.strip()] = value.strip()
    return values


def service_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def command_list(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def flag(command: list[str], name: str) -> str | None:
    """The value of `--name=value` or `--name value` in an argv list."""
    for i, arg in enumerate(command):
        if arg == name and i + 1 < len(command):
            return command[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def lock_version(package: str) -> str:
    pins = dict(
        line.split("==", 1)
        for line in (ROOT / "requirements.lock").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    return {name.lower(): version for name, version in pins.items()}[package.lower()]


def torch_pin(path: Path) -> str:
    found = set(re.findall(r"torch==([0-9][0-9a-z.+]*)", path.read_text()))
    assert len(found) == 1, f"{path.name}: expected one torch pin, found {found}"
    return found.pop()


def dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions, current = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not current):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, rest = current.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        current = ""
    return instructions


def expand_args(path: Path) -> list[tuple[str, str]]:
    """Instructions with `${ARG}` replaced by the ARG's default, as a plain build sees them."""
    defaults: dict[str, str] = {}
    expanded = []
    for keyword, rest in dockerfile(path):
        if keyword == "ARG" and "=" in rest:
            name, value = rest.split("=", 1)
            defaults[name] = value
        for name, value in defaults.items():
            rest = rest.replace("${" + name + "}", value)
        expanded.append((keyword, rest))
    return expanded


def pip_installs(path: Path) -> list[str]:
    """Every `pip install ...` command of the RUN steps, in build order, ARGs expanded."""
    commands = []
    for keyword, rest in expand_args(path):
        if keyword == "RUN":
            commands += [c.strip() for c in rest.split("&&") if "pip install" in c]
    return commands


def json_instruction(path: Path, keyword: str) -> list[str]:
    values = [rest for kw, rest in dockerfile(path) if kw == keyword]
    assert len(values) == 1, f"{path.name}: expected one {keyword}"
    return json.loads(values[0])


# --- compose: services, ports, secrets ------------------------------------------------------


def test_compose_has_every_service(services: dict[str, Any]) -> None:
    assert set(services) >= REQUIRED_SERVICES


def test_every_published_port_binds_localhost(services: dict[str, Any]) -> None:
    published = 0
    for name, service in services.items():
        for port in service.get("ports", []):
            if isinstance(port, dict):
                host_ip = port.get("host_ip")
            else:
                parts = str(port).split(":")
                host_ip = parts[0] if len(parts) == 3 else None
            assert host_ip == "127.0.0.1", f"{name} publishes {port!r} beyond localhost"
            published += 1
    assert published >= 3  # Prefect UI, MLflow UI, MinIO


def test_postgres_is_not_published(services: dict[str, Any]) -> None:
    assert not services["postgres"].get("ports")


def test_every_compose_variable_is_defined_in_env_example(env_example: dict[str, str]) -> None:
    text = (COMPOSE_DIR / "docker-compose.yml").read_text()
    used = set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    bare = set(re.findall(r"(?<!\$)\$([A-Za-z_][A-Za-z0-9_]*)", text))
    assert used, "compose reads no variables from the env file"
    assert not bare, f"unbraced variables (write ${{VAR}} or $${{VAR}}): {bare}"
    missing = {name for name in used if not env_example.get(name)}
    assert not missing, f"used in compose, not set in .env.example: {sorted(missing)}"


def test_secrets_come_from_the_env_file(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for key, value in service_env(service).items():
            if any(word in key for word in SECRET_WORDS):
                assert value.startswith("${"), f"{name}.{key} is a literal, not from .env"
    for key in ("PREFECT_API_DATABASE_CONNECTION_URL",):
        assert "${POSTGRES_PASSWORD" in service_env(services["prefect-server"])[key]
    assert "${POSTGRES_PASSWORD" in service_env(services["mlflow"])["MLFLOW_BACKEND_STORE_URI"]


def test_env_example_marks_every_secret_as_a_local_dev_default() -> None:
    lines = (COMPOSE_DIR / ".env.example").read_text().splitlines()
    for i, line in enumerate(lines):
        key = line.partition("=")[0]
        if not line.startswith("#") and ("PASSWORD" in key or "SECRET" in key):
            assert "LOCAL-DEV DEFAULT" in lines[i - 1], f"{key} is not marked local-dev"


def test_real_env_file_is_ignored_by_git() -> None:
    assert ".env" in (COMPOSE_DIR / ".gitignore").read_text().split()


# --- compose: start-up order -----------------------------------------------------------------


def test_long_running_services_have_healthchecks(services: dict[str, Any]) -> None:
    for name, service in services.items():
        if service.get("restart") != "no":
            assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_depends_on_waits_for_health_or_completion(services: dict[str, Any]) -> None:
    for name, service in services.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on without conditions"
        for target, spec in depends.items():
            condition = spec.get("condition")
            if condition == "service_healthy":
                assert services[target].get("healthcheck"), f"{target} can never be healthy"
            else:
                assert condition == "service_completed_successfully", f"{name} -> {target}"
                assert services[target].get("restart") == "no", f"{target} is not one-shot"


def test_second_database_is_created_for_mlflow(services: dict[str, Any]) -> None:
    mounts = services["postgres"]["volumes"]
    init = [m for m in mounts if "/docker-entrypoint-initdb.d/" in m]
    assert init, "no init script mounted into postgres"
    script = COMPOSE_DIR / init[0].split(":", 1)[0]
    assert re.search(r"CREATE DATABASE mlflow\b", script.read_text())
    assert service_env(services["postgres"])["POSTGRES_DB"] == "prefect"
    uri = service_env(services["mlflow"])["MLFLOW_BACKEND_STORE_URI"]
    assert uri.startswith("postgresql") and uri.endswith("@postgres:5432/mlflow")


# --- compose: Prefect and MLflow servers ----------------------------------------------------


def test_prefect_server_uses_postgres_with_analytics_off(services: dict[str, Any]) -> None:
    server = services["prefect-server"]
    command = command_list(server["command"])
    assert command[:3] == ["prefect", "server", "start"]
    assert flag(command, "--host") == "0.0.0.0"
    env = service_env(server)
    assert env["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    assert env["PREFECT_API_DATABASE_CONNECTION_URL"].endswith("@postgres:5432/prefect")
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"


def test_prefect_server_runs_the_locked_prefect_release(services: dict[str, Any]) -> None:
    tag = services["prefect-server"]["image"].rsplit(":", 1)[1]
    assert tag.split("-")[0] == lock_version("prefect")


def test_mlflow_server_settings(services: dict[str, Any]) -> None:
    mlflow = services["mlflow"]
    command = command_list(mlflow["command"])
    assert command[:2] == ["mlflow", "server"]
    assert flag(command, "--workers") == "1"
    destination = flag(command, "--artifacts-destination") or ""
    assert destination.startswith("s3://")
    bucket = urlsplit(destination).netloc
    assert bucket == service_env(services["minio-init"])["MLFLOW_BUCKET"]
    env = service_env(mlflow)
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert mlflow["build"]["dockerfile"] == "infra/docker/Dockerfile.mlflow"


def test_mlflow_image_takes_its_pins_from_the_lock() -> None:
    installs = pip_installs(DOCKER_DIR / "Dockerfile.mlflow")
    assert len(installs) == 1 and "-c /tmp/requirements.lock" in installs[0]
    assert {"mlflow", "boto3"} <= set(installs[0].split())


# --- compose: workers ----------------------------------------------------------------------


@pytest.mark.parametrize("worker", sorted(WORKERS))
def test_worker_env_has_the_offline_switches_of_the_code(
    services: dict[str, Any], worker: str
) -> None:
    env = service_env(services[worker])
    wrong = {k: env.get(k) for k, v in OFFLINE_ENV.items() if env.get(k) != v}
    assert not wrong, f"{worker}: differs from stillroom.env.OFFLINE_ENV: {wrong}"


@pytest.mark.parametrize("worker", sorted(WORKERS))
def test_worker_env_reaches_every_service(services: dict[str, Any], worker: str) -> None:
    cfg = load_config()
    env = service_env(services[worker])
    assert env[cfg.teacher.api_key_env].startswith("${")
    assert env["AWS_ACCESS_KEY_ID"].startswith("${")
    assert env["AWS_SECRET_ACCESS_KEY"].startswith("${")

    api = urlsplit(env["PREFECT_API_URL"])
    server_port = flag(command_list(services["prefect-server"]["command"]), "--port")
    assert (api.hostname, str(api.port), api.path) == ("prefect-server", server_port, "/api")

    tracking = urlsplit(env["MLFLOW_TRACKING_URI"])
    assert tracking.hostname == "mlflow"
    allowed = flag(command_list(services["mlflow"]["command"]), "--allowed-hosts") or ""
    assert tracking.netloc in allowed.split(","), "MLflow would refuse the workers' Host"

    # boto3 reads AWS_ENDPOINT_URL_S3 only while storage.endpoint_url is left null.
    assert cfg.storage.endpoint_url is None
    assert urlsplit(env["AWS_ENDPOINT_URL_S3"]).netloc == "minio:9000"

    home = env["STILLROOM_HOME"]
    assert any(str(v).endswith(":" + home) for v in services[worker]["volumes"])


@pytest.mark.parametrize(("worker", "pool"), sorted(WORKERS.items()))
def test_worker_polls_its_pool_and_matches_its_image(
    services: dict[str, Any], worker: str, pool: str
) -> None:
    command = command_list(services[worker]["command"])
    assert command[:3] == ["prefect", "worker", "start"]
    assert (flag(command, "--pool"), flag(command, "--type")) == (pool, "process")
    assert services[worker]["build"]["dockerfile"] == f"infra/docker/Dockerfile.{pool}"
    assert json_instruction(DOCKERFILES[pool], "CMD") == command


def test_gpu_worker_reserves_nvidia_gpus(services: dict[str, Any]) -> None:
    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert "deploy" not in services["worker-cpu"]


def test_minio_init_creates_the_configured_buckets(services: dict[str, Any]) -> None:
    init = services["minio-init"]
    assert service_env(init)["STILLROOM_BUCKET"] == load_config().storage.bucket
    script = (COMPOSE_DIR / "minio" / "init.sh").read_text()
    assert '"local/$STILLROOM_BUCKET" "local/$MLFLOW_BUCKET"' in script
    assert "./minio:/init:ro" in init["volumes"]


def test_minio_worker_policy_is_the_aws_policy(iam_policy: dict[str, Any]) -> None:
    bucket = load_config().storage.bucket
    expected = json.loads(json.dumps(iam_policy).replace("BUCKET_NAME", bucket))
    actual = json.loads((COMPOSE_DIR / "minio" / "worker-policy.json").read_text())
    assert actual == expected, "regenerate: sed 's/BUCKET_NAME/<bucket>/g' iam-policy.json"


# --- Dockerfiles -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_installs_torch_then_lock_then_data_then_project(kind: str) -> None:
    installs = pip_installs(DOCKERFILES[kind])
    torch = torch_pin(ROOT / "requirements.in")
    assert torch == torch_pin(ROOT / "Makefile"), "requirements.in and Makefile disagree"
    assert f"torch=={torch}" in installs[0] and "--index-url" in installs[0]
    assert "requirements.lock" in installs[1] and "--no-deps" not in installs[1]
    assert "requirements-data.txt" in installs[2] and "--no-deps" in installs[2]
    assert installs[3].split()[-2:] == ["-e", "."], "project installed last, editable"
    assert len(installs) == 4
    lock = (ROOT / "requirements.lock").read_text()
    assert not re.search(r"^torch==", lock, re.M), "the lock would reinstall torch"


def test_cpu_image_uses_the_cpu_wheel_on_python_311() -> None:
    steps = expand_args(DOCKERFILES["cpu"])
    assert [r for k, r in steps if k == "FROM"][0].startswith("python:3.11-slim")
    assert "https://download.pytorch.org/whl/cpu" in pip_installs(DOCKERFILES["cpu"])[0]


def test_gpu_image_cuda_base_matches_the_torch_wheel() -> None:
    steps = expand_args(DOCKERFILES["gpu"])
    base = [r for k, r in steps if k == "FROM"][0]
    match = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-(cudnn-)?runtime-ubuntu22\.04", base)
    assert match, base
    index = re.search(r"download\.pytorch\.org/whl/(cu\d+)", pip_installs(DOCKERFILES["gpu"])[0])
    assert index and index.group(1) == f"cu{match.group(1)}{match.group(2)}"
    assert any(k == "RUN" and "python3.11 -m venv" in r for k, r in steps)


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_image_runs_as_a_user_with_a_state_volume(kind: str) -> None:
    steps = dockerfile(DOCKERFILES[kind])
    users = [rest for keyword, rest in steps if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in {"0", "root"}
    assert users[-1].split(":")[0].isdigit(), "runAsNonRoot needs a numeric user"
    env = " ".join(rest for keyword, rest in steps if keyword == "ENV")
    home = re.search(r"STILLROOM_HOME=(\S+)", env)
    assert home, "STILLROOM_HOME not set"
    assert home.group(1) in json_instruction(DOCKERFILES[kind], "VOLUME")


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_build_context_keeps_what_the_image_copies(kind: str) -> None:
    """The image copies configs/ and infra/accelerate/ because config paths are resolved
    against the repository root; its .dockerignore must let every copied path through."""
    sources = []
    for keyword, rest in dockerfile(DOCKERFILES[kind]):
        if keyword == "COPY":
            sources += rest.split()[:-1]
    assert {"configs", "infra/accelerate", "stillroom", "tasks", "flows"} <= set(sources)
    lines = (DOCKER_DIR / f"Dockerfile.{kind}.dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*", "the context should start from nothing and let paths back in"
    for source in sources:
        assert "!" + source in patterns, f"{source} is copied but left out of the context"


# --- Kubernetes work pool and Helm ---------------------------------------------------------


def template_defaults(job_template: dict[str, Any]) -> dict[str, Any]:
    properties = job_template["variables"]["properties"]
    values = {k: v["default"] for k, v in properties.items() if "default" in v}
    return values | {"image": "registry.example.com/stillroom-gpu:test", "name": "run"}


def test_job_template_placeholders_are_declared_variables(job_template: dict[str, Any]) -> None:
    assert set(job_template) == {"job_configuration", "variables"}
    used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", json.dumps(job_template["job_configuration"])))
    declared = set(job_template["variables"]["properties"])
    assert used == declared


def test_job_template_defaults_conform_to_its_schema(job_template: dict[str, Any]) -> None:
    schema = job_template["variables"]
    jsonschema.Draft7Validator.check_schema(schema)
    values = {k: v for k, v in template_defaults(job_template).items() if v is not None}
    jsonschema.validate(values, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({}, schema)  # no image: a deployment must name one


def test_rendered_job_requests_gpus_on_gpu_nodes(job_template: dict[str, Any]) -> None:
    from prefect.utilities.templating import apply_values

    cfg = load_config()
    rendered = apply_values(job_template["job_configuration"], template_defaults(job_template))
    pod = rendered["job_manifest"]["spec"]["template"]["spec"]
    # What the Kubernetes worker insists on (prefect_kubernetes.worker._get_base_job_manifest).
    assert (pod["restartPolicy"], pod["parallelism"], pod["completions"]) == ("Never", 1, 1)
    container = pod["containers"][0]
    assert container["name"] == "prefect-job"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert pod["nodeSelector"], "no node selector: GPU pods could land anywhere"
    assert pod["securityContext"]["runAsNonRoot"] is True
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert {k: env.get(k) for k in OFFLINE_ENV} == OFFLINE_ENV
    key_ref = next(e for e in container["env"] if e["name"] == cfg.teacher.api_key_env)
    assert key_ref["valueFrom"]["secretKeyRef"]["name"] == "stillroom-teacher"
    assert "{{" not in json.dumps(rendered)


def test_helm_worker_serves_the_compose_gpu_pool(
    helm_values: dict[str, Any], services: dict[str, Any]
) -> None:
    worker = helm_values["worker"]
    compose_pool = flag(command_list(services["worker-gpu"]["command"]), "--pool")
    assert worker["config"]["workPool"] == compose_pool == "gpu"
    assert worker["config"]["type"] == "kubernetes"
    assert worker["apiConfig"] == "server"
    assert urlsplit(worker["serverApiConfig"]["apiUrl"]).path == "/api"
    assert worker["image"]["prefectTag"].split("-")[0] == lock_version("prefect")
    assert helm_values["serviceAccount"]["name"]


def test_helm_values_load_the_template_from_its_configmap(helm_values: dict[str, Any]) -> None:
    name = helm_values["worker"]["config"]["baseJobTemplate"]["existingConfigMapName"]
    header = (K8S_DIR / "worker-values.yaml").read_text()
    assert f"create configmap {name}" in header
    assert "--from-file=baseJobTemplate.json=infra/k8s/gpu-base-job-template.json" in header


def test_flow_runner_account_is_the_templates_default(
    job_template: dict[str, Any], helm_values: dict[str, Any]
) -> None:
    account = yaml.safe_load((K8S_DIR / "flow-runner-serviceaccount.yaml").read_text())
    defaults = template_defaults(job_template)
    assert account["kind"] == "ServiceAccount"
    assert account["metadata"]["name"] == defaults["service_account_name"]
    assert account["metadata"]["namespace"] == defaults["namespace"]
    # Flow runs get the S3 role; the worker that creates Jobs does not.
    assert account["metadata"]["name"] != helm_values["serviceAccount"]["name"]


# --- IAM policy -----------------------------------------------------------------------------


def code_prefixes() -> dict[str, str]:
    from tasks.data import run_key

    cfg = load_config()
    return {
        "requests": cfg.sampling.prefix,
        "runs": run_key(cfg, "RUN", "NAME").removesuffix("RUN/NAME"),
        "cache": CACHE_PREFIX + "/",
    }


def test_code_touches_s3_only_in_the_ways_the_policy_allows() -> None:
    """If the code starts deleting, copying or tagging, the policy must change too."""
    sources = {
        path.name: path.read_text()
        for folder in ("stillroom", "tasks", "flows")
        for path in ROOT.glob(f"{folder}/*.py")
    }
    code = "\n".join(sources.values())
    methods = set(re.findall(r"\bs3\.(\w+)\(", code))
    # upload_file/download_file: managed (multipart, ranged) transfers of model folders.
    allowed = {"get_object", "put_object", "get_paginator", "head_bucket", "create_bucket"}
    assert methods <= allowed | {"upload_file", "download_file"}
    assert set(re.findall(r"get_paginator\(\"(\w+)", code)) == {"list_objects_v2"}  # ListBucket
    # Creating a bucket (head_bucket, create_bucket) is the offline demo's seeding only.
    creators = {name for name, text in sources.items() if "ensure_bucket(" in text}
    assert creators <= {"storage.py", "seeding.py"}


def test_iam_policy_actions_are_explicit_and_minimal(iam_policy: dict[str, Any]) -> None:
    for statement in iam_policy["Statement"]:
        assert statement["Effect"] == "Allow"
        assert not {"NotAction", "NotResource", "Principal"} & set(statement)
        actions = statement["Action"]
        for action in [actions] if isinstance(actions, str) else actions:
            assert "*" not in action
            assert action in {
                "s3:GetObject",
                "s3:PutObject",
                "s3:ListBucket",
                "s3:AbortMultipartUpload",  # a failed multipart model upload cleans up
            }, action


def test_iam_policy_covers_exactly_the_prefixes_the_code_uses(iam_policy: dict[str, Any]) -> None:
    prefixes = code_prefixes()
    bucket = "arn:aws:s3:::BUCKET_NAME"
    object_access: dict[str, set[str]] = {}
    listed: set[str] = set()
    for statement in iam_policy["Statement"]:
        actions = statement["Action"]
        actions = {actions} if isinstance(actions, str) else set(actions)
        resources = statement["Resource"]
        for resource in [resources] if isinstance(resources, str) else resources:
            if resource == bucket:
                assert actions == {"s3:ListBucket"}
                listed |= set(statement["Condition"]["StringLike"]["s3:prefix"])
            else:
                assert resource.startswith(bucket + "/") and resource.endswith("/*"), resource
                key_prefix = resource.removeprefix(bucket + "/").removesuffix("*")
                object_access.setdefault(key_prefix, set()).update(actions)
    read = {prefixes["requests"], prefixes["runs"], prefixes["cache"]}
    assert set(object_access) == read
    assert object_access[prefixes["requests"]] == {"s3:GetObject"}
    # Runs hold model folders, uploaded in parts: an aborted upload must be able to clean up.
    assert object_access[prefixes["runs"]] == {
        "s3:GetObject",
        "s3:PutObject",
        "s3:AbortMultipartUpload",
    }
    assert object_access[prefixes["cache"]] == {"s3:GetObject", "s3:PutObject"}
    assert listed == {p + "*" for p in read}
