"""The CloudFormation path: `chalice package --merge-template` with the
resources of infra/resources.json, then cfn-lint.

    python -m infra.package --stage prod      # dist/package/prod/{sam.json,deployment.zip}

The merge template is infra/resources.json rendered for the stage, plus
corrections of Chalice's part:
- the trainer's SQS event source takes the ARN of the stack's TrainingQueue
  instead of Chalice's ARN string built from the queue name, so CloudFormation
  creates the queue before the event source mapping that needs it;
- ScalingConfig.MaximumConcurrency = the trainer's reserved concurrency, so
  Lambda's pollers never take more messages than the function may run:
  throttled receives would count towards the 3 that send a message to the
  dead-letter queue without the trainer ever seeing it;
- the API function's log group refers to the function by its real logical id
  (Chalice 1.34 writes ${ApiHandler}, the function is APIHandler);
- the bucket's CORS rule lets the stack's own API (the dashboard's origin)
  send upload forms, unless the stage names UPLOAD_ORIGINS.
Each function's policy is rendered for CloudFormation first (infra.policies):
its ARNs carry ${AWS::AccountId} and ${AWS::Region}, made Fn::Sub in the
template, so the roles are scoped to the stack's account and region.
A stage that does not require API keys is refused unless allow_open_api.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from chalice.utils import to_cfn_resource_name

from devstack import stage as stages
from infra import definition, policies, secrets

PROJECT_DIR = Path(__file__).resolve().parent.parent
PACKAGE_DIR = PROJECT_DIR / "dist" / "package"
TRAINER = "train_model"
MB = 1024 * 1024
# The `chalice` and `cfn-lint` commands of this venv (their main() returns the exit code).
CHALICE = [sys.executable, "-c", "import sys; from chalice.cli import main; sys.exit(main())"]
CFN_LINT = [sys.executable, "-c", "import sys; from cfnlint.runner import main; sys.exit(main())"]


class PackageError(RuntimeError):
    pass


def _config(project_dir: Path) -> dict:
    return json.loads((project_dir / ".chalice" / "config.json").read_text())


def _chalice_scope(project_dir: Path, stage: str, function: str):
    from chalice.cli.factory import CLIFactory

    config = CLIFactory(str(project_dir), environ={}).create_config_obj(chalice_stage_name=stage)
    return config.scope(stage, function)


# The stack's API, where the dashboard is served from (Chalice's RestAPI).
API_ORIGIN = {"Fn::Sub": "https://${RestAPI}.execute-api.${AWS::Region}.${AWS::URLSuffix}"}


def merge_template(stage: str, project_dir: Path = PROJECT_DIR) -> dict:
    settings = stages.deployed_settings(stage)
    template = definition.render(settings,
                                 upload_origins=list(settings.upload_origins) or [API_ORIGIN])
    # Each SQS-triggered function takes its queue's ARN from the stack.
    for function, queue in ((TRAINER, "TrainingQueue"), ("run_batch", "BatchQueue")):
        resource = to_cfn_resource_name(function)
        # Chalice writes {"Fn::Sub": "arn:...:<queue name>"}; the merge is deep, so
        # only the same key replaces it (a Fn::GetAtt would sit beside it).
        event_source = {"Queue": {"Fn::Sub": f"${{{queue}.Arn}}"}}
        reserved = _chalice_scope(project_dir, stage, function).reserved_concurrency
        if reserved:
            if reserved < 2:
                raise PackageError(f"{function}'s reserved_concurrency is {reserved}; an SQS "
                                   "event source's MaximumConcurrency is at least 2")
            event_source["ScalingConfig"] = {"MaximumConcurrency": reserved}
        template["Resources"][resource] = {"Properties": {"Events": {
            f"{resource}SqsEventSource": {"Properties": event_source}}}}
    if _chalice_scope(project_dir, stage, "api_handler").log_retention_in_days:
        # Chalice 1.34 names the API function APIHandler but refers to it as
        # ${ApiHandler} in that function's log group.
        template["Resources"]["ApiHandlerLogGroup"] = {"Properties": {
            "LogGroupName": {"Fn::Sub": "/aws/lambda/${APIHandler}"}}}
    return template


def layers_of(stage: str, project_dir: Path = PROJECT_DIR) -> list[str]:
    return _chalice_scope(project_dir, stage, TRAINER).layers or []


def package(stage: str, out_dir: Path | None = None, project_dir: Path = PROJECT_DIR,
            require_layer: bool = True, allow_open_api: bool = False) -> Path:
    """Runs chalice package for `stage` into out_dir; returns the template's path."""
    if require_layer and not layers_of(stage, project_dir):
        raise PackageError(
            f"stage {stage} has no layer in .chalice/config.json, so its functions would "
            f"miss numpy, scipy and scikit-learn: run `make publish-layer STAGE={stage} "
            "DEPLOY_BUCKET=<bucket>` first")
    open_api = secrets.open_api_problem(stage, allow_open_api)
    if open_api:
        raise PackageError(open_api)
    policies.write(stage, project_dir=project_dir, **policies.CLOUDFORMATION)
    out_dir = Path(out_dir or PACKAGE_DIR / stage)
    merge = out_dir.parent / f"{out_dir.name}-merge-template.json"
    merge.parent.mkdir(parents=True, exist_ok=True)
    merge.write_text(json.dumps(merge_template(stage, project_dir), indent=2) + "\n")
    env = dict(os.environ)
    env.setdefault("AWS_DEFAULT_REGION", "us-east-1")  # botocore needs one to build the template
    command = [*CHALICE, "--project-dir", str(project_dir), "package", "--stage", stage,
               "--merge-template", str(merge), str(out_dir)]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise PackageError(f"chalice package failed:\n{output[-3000:]}")
    # Chalice only warns, and carries on without them.
    if "Could not install dependencies" in output:
        raise PackageError(f"chalice package could not vendor every dependency:\n{output}")
    template_path = out_dir / "sam.json"
    template = json.loads(template_path.read_text())
    _check_merged(template)
    if not policies.substitute_pseudo_parameters(template):
        raise PackageError("no role policy in the template names ${AWS::AccountId} or "
                           "${AWS::Region}: did Chalice read the rendered policy files?")
    template_path.write_text(json.dumps(template, indent=2) + "\n")
    return template_path


