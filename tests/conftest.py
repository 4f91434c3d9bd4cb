"""Shared fixtures: AWS isolation (moto in-process and as a real HTTP server).

Every test runs with fake AWS credentials and no profile, so nothing can reach a real account;
cached boto3 clients are dropped around each test (a client made outside moto escapes it).
"""

from __future__ import annotations

import socket

import pytest

from skysurvey import aws

AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


@pytest.fixture(autouse=True)
def _isolated_settings(monkeypatch, tmp_path_factory):
    """Fake credentials; no profile, endpoint or env file from the developer's machine."""
    for key, value in AWS_TEST_ENV.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "BUCKET_RAW", "BUCKET_CATALOG",
                "LAMBDA_FUNCTION", "ATHENA_DATABASE", "ATHENA_WORKGROUP", "ATHENA_OUTPUT",
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SKYSURVEY_ENV_FILE", str(tmp_path_factory.mktemp("env") / "none.env"))
    aws.clear_clients()
    yield
    aws.clear_clients()


@pytest.fixture
def mocked_aws():
    """moto in-process: patches boto3 only (not pyarrow or DuckDB)."""
    from moto import mock_aws

    with mock_aws():
        aws.clear_clients()
        yield
    aws.clear_clients()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def _moto_server():
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def moto_server(_moto_server, monkeypatch):
    """A real HTTP moto server on loopback, reached through AWS_ENDPOINT_URL (state reset)."""
    import urllib.request

    urllib.request.urlopen(
        urllib.request.Request(f"{_moto_server}/moto-api/reset", method="POST")
    ).read()
    monkeypatch.setenv("AWS_ENDPOINT_URL", _moto_server)
    aws.clear_clients()
    yield _moto_server
    aws.clear_clients()
