"""Deployment tests: infrastructure definition, IAM policy, packaging."""
import boto3
import pytest
from moto import mock_aws

REGION = "us-east-1"


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "package: builds the real Lambda layer and `chalice package` output (downloads "
        "wheels from PyPI once, cached in dist/cache/; skipped with a message when "
        "PyPI is unreachable). Deselect with -m 'not package'.")


@pytest.fixture
def moto_session(monkeypatch):
    """moto's in-process AWS, with test credentials and no emulator endpoint."""
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    for name, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                        "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        yield boto3.session.Session()