def _check_merged(template: dict) -> None:
    untyped = [name for name, resource in template["Resources"].items() if "Type" not in resource]
    if untyped:
        raise PackageError(f"the merge template overrode {untyped}, which Chalice's template "
                           "does not have (renamed handler?); see infra/package.py")


def lint(template_path: Path) -> str:
    """cfn-lint's findings ('' when clean)."""
    result = subprocess.run([*CFN_LINT, str(template_path)], capture_output=True, text=True)
    return (result.stdout + result.stderr).strip() if result.returncode else ""


def unzipped_bytes(zip_path: Path) -> int:
    with zipfile.ZipFile(zip_path) as archive:
        return sum(info.file_size for info in archive.infolist())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", default="dev")
    parser.add_argument("--out", type=Path, help="default: dist/package/<stage>")
    parser.add_argument("--allow-open-api", action="store_true",
                        help="package a stage that does not require API keys")
    args = parser.parse_args()
    if args.allow_open_api:
        secrets.warn_open_api(args.stage)
    try:
        template = package(args.stage, args.out, allow_open_api=args.allow_open_api)
    except PackageError as error:
        raise SystemExit(str(error)) from None
    findings = lint(template)
    if findings:
        raise SystemExit(f"cfn-lint found problems in {template}:\n{findings}")
    app_zip = template.parent / "deployment.zip"
    print(f"{template} (cfn-lint: clean)\n{app_zip}: {app_zip.stat().st_size / MB:.1f} MB "
          f"zipped, {unzipped_bytes(app_zip) / MB:.1f} MB unzipped")
    print("deploy it with the AWS CLI (see README, 'Deploy with CloudFormation').")


if __name__ == "__main__":
    main()
