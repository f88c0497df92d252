"""Each Lambda function's IAM policy: only what that function does, on one
stage's resources, in one account and region.

infra/policies.json holds one policy per function of app.py (api_handler,
train_model, api_key_authorizer) with placeholders: the stage's names, as in
infra/resources.json, the S3 key prefixes of chalicelib.storage, and
{{ACCOUNT_ID}}, {{REGION}} and {{PARTITION}}. Chalice deploys a policy file as
it is (.chalice/config.json names one per function and stage) and a file
cannot hold CloudFormation's pseudo-parameters, so the files are rendered
where the account is known:

- `make deploy` (infra.deploy) renders them for the account and region it
  deploys to, just before `chalice deploy`;
- `make package` (infra.package) renders them with ${AWS::AccountId},
  ${AWS::Region} and ${AWS::Partition}, and turns every such string in the
  template's role policies into an Fn::Sub, which CloudFormation resolves
  for the stack.

The rendered files (.chalice/policy-<stage>-<function>.json) hold an account
id and are not kept in git. tests/deploy/test_policy.py runs each function
and checks every AWS call it makes against its own policy.

    python -m infra.policies --stage prod --account 123456789012 --region eu-west-1
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from chalicelib import registry, storage
from devstack import stage as stages
from infra import definition

PROJECT_DIR = Path(__file__).resolve().parent.parent
POLICIES_PATH = Path(__file__).resolve().with_name("policies.json")
API_FUNCTION = "api_handler"
# What CloudFormation fills in for the stack (infra.package).
CLOUDFORMATION = {"account": "${AWS::AccountId}", "region": "${AWS::Region}",
                  "partition": "${AWS::Partition}"}


class PolicyError(ValueError):
    pass


def functions(path: Path = POLICIES_PATH) -> list[str]:
    return list(json.loads(path.read_text()))


def function_name(stage: str, function: str, app_name: str = "ml-api") -> str:
    """The Lambda function's name as Chalice deploys it: the API handler is
    <app>-<stage>, every other function <app>-<stage>-<function>."""
    base = f"{app_name}-{stage}"
    return base if function == API_FUNCTION else f"{base}-{function}"


def _config(project_dir: Path) -> dict:
    return json.loads((project_dir / ".chalice" / "config.json").read_text())


def variables(stage: str, function: str, *, account: str, region: str,
              partition: str = "aws", project_dir: Path = PROJECT_DIR) -> dict[str, Any]:
    settings = stages.deployed_settings(stage)
    env = stages.stage_environment(stage)
    return {
        **definition.variables(settings),
        "ACCOUNT_ID": account, "REGION": region, "PARTITION": partition,
        "DATASETS_PREFIX": storage.DATASETS_PREFIX, "MODELS_PREFIX": storage.MODELS_PREFIX,
        "UPLOADS_PREFIX": storage.UPLOADS_PREFIX, "LISTING_INDEX": registry.LISTING_INDEX,
        # A parameter the stage does not name is granted to nobody (see render()).
        "MODEL_SIGNING_KEY_PARAMETER": env.get("MODEL_SIGNING_KEY_PARAMETER"),
        "API_KEYS_PARAMETER": env.get("API_KEYS_PARAMETER"),
        "LOG_GROUP": "/aws/lambda/" + function_name(stage, function,
                                                    _config(project_dir)["app_name"]),
    }


def render(stage: str, *, account: str, region: str, partition: str = "aws",
           project_dir: Path = PROJECT_DIR, path: Path = POLICIES_PATH) -> dict[str, dict]:
    """function -> its policy document, for `stage` in `account` and `region`."""
    documents = {}
    for function, statements in json.loads(path.read_text()).items():
        names = variables(stage, function, account=account, region=region,
                          partition=partition, project_dir=project_dir)
        present = {name: value for name, value in names.items() if value is not None}
        kept = []
        for statement in statements:
            statement = dict(statement)
            # Resources naming a parameter this stage does not have are left out.
            statement["Resource"] = [
                definition.fill(resource, present, f"{path.name}.{function}")
                for resource in statement["Resource"]
                if not any("{{%s}}" % name in resource
                           for name, value in names.items() if value is None)]
            if statement["Resource"]:
                kept.append(statement)
        documents[function] = {"Version": "2012-10-17", "Statement": kept}
    return documents


def policy_file(stage: str, function: str, project_dir: Path = PROJECT_DIR) -> Path:
    """The file .chalice/config.json gives `function` in `stage`."""
    stage_config = _config(project_dir)["stages"][stage]
    name = stage_config.get("lambda_functions", {}).get(function, {}).get("iam_policy_file")
    if not name:
        raise PolicyError(f".chalice/config.json: stage {stage} gives {function} no "
                          "iam_policy_file; every function needs its own")
    return project_dir / ".chalice" / name


def write(stage: str, *, account: str, region: str, partition: str = "aws",
          project_dir: Path = PROJECT_DIR) -> list[Path]:
    """Renders the stage's policies into the files Chalice reads; their paths."""
    written = []
    for function, document in render(stage, account=account, region=region,
                                     partition=partition, project_dir=project_dir).items():
        target = policy_file(stage, function, project_dir)
        target.write_text(json.dumps(document, indent=2) + "\n")
        written.append(target)
    return written


def substitute_pseudo_parameters(template: dict) -> int:
    """In a `chalice package` template rendered with CLOUDFORMATION: makes every
    string of the roles' policies that holds ${AWS::...} an Fn::Sub. Returns
    how many it changed."""
    changed = 0

    def visit(value: Any) -> Any:
        nonlocal changed
        if isinstance(value, dict):
            return {key: visit(item) for key, item in value.items()}
        if isinstance(value, list):
            return [visit(item) for item in value]
        if isinstance(value, str) and "${AWS::" in value:
            changed += 1
            return {"Fn::Sub": value}
        return value

    for resource in template.get("Resources", {}).values():
        if resource.get("Type") == "AWS::IAM::Role":
            properties = resource.get("Properties", {})
            properties["Policies"] = visit(properties.get("Policies", []))
    return changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", default="dev")
    parser.add_argument("--account", required=True, help="the 12-digit AWS account id")
    parser.add_argument("--region", required=True)
    parser.add_argument("--partition", default="aws")
    args = parser.parse_args()
    for path in write(args.stage, account=args.account, region=args.region,
                      partition=args.partition):
        print(path.relative_to(PROJECT_DIR))


if __name__ == "__main__":
    main()
