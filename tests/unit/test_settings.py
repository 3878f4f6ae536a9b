"""The edges' settings, parsed from a given environment."""

from __future__ import annotations

import pytest

from mnist_tasks.config import DEFAULT_MODEL_NAME, DEFAULT_STORE, ConfigError
from mnist_tasks.settings import DEFAULT_S3_CONN_ID, Settings, s3_client_kwargs


def test_an_empty_environment_gives_the_defaults() -> None:
    cfg = Settings.from_environ({"MNIST_STORE": "", "MNIST_MODEL_NAME": ""})
    assert cfg == Settings()
    assert cfg.store is None and cfg.store_or_default == DEFAULT_STORE
    assert cfg.model_name == DEFAULT_MODEL_NAME and cfg.s3_conn_id == DEFAULT_S3_CONN_ID


def test_each_setting_comes_from_its_variable() -> None:
    cfg = Settings.from_environ({
        "MNIST_STORE": "s3://b/p", "MNIST_MODEL_NAME": "m2", "MNIST_S3_CONN_ID": "c",
        "MNIST_AIRFLOW_API_URL": "http://a:8080", "MNIST_AIRFLOW_TOKEN": "t",
        "MNIST_AIRFLOW_USERNAME": "u", "MNIST_AIRFLOW_PASSWORD": "p", "OTHER": "x",
        "MNIST_REGISTRY": "mlflow+http://mlflow:5000/",
    })
    assert cfg == Settings("s3://b/p", "m2", "c", "http://a:8080", "t", "u", "p",
                           "mlflow+http://mlflow:5000")
    assert cfg.store_or_default == "s3://b/p"


@pytest.mark.parametrize("value", ["", "store", " store "])
def test_the_registry_is_the_stores_unless_an_mlflow_server_is_named(value: str) -> None:
    assert Settings.from_environ({"MNIST_REGISTRY": value}).registry is None


@pytest.mark.parametrize("bad", ["mlflow", "http://mlflow:5000", "mlflow+ftp://h", "s3://b/p",
                                 "mlflow+http://", "mlflow+http://h:5000?x=1"])
def test_a_bad_registry_setting_is_refused_naming_the_variable(bad: str) -> None:
    with pytest.raises(ConfigError, match="MNIST_REGISTRY") as err:
        Settings.from_environ({"MNIST_REGISTRY": bad})
    assert "\n" not in str(err.value) and repr(bad.strip()) in str(err.value)


def test_s3_client_kwargs_from_a_connections_fields() -> None:
    assert s3_client_kwargs(None, None, None, {}) is None
    assert s3_client_kwargs("ak", "sk", "http://h:9000", {"region_name": "r"}) == {
        "aws_access_key_id": "ak", "aws_secret_access_key": "sk",
        "endpoint_url": "http://h:9000", "region_name": "r"}
    # extra's endpoint_url wins over the host
    assert s3_client_kwargs(None, None, "http://h", {"endpoint_url": "http://e"}) == {
        "endpoint_url": "http://e"}
