"""Integrity of stored artifacts and API keys.

Every artifact carries an HMAC-SHA256 of its bytes in its S3 metadata, and
nothing is unpickled or loaded before that is checked: whoever can write to
the bucket cannot make the service run code or serve another model (the
signature covers the artifact's key too, so artifacts cannot be swapped).
"""
from __future__ import annotations

import hashlib
import hmac
import os
from typing import Callable

from botocore.exceptions import ClientError

SIGNATURE_METADATA = "hmac-sha256"


class ConfigurationError(RuntimeError):
    pass


class TamperedArtifact(Exception):
    """An artifact's bytes do not match their signature."""


def _from_environment_or_ssm(value_variable: str, parameter_variable: str,
                             ssm_client: Callable[[], object]) -> str | None:
    value = os.environ.get(value_variable)
    if value:
        return value
    parameter = os.environ.get(parameter_variable)
    if not parameter:
        return None
    try:
        return ssm_client().get_parameter(Name=parameter, WithDecryption=True)["Parameter"]["Value"]
    except ClientError as error:
        if error.response["Error"]["Code"] != "ParameterNotFound":
            raise
        raise ConfigurationError(f"the SSM parameter {parameter} ({parameter_variable}) "
                                 "does not exist") from None


class ArtifactSigner:
    def __init__(self, key_source: Callable[[], bytes]):
        # The key is fetched on first use: routes that touch no artifact work
        # (and answer) even where it is missing.
        self._key_source = key_source
        self._key: bytes | None = None

    @classmethod
    def from_env(cls, ssm_client: Callable[[], object]) -> "ArtifactSigner":
        """MODEL_SIGNING_KEY, else the SSM parameter named by MODEL_SIGNING_KEY_PARAMETER."""
        def key() -> bytes:
            value = _from_environment_or_ssm("MODEL_SIGNING_KEY", "MODEL_SIGNING_KEY_PARAMETER",
                                             ssm_client)
            if not value:
                raise ConfigurationError("no model signing key: set MODEL_SIGNING_KEY or "
                                         "MODEL_SIGNING_KEY_PARAMETER (an SSM SecureString)")
            if len(value) < 16:
                raise ConfigurationError("the model signing key must be at least 16 characters")
            return value.encode()
        return cls(key)

    def sign(self, name: str, blob: bytes) -> str:
        """The signature binds the bytes to their name (the artifact's S3 key),
        so one model's signed artifact copied over another's does not verify."""
        if self._key is None:
            self._key = self._key_source()
        signed = hmac.new(self._key, name.encode() + b"\n", hashlib.sha256)
        signed.update(blob)
        return signed.hexdigest()

    def verify(self, name: str, blob: bytes, signature: str | None) -> bytes:
        if not signature or not hmac.compare_digest(self.sign(name, blob), signature):
            raise TamperedArtifact(f"{name} failed its integrity check (HMAC-SHA256 "
                                   f"{'mismatch' if signature else 'missing'})")
        return blob


def api_key_required() -> bool:
    """Whether X-Api-Key is checked: REQUIRE_API_KEY when it is set; unset, only
    in a deployed Lambda function. So a deployed stage requires keys unless its
    configuration says REQUIRE_API_KEY=false, which `make deploy` refuses
    without an explicit opt-in; local runs (devstack) set it to false."""
    value = os.environ.get("REQUIRE_API_KEY")
    if value is None:
        return "AWS_LAMBDA_FUNCTION_NAME" in os.environ  # set by the Lambda runtime
    return value.strip().lower() in ("1", "true", "yes")


class ApiKeys:
    """X-Api-Key checking; `keys` None means no key is required."""

    def __init__(self, keys: frozenset[str] | None):
        self._digests = None if keys is None else [self._digest(k) for k in keys]

    @staticmethod
    def _digest(key: str) -> bytes:
        return hashlib.sha256(key.encode()).digest()

    @classmethod
    def from_env(cls, ssm_client: Callable[[], object]) -> "ApiKeys":
        """api_key_required() turns the check on; the accepted keys come from
        API_KEYS (comma-separated) or the SSM parameter named by API_KEYS_PARAMETER."""
        if not api_key_required():
            return cls(None)
        keys = _from_environment_or_ssm("API_KEYS", "API_KEYS_PARAMETER", ssm_client) or ""
        return cls(frozenset(k.strip() for k in keys.split(",") if k.strip()))

    @property
    def required(self) -> bool:
        return self._digests is not None

    def refusal(self, presented: str | None) -> tuple[int, str] | None:
        """None when the request may go on, else (status, message). The answer
        is the same for every route and id, so it never tells what exists."""
        if self._digests is None:
            return None
        if not presented:
            return 401, "Missing API key: send it in the X-Api-Key header."
        digest = self._digest(presented)
        # Compare against every key so the time taken does not tell which matched.
        if not any([hmac.compare_digest(digest, d) for d in self._digests]):
            return 403, "The API key in X-Api-Key is not valid."
        return None
