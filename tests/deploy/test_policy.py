"""Least privilege: each stage's policy grants what the shipped code calls
(found by reading app.py and chalicelib/, infra/iam.py) plus what Lambda does
on the functions' behalf, on that stage's resources only, and nothing else."""
import json

import pytest

from chalicelib.storage import artifact_key, dataset_key, upload_key
from devstack import stage
from infra import iam

CONFIG = json.loads((stage.PROJECT_DIR / ".chalice" / "config.json").read_text())
STAGES = sorted(CONFIG["stages"])


def _policy(stage_name: str) -> dict:
    name = CONFIG["stages"][stage_name]["iam_policy_file"]
    return json.loads((stage.PROJECT_DIR / ".chalice" / name).read_text())


def _grants(stage_name: str) -> dict[str, set[str]]:
    """action -> resources it is allowed on."""
    grants: dict[str, set[str]] = {}
    for statement in _policy(stage_name)["Statement"]:
        assert statement["Effect"] == "Allow"
        assert set(statement) <= {"Sid", "Effect", "Action", "Resource"}, statement
        for action in statement["Action"]:
            grants.setdefault(action, set()).update(statement["Resource"])
    return grants


def _allowed_resources(stage_name: str) -> dict[str, set[str]]:
    """IAM prefix -> the ARNs this stage's code may touch."""
    settings = stage.deployed_settings(stage_name)
    env = stage.stage_environment(stage_name)
    prefixes = {dataset_key("m").split("/")[0], artifact_key("m", "a").split("/")[0],
                upload_key("u").split("/")[0]}
    functions = f"/aws/lambda/{CONFIG['app_name']}-{stage_name}"
    return {
        "s3": {f"arn:aws:s3:::{settings.bucket}"}
              | {f"arn:aws:s3:::{settings.bucket}/{prefix}/*" for prefix in prefixes},
        "dynamodb": {f"arn:aws:dynamodb:*:*:table/{settings.table}",
                     f"arn:aws:dynamodb:*:*:table/{settings.table}/index/by_created"},
        "sqs": {f"arn:aws:sqs:*:*:{settings.queue}"},
        "ssm": {f"arn:aws:ssm:*:*:parameter/ml-api/{stage_name}/*"},
        "logs": {f"arn:aws:logs:*:*:log-group:{functions}",
                 f"arn:aws:logs:*:*:log-group:{functions}:*",
                 f"arn:aws:logs:*:*:log-group:{functions}-*"},
        "_parameters": {v for k, v in env.items() if k.endswith("_PARAMETER")},
    }


def test_every_stage_uses_its_own_policy_file_not_the_generated_one():
    assert CONFIG["autogen_policy"] is False
    files = [CONFIG["stages"][s]["iam_policy_file"] for s in STAGES]
    assert files == [f"policy-{s}.json" for s in STAGES]
    for function in CONFIG.get("lambda_functions", {}).values():
        assert "iam_policy_file" not in function and "autogen_policy" not in function


def test_the_scan_finds_the_calls_the_code_makes():
    required = iam.required_actions()
    # A few that must be there; the full comparison is below.
    for action in ("s3:PutObject", "s3:GetObject", "dynamodb:UpdateItem", "sqs:SendMessage",
                   "ssm:GetParameter"):
        assert action in required, f"the scan missed {action}: {sorted(required)}"
    # Reading a missing artifact must give NoSuchKey, which needs ListBucket.
    assert "s3:ListBucket" in required


@pytest.mark.parametrize("stage_name", STAGES)
def test_policy_grants_every_action_the_code_needs(stage_name):
    grants = _grants(stage_name)
    needed = set(iam.required_actions()) | set(iam.RUNTIME_ACTIONS)
    missing = {action: [str(c) for c in iam.required_actions().get(action, [])]
               or iam.RUNTIME_ACTIONS[action] for action in needed - set(grants)}
    assert not missing, f"policy-{stage_name}.json lacks: {missing}"


@pytest.mark.parametrize("stage_name", STAGES)
def test_policy_grants_nothing_the_code_does_not_need(stage_name):
    needed = set(iam.required_actions()) | set(iam.RUNTIME_ACTIONS)
    extra = set(_grants(stage_name)) - needed
    assert not extra, (f"policy-{stage_name}.json grants {sorted(extra)}, which no call in "
                       "app.py/chalicelib/ needs (python -m infra.iam lists what is needed)")


@pytest.mark.parametrize("stage_name", STAGES)
def test_policy_names_only_the_stages_own_resources(stage_name):
    allowed = _allowed_resources(stage_name)
    bucket = stage.deployed_settings(stage_name).bucket
    for action, resources in _grants(stage_name).items():
        assert "*" not in action, f"wildcard action {action}"
        prefix = action.split(":")[0]
        for resource in resources:
            assert resource in allowed[prefix], (
                f"policy-{stage_name}.json: {action} on {resource}; this stage's {prefix} "
                f"resources are {sorted(allowed[prefix])}")
            if prefix == "s3":
                # ListBucket applies to the bucket, object actions to keys.
                assert (resource == f"arn:aws:s3:::{bucket}") == (action == "s3:ListBucket"), (
                    f"{action} on {resource}")


@pytest.mark.parametrize("stage_name", STAGES)
def test_the_ssm_grant_covers_the_stages_parameters(stage_name):
    parameters = _allowed_resources(stage_name)["_parameters"]
    assert parameters, "the stage names no SSM parameter"
    for parameter in parameters:
        assert parameter.startswith(f"/ml-api/{stage_name}/"), (
            f"{parameter} is outside arn:aws:ssm:*:*:parameter/ml-api/{stage_name}/*")


def test_an_unknown_boto3_call_would_be_caught(tmp_path):
    (tmp_path / "chalicelib").mkdir()
    (tmp_path / "app.py").write_text("")
    (tmp_path / "chalicelib" / "x.py").write_text(
        "def f(aws):\n"
        "    s3 = aws.client('s3')\n"
        "    s3.head_object(Bucket='b', Key='k')\n"
        "    aws.resource('dynamodb').Table('t').query(KeyConditionExpression='x')\n"
        "    registry.delete('m')  # the code's own method, not Table.delete\n")
    required = iam.required_actions(tmp_path)
    assert set(required) == {"s3:GetObject", "dynamodb:Query"}
    assert str(required["dynamodb:Query"][0]) == "chalicelib/x.py:4 .query()"
