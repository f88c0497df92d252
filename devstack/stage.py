"""Environment for running the app outside Lambda: the stage's variables from
.chalice/config.json and the emulator endpoint."""
from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
DEFAULT_EMULATOR_PORT = 4566


def stage_environment(stage: str = "dev") -> dict[str, str]:
    config = json.loads((PROJECT_DIR / ".chalice" / "config.json").read_text())
    if stage not in config.get("stages", {}):
        raise SystemExit(f"stage {stage!r} is not in .chalice/config.json")
    env = dict(config.get("environment_variables", {}))
    env.update(config["stages"][stage].get("environment_variables", {}))
    return env


@dataclass(frozen=True)
class LambdaFunction:
    """A function as `chalice deploy --stage` would create it."""
    name: str  # the deployed name, e.g. ml-api-dev-train_model
    memory_mb: int
    timeout_seconds: int
    environment: dict[str, str]  # its variables from .chalice/config.json


def lambda_function(function: str, stage: str = "dev") -> LambdaFunction:
    """A function's name, memory, timeout and variables for a stage, read from
    .chalice/config.json by Chalice's own rules (stage over function over
    global), with Chalice's defaults where nothing is set."""
    from chalice.config import Config
    from chalice.constants import DEFAULT_LAMBDA_MEMORY_SIZE, DEFAULT_LAMBDA_TIMEOUT

    stage_environment(stage)  # an unknown stage is named
    config = Config(chalice_stage=stage, function_name=function, config_from_disk=json.loads(
        (PROJECT_DIR / ".chalice" / "config.json").read_text()))
    return LambdaFunction(
        name=f"{config.app_name}-{stage}-{function}",
        memory_mb=config.lambda_memory_size or DEFAULT_LAMBDA_MEMORY_SIZE,
        timeout_seconds=config.lambda_timeout or DEFAULT_LAMBDA_TIMEOUT,
        environment=dict(config.environment_variables))


def deployed_settings(stage: str = "dev"):
    """Settings as the stage's Lambda functions see them: .chalice/config.json's
    variables only, nothing from this shell (what infrastructure is built for)."""
    from unittest import mock

    from chalicelib.config import Settings

    with mock.patch.dict(os.environ, stage_environment(stage), clear=True):
        return Settings.from_env()


# What a local run sets unless the caller did: a deployed stage requires API
# keys (chalicelib.security.api_key_required), a local run does not.
LOCAL_DEFAULTS = {"REQUIRE_API_KEY": "false"}


def apply(stage: str = "dev", endpoint: str | None = None) -> None:
    """Sets what the app reads, keeping anything the caller already set."""
    for name, value in {**stage_environment(stage), **LOCAL_DEFAULTS}.items():
        os.environ.setdefault(name, value)
    if endpoint:
        os.environ["AWS_ENDPOINT_URL"] = endpoint
    if os.environ.get("AWS_ENDPOINT_URL"):
        # Emulators accept any credentials; never send real ones to them.
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    if not os.environ.get("MODEL_SIGNING_KEY") and os.environ.get("AWS_ENDPOINT_URL"):
        os.environ["MODEL_SIGNING_KEY"] = dev_signing_key()


def dev_signing_key() -> str:
    """A key generated once per checkout for the local stack (.devstack/signing.key)."""
    path = PROJECT_DIR / ".devstack" / "signing.key"
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        # Written whole under a name of its own, then linked into place: of two
        # processes starting at once, one key wins and neither reads a half-written one.
        draft = path.with_name(f"signing.key.{os.getpid()}")
        with os.fdopen(os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
            out.write(secrets.token_hex(32))
        try:
            os.link(draft, path)
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    return path.read_text().strip()
