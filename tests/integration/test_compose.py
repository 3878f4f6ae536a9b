"""The docker-compose deployment, as Compose itself resolves it (``docker compose config``).

No Docker engine is needed: ``config`` only parses, validates and interpolates the file. Uses
the ``docker compose`` plugin, else the standalone ``docker-compose`` (Debian's, which
``make test-deps`` installs); fails, saying so, if neither exists.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
AIRFLOW_SERVICES = ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                    "airflow-triggerer", "airflow-worker", "airflow-worker-gpu")
LONG_RUNNING = (*AIRFLOW_SERVICES, "postgres", "redis", "minio")


def _compose_command() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The resolved configuration, with the variables a deployer would leave unset."""
    command = _compose_command()
    if command is None:
        pytest.fail("no Compose CLI (the docker compose plugin or docker-compose): "
                    "`make test-deps` installs Debian's docker-compose", pytrace=False)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(Path.home())}
    no_env_file = tmp_path_factory.mktemp("compose") / "empty.env"  # a developer's .env must
    no_env_file.write_text("")  # not change the result
    result = subprocess.run(
        [*command, "--project-directory", str(REPO), "-f", str(REPO / "docker-compose.yaml"),
         "--env-file", str(no_env_file), "config"],
        capture_output=True, text=True, timeout=120, env=env, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    return dict(yaml.safe_load(result.stdout))


def _argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else list(command)


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # KEY=VALUE form
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def test_services(config: dict[str, Any]) -> None:
    assert set(config["services"]) == {*LONG_RUNNING, "airflow-init", "mlflow"}
    for name in (*LONG_RUNNING, "mlflow"):
        healthcheck = config["services"][name].get("healthcheck") or {}
        assert healthcheck.get("test"), f"{name} has no healthcheck"
        assert config["services"][name].get("restart") == "always", name


def test_mlflow_is_optional_and_the_version_the_tests_run(config: dict[str, Any]) -> None:
    mlflow = config["services"]["mlflow"]
    assert mlflow["profiles"] == ["mlflow"]  # started only with --profile mlflow
    pinned = re.search(r"^mlflow==(\S+)$", (REPO / "requirements-mlflow-lock.txt").read_text(),
                       re.M)
    assert pinned and mlflow["image"].endswith(f":v{pinned.group(1)}")
    assert "--serve-artifacts" in mlflow["command"]  # versions are uploaded through its proxy
    for name in AIRFLOW_SERVICES:
        assert _env(config["services"][name])["MNIST_REGISTRY"] == "store", name


def test_airflow_services_share_celery_postgres_redis(config: dict[str, Any]) -> None:
    for name in (*AIRFLOW_SERVICES, "airflow-init"):
        env = _env(config["services"][name])
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
        assert "@postgres/" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == (
            "http://airflow-apiserver:8080/execution/")
        # One airflow.cfg with generated secrets, shared through a volume.
        assert env["AIRFLOW_CONFIG"] == "/opt/airflow/config/airflow.cfg"
        assert _mounts(config["services"][name])["/opt/airflow/config"] == "airflow-config", name
    for name in AIRFLOW_SERVICES:
        depends = config["services"][name]["depends_on"]
        assert depends["airflow-init"]["condition"] == "service_completed_successfully", name
        for infra in ("postgres", "redis", "minio"):
            assert depends[infra]["condition"] == "service_healthy", (name, infra)


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Mount target -> source (volume name or host path), from the short or long syntax."""
    mounts = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume.get("source"), volume["target"]
        mounts[target] = source
    return mounts


def test_the_dag_is_configured_for_s3_and_the_gpu_queue(config: dict[str, Any]) -> None:
    for name in (*AIRFLOW_SERVICES, "airflow-init"):
        env = _env(config["services"][name])
        assert env["MNIST_STORE"] == "s3://mnist/store"
        assert (env["MNIST_TRAIN_QUEUE"], env["MNIST_TRAIN_POOL"]) == ("gpu", "gpu")
        conn = json.loads(env["AIRFLOW_CONN_MNIST_S3"])
        assert conn["conn_type"] == "aws" and conn["login"] and conn["password"]
        assert conn["extra"]["endpoint_url"] == "http://minio:9000"
    # The Models page in the api-server reads the registry with the standard AWS settings.
    api_env = _env(config["services"]["airflow-apiserver"])
    assert api_env["AWS_ENDPOINT_URL_S3"] == "http://minio:9000"
    minio_env = _env(config["services"]["minio"])
    assert api_env["AWS_ACCESS_KEY_ID"] == minio_env["MINIO_ROOT_USER"]
    assert api_env["AWS_SECRET_ACCESS_KEY"] == minio_env["MINIO_ROOT_PASSWORD"]


def test_workers_serve_default_and_gpu_queues(config: dict[str, Any]) -> None:
    default = _argv(config["services"]["airflow-worker"]["command"])
    gpu = _argv(config["services"]["airflow-worker-gpu"]["command"])
    assert default[:2] == ["celery", "worker"] and gpu[:2] == ["celery", "worker"]
    assert default[default.index("--queues") + 1] == "default"
    assert gpu[gpu.index("--queues") + 1] == "gpu"
    assert gpu[gpu.index("--concurrency") + 1] == "1"
    devices = config["services"]["airflow-worker-gpu"]["deploy"]["resources"]["reservations"][
        "devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "deploy" not in config["services"]["airflow-worker"]
    # The GPU worker's image has TensorFlow with CUDA; the others the CPU build.
    gpu_build = config["services"]["airflow-worker-gpu"]["build"]
    assert gpu_build["args"]["TENSORFLOW"].startswith("tensorflow[and-cuda]==")
    assert config["services"]["airflow-worker-gpu"]["image"] != (
        config["services"]["airflow-worker"]["image"])


def test_the_cpu_worker_imports_keras_before_forking_its_tasks(config: dict[str, Any]) -> None:
    """Celery's ``imports`` through Airflow's ``extra_celery_config`` (the test deployment in
    conftest.py checks the effect: TensorFlow loaded in each worker's main process)."""
    default = _env(config["services"]["airflow-worker"])
    gpu = _env(config["services"]["airflow-worker-gpu"])
    assert json.loads(default["AIRFLOW__CELERY__EXTRA_CELERY_CONFIG"]) == {"imports": ["keras"]}
    assert "AIRFLOW__CELERY__EXTRA_CELERY_CONFIG" not in gpu  # CUDA and fork: untried
    for name in ("airflow-apiserver", "airflow-scheduler"):
        assert "AIRFLOW__CELERY__EXTRA_CELERY_CONFIG" not in _env(config["services"][name])


def test_minio_is_pinned_and_persistent(config: dict[str, Any]) -> None:
    minio = config["services"]["minio"]
    assert re.fullmatch(r"(quay\.io/)?minio/minio:RELEASE\.\d{4}-\d\d-\d\dT[\d-]+Z", minio["image"])
    assert _mounts(minio)["/data"] == "minio-data"
    assert "minio-data" in config["volumes"] and "postgres-db" in config["volumes"]


def test_init_migrates_creates_admin_pool_and_bucket(config: dict[str, Any]) -> None:
    init = config["services"]["airflow-init"]
    argv = _argv(init["command"])
    assert init["entrypoint"] in ("/bin/bash", ["/bin/bash"]) and argv[0] == "-c"
    script = argv[1].replace("$$", "$")  # `config` keeps Compose's escaping of $
    for step in ("airflow db migrate", "airflow pools set gpu", "create_bucket",
                 "simple_auth_manager_passwords.json"):
        assert step in script, step
    check = subprocess.run(["bash", "-n", "-c", script], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert init.get("restart") in (None, "no")
    assert set(init["depends_on"]) == {"postgres", "redis", "minio"}


def test_dockerfile_matches_the_pinned_airflow() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    base = re.search(r"^FROM apache/airflow:(\S+)-python(\S+)$", dockerfile, re.MULTILINE)
    assert base, "Dockerfile must build FROM apache/airflow:<version>-python<version>"
    pinned = re.search(r"^apache-airflow==(\S+)$", (REPO / "requirements.txt").read_text(),
                       re.MULTILINE)
    assert pinned and base.group(1) == pinned.group(1)
    assert base.group(2) == "3.11"
    for needed in ("requirements.txt", "mnist_tasks", "dags", "plugins"):
        assert needed in dockerfile
