"""`chalice deploy` for a stage, after checking what it cannot check itself.

Chalice would happily deploy functions without their layer, against a queue
that does not exist or whose visibility timeout is shorter than the trainer's
timeout, with no signing key to read, or an API that anyone may use. Each of
those fails later and vaguely (or not at all); here they fail first, all
listed, each with the step that fixes it.

Then it renders each function's policy for the account and region it deploys
to (infra.policies), runs `chalice deploy`, and lets the new API's origin
(where the dashboard is served) send upload forms to the bucket, unless the
stage names its own UPLOAD_ORIGINS.

    python -m infra.deploy --stage prod            # checks, then chalice deploy
    python -m infra.deploy --stage prod --check    # checks only
"""
from __future__ import annotations

import argparse
import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from devstack import bootstrap, stage as stages
from infra import definition, policies, secrets
from infra import layer as layers
from infra.package import CHALICE

PROJECT_DIR = Path(__file__).resolve().parent.parent
FUNCTIONS = ("api_handler", "train_model", "sweep_expired")
_LAYER_ARN = re.compile(r"arn:aws[\w-]*:lambda:(?P<region>[a-z0-9-]+):\d{12}:layer:[\w-]+:\d+")


def _scope(stage: str, function: str, project_dir: Path):
    from chalice.cli.factory import CLIFactory

    config = CLIFactory(str(project_dir), environ={}).create_config_obj(chalice_stage_name=stage)
    return config.scope(stage, function)


def _names(requirements: Path) -> set[str]:
    names = set()
    for line in requirements.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            names.add(re.split(r"[=<>!~\[; ]", line)[0].lower().replace("_", "-"))
    return names


def check_requirements(project_dir: Path = PROJECT_DIR) -> list[str]:
    both = _names(project_dir / "requirements.txt") & _names(project_dir / "requirements-layer.txt")
    if both:
        return [f"{', '.join(sorted(both))} in both requirements.txt (vendored into the "
                "deployment zip) and requirements-layer.txt: keep them in the layer only, or "
                "the zip outgrows chalice deploy's 50 MB"]
    return []


def _layer_problems(session, stage: str, project_dir: Path) -> list[str]:
    problems = []
    region = session.region_name or "us-east-1"
    for function in FUNCTIONS:
        scope = _scope(stage, function, project_dir)
        if not scope.layers:
            problems.append(f"{function} has no layer: run `make publish-layer "
                            f"STAGE={stage} DEPLOY_BUCKET=<bucket>` (writes .chalice/config.json)")
            continue
        for arn in scope.layers:
            match = _LAYER_ARN.fullmatch(arn)
            if not match:
                problems.append(f"{function}: {arn!r} is not a layer version ARN")
                continue
            if match["region"] != region:
                problems.append(f"{function}: layer {arn} is in {match['region']}, the "
                                f"functions deploy to {region}")
                continue
            try:
                layer_arn, version = arn.rsplit(":", 1)
                runtimes = session.client("lambda").get_layer_version(
                    LayerName=layer_arn, VersionNumber=int(version)).get("CompatibleRuntimes", [])
            except ClientError as error:
                problems.append(f"{function}: layer {arn}: {error}")
                continue
            if scope.lambda_python_version not in runtimes:
                problems.append(f"{function} runs {scope.lambda_python_version} (the local "
                                f"Python), layer {arn} is built for {runtimes}: deploy from "
                                f"Python {layers.PYTHON_VERSION}")
    return sorted(set(problems))


def _resource_problems(session, stage: str, project_dir: Path) -> list[str]:
    settings = stages.deployed_settings(stage)
    bootstrap = f"run `make bootstrap STAGE={stage}` against this account"
    problems = []
    try:
        session.client("s3").head_bucket(Bucket=settings.bucket)
    except ClientError:
        problems.append(f"bucket {settings.bucket} is missing (or not yours): {bootstrap}")
    try:
        session.client("dynamodb").describe_table(TableName=settings.table)
    except ClientError:
        problems.append(f"table {settings.table} is missing: {bootstrap}")
    sqs = session.client("sqs")
    try:
        url = sqs.get_queue_url(QueueName=settings.queue)["QueueUrl"]
        visibility = int(sqs.get_queue_attributes(
            QueueUrl=url, AttributeNames=["VisibilityTimeout"])["Attributes"]["VisibilityTimeout"])
        timeout = _scope(stage, "train_model", project_dir).lambda_timeout
        if visibility < timeout:
            problems.append(f"queue {settings.queue} has a visibility timeout of {visibility} s, "
                            f"less than the trainer's {timeout} s (Lambda refuses the event "
                            f"source): {bootstrap}, without --visibility-timeout")
    except ClientError:
        problems.append(f"queue {settings.queue} is missing: {bootstrap}")
    ssm = session.client("ssm")
    for name in secrets.wanted(stage):
        try:
            ssm.get_parameter(Name=name)
        except ClientError:
            problems.append(f"SSM parameter {name} is missing: run `make secrets STAGE={stage}`")
    return problems


