"""The stage's secrets in SSM Parameter Store, created once with random values.

- MODEL_SIGNING_KEY_PARAMETER: the key that signs model artifacts;
- API_KEYS_PARAMETER: the accepted X-Api-Key values (comma-separated), on
  every stage that requires API keys: all of them, unless the stage's
  configuration says REQUIRE_API_KEY=false (an open API, which `make deploy`
  and `make package` refuse without ALLOW_OPEN_API=yes).

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
import sys

import boto3

from devstack import stage as stages

_TRUE = ("1", "true", "yes")


def requires_api_keys(stage: str) -> bool:
    """What the stage's functions do once deployed (chalicelib.security): keys
    are required unless the configuration sets REQUIRE_API_KEY to false."""
    value = stages.stage_environment(stage).get("REQUIRE_API_KEY")
    return value is None or value.strip().lower() in _TRUE


def open_api_problem(stage: str, allow_open_api: bool) -> str | None:
    """Why deploying `stage` must stop, if it would publish an API anyone can use."""
    if requires_api_keys(stage) or allow_open_api:
        return None
    return (f"stage {stage} sets REQUIRE_API_KEY=false in .chalice/config.json: deployed, its "
            "API would train, serve and delete models for anyone on the internet. Remove "
            "that setting (a deployed stage requires X-Api-Key by default), or, if that is "
            "really what you want, deploy with ALLOW_OPEN_API=yes (--allow-open-api)")


def warn_open_api(stage: str) -> None:
    if requires_api_keys(stage):
        return
    bar = "!" * 78
    print(f"{bar}\nWARNING: stage {stage} is deployed WITHOUT API keys (ALLOW_OPEN_API).\n"
          "Anyone who finds its URL can train, use and delete every model and run up the\n"
          f"account's Lambda, S3 and DynamoDB bill.\n{bar}", file=sys.stderr, flush=True)


def wanted(stage: str) -> dict[str, str]:
    """SSM parameter name -> what it holds, for the stage."""
    env = stages.stage_environment(stage)
    names = {}
    if env.get("MODEL_SIGNING_KEY_PARAMETER"):
        names[env["MODEL_SIGNING_KEY_PARAMETER"]] = "model-signing key"
    if requires_api_keys(stage):
        if not env.get("API_KEYS_PARAMETER"):
            raise SystemExit(f"stage {stage} requires API keys but sets no API_KEYS_PARAMETER "
                             "in .chalice/config.json")
        names[env["API_KEYS_PARAMETER"]] = "API keys"
    prefix = f"/ml-api/{stage}/"
    for name in names:
        if not name.startswith(prefix):
            raise SystemExit(f"{name} is outside {prefix}*, where the stage's parameters "
                             "live (infra/policies.json grants them by name)")
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
