"""The stage's secrets in SSM Parameter Store, created once with random values.

- MODEL_SIGNING_KEY_PARAMETER: the key that signs model artifacts;
- API_KEYS_PARAMETER: the accepted X-Api-Key values (comma-separated), on
  stages with REQUIRE_API_KEY=true.

Both are SecureStrings under the account's default aws/ssm key, which the
functions may decrypt through SSM without a KMS grant in their policy (a
customer-managed key would need kms:Decrypt added). CloudFormation cannot
create SecureStrings, so this is its own step on both deployment paths.
Existing values are never overwritten, and values are never printed.

    python -m infra.secrets --stage prod
"""
from __future__ import annotations

import argparse
import secrets as random

import boto3

from devstack import stage as stages

_TRUE = ("1", "true", "yes")


def wanted(stage: str) -> dict[str, str]:
    """SSM parameter name -> what it holds, for the stage."""
    env = stages.stage_environment(stage)
    names = {}
    if env.get("MODEL_SIGNING_KEY_PARAMETER"):
        names[env["MODEL_SIGNING_KEY_PARAMETER"]] = "model-signing key"
    if env.get("REQUIRE_API_KEY", "false").lower() in _TRUE:
        if not env.get("API_KEYS_PARAMETER"):
            raise SystemExit(f"stage {stage} requires API keys but sets no API_KEYS_PARAMETER "
                             "in .chalice/config.json")
        names[env["API_KEYS_PARAMETER"]] = "API keys"
    prefix = f"/ml-api/{stage}/"
    for name in names:
        if not name.startswith(prefix):
            raise SystemExit(f"{name} is outside {prefix}*, the only parameters the "
                             f"functions may read (.chalice/policy-{stage}.json)")
    return names


def ensure(session: boto3.session.Session, stage: str) -> dict[str, bool]:
    """Creates the missing parameters; returns name -> whether it was created."""
    ssm = session.client("ssm")
    created = {}
    for name in wanted(stage):
        try:
            ssm.get_parameter(Name=name)
            created[name] = False
            continue
        except ssm.exceptions.ParameterNotFound:
            pass
        try:
            ssm.put_parameter(Name=name, Type="SecureString", Value=random.token_urlsafe(48),
                              Overwrite=False)
            created[name] = True
        except ssm.exceptions.ParameterAlreadyExists:  # made meanwhile by someone else
            created[name] = False
    return created


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", default="dev")
    args = parser.parse_args()
    what = wanted(args.stage)
    for name, was_created in ensure(boto3.session.Session(), args.stage).items():
        print(f"{'created' if was_created else 'kept   '} {name} ({what[name]}, SecureString)")
    print("read one with: aws ssm get-parameter --with-decryption --name NAME "
          "--query Parameter.Value --output text")


if __name__ == "__main__":
    main()