def _access_problems(stage: str, allow_open_api: bool, project_dir: Path) -> list[str]:
    problems = [problem for problem in [secrets.open_api_problem(stage, allow_open_api)]
                if problem]
    for function in policies.functions():
        try:
            policies.policy_file(stage, function, project_dir)
        except policies.PolicyError as error:
            problems.append(str(error))
    return problems


def preflight(session: boto3.session.Session, stage: str,
              project_dir: Path = PROJECT_DIR, allow_open_api: bool = False) -> list[str]:
    """Everything that would make `chalice deploy --stage` deploy something broken
    or open to anyone."""
    return (check_requirements(project_dir) + _access_problems(stage, allow_open_api, project_dir)
            + _layer_problems(session, stage, project_dir)
            + _resource_problems(session, stage, project_dir))


def render_policies(session: boto3.session.Session, stage: str,
                    project_dir: Path = PROJECT_DIR) -> list[Path]:
    """Each function's policy, for the account and region of `session`."""
    region = session.region_name or "us-east-1"
    account = session.client("sts").get_caller_identity()["Account"]
    return policies.write(stage, account=account, region=region,
                          partition=session.get_partition_for_region(region),
                          project_dir=project_dir)


def origin_of(url: str) -> str:
    parts = urlsplit(url.strip())
    return f"{parts.scheme}://{parts.netloc}"


def allow_uploads_from(session: boto3.session.Session, stage: str, api_url: str) -> list[str]:
    """The bucket's CORS rule for the stage's UPLOAD_ORIGINS, else for the
    deployed API's origin (the dashboard's). Returns the origins."""
    settings = stages.deployed_settings(stage)
    origins = list(settings.upload_origins) or [origin_of(api_url)]
    bucket = definition.render(settings, upload_origins=origins)["Resources"]["ModelsBucket"]
    bootstrap.apply(session, {"ModelsBucket": bucket})
    return origins


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", default="dev")
    parser.add_argument("--check", action="store_true", help="only run the checks")
    parser.add_argument("--allow-open-api", action="store_true",
                        help="deploy a stage that does not require API keys (anyone may use it)")
    parser.add_argument("--project-dir", type=Path, default=PROJECT_DIR, help=argparse.SUPPRESS)
    args = parser.parse_args()
    session = boto3.session.Session()
    try:
        problems = preflight(session, args.stage, args.project_dir, args.allow_open_api)
    except BotoCoreError as error:  # no credentials, no network, unknown region
        raise SystemExit(f"cannot check stage {args.stage} in AWS: {error}") from None
    if problems:
        raise SystemExit(f"not deploying stage {args.stage}:\n- " + "\n- ".join(problems))
    secrets.warn_open_api(args.stage)
    print(f"stage {args.stage}: layer, resources and secrets are in place")
    if args.check:
        return
    for path in render_policies(session, args.stage, args.project_dir):
        print(f"rendered {path.relative_to(args.project_dir)}")
    chalice = [*CHALICE, "--project-dir", str(args.project_dir)]
    deployed = subprocess.run([*chalice, "deploy", "--stage", args.stage])
    if deployed.returncode:
        raise SystemExit(f"chalice deploy failed (exit code {deployed.returncode}); see above")
    url = subprocess.run([*chalice, "url", "--stage", args.stage], check=True,
                         capture_output=True, text=True).stdout.strip()
    origins = allow_uploads_from(session, args.stage, url)
    print(f"bucket CORS: upload forms from {', '.join(origins)}")
    print(url)


if __name__ == "__main__":
    main()
