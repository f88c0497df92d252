"""Which IAM actions the shipped code needs, found by reading it.

The Lambda role's policy (.chalice/policy-<stage>.json, autogen_policy off)
must grant exactly these plus what Lambda itself does on the functions' behalf
(RUNTIME_ACTIONS). tests/deploy/test_policy.py compares the two both ways.

The scan: every `client("x")` / `resource("x")` in app.py and chalicelib/
names a service; every call `<anything>.<method>(...)` whose method is an
operation of one of those services (or a multi-word action of its boto3
resources, e.g. Table.put_item) is an API call. Clients are injected across
modules, so calls are not tied to a particular variable; a method name that
two services in use share is reported as ambiguous rather than guessed.

    python -m infra.iam        # prints the actions and where each is used
"""
from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import boto3
from boto3.resources.model import ResourceModel
from botocore import xform_name

PROJECT_DIR = Path(__file__).resolve().parent.parent

# API operations whose IAM action has another name, or which need a second one.
_S3_ACTIONS = {
    "HeadObject": ["s3:GetObject"],
    "HeadBucket": ["s3:ListBucket"],
    "ListObjects": ["s3:ListBucket"],
    "ListObjectsV2": ["s3:ListBucket"],
    "DeleteObjects": ["s3:DeleteObject"],
    "CopyObject": ["s3:GetObject", "s3:PutObject"],
    # Without s3:ListBucket a missing key answers 403 AccessDenied instead of
    # 404 NoSuchKey, and chalicelib.storage tells "no artifact" by NoSuchKey.
    "GetObject": ["s3:GetObject", "s3:ListBucket"],
}

# Granted for Lambda's own use of the role, not for calls in the code.
RUNTIME_ACTIONS = {
    "sqs:ReceiveMessage": "the SQS event source mapping polls the training queue",
    "sqs:DeleteMessage": "the event source mapping deletes a message the trainer handled",
    "sqs:GetQueueAttributes": "the event source mapping reads the queue's settings",
    "logs:CreateLogGroup": "Lambda writes the functions' logs",
    "logs:CreateLogStream": "Lambda writes the functions' logs",
    "logs:PutLogEvents": "Lambda writes the functions' logs",
}


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line} .{self.method}()"


def shipped_sources(project_dir: Path = PROJECT_DIR) -> list[Path]:
    """What Chalice puts in the deployment package: app.py and chalicelib/."""
    return [project_dir / "app.py", *sorted((project_dir / "chalicelib").rglob("*.py"))]


def _parse(paths: list[Path], project_dir: Path) -> tuple[set[tuple[str, str]], list[Call]]:
    services: set[tuple[str, str]] = set()
    calls: list[Call] = []
    for path in paths:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = (node.func.attr if isinstance(node.func, ast.Attribute)
                    else node.func.id if isinstance(node.func, ast.Name) else None)
            if (name in ("client", "resource") and node.args
                    and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)):
                services.add((name, node.args[0].value))
            if isinstance(node.func, ast.Attribute):
                calls.append(Call(node.func.attr, str(path.relative_to(project_dir)),
                                  node.lineno))
    return services, calls


def _operations(services: set[tuple[str, str]]) -> dict[str, set[tuple[str, str]]]:
    """method name -> {(IAM prefix, API operation)} for the services in use."""
    session = boto3.session.Session(region_name="us-east-1")
    methods: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for kind, service in sorted(services):
        model = session.client(service).meta.service_model
        prefix = model.metadata.get("signingName") or model.metadata["endpointPrefix"]
        for operation in model.operation_names:
            methods[xform_name(operation)].add((prefix, operation))
        if kind == "resource":
            for resource_model in _resource_models(session, service):
                for action in resource_model.actions:
                    # One-word actions (delete, update, load) are too generic
                    # to tell from the code's own methods of the same name.
                    if "_" in action.name:
                        methods[action.name].add((prefix, action.request.operation))
    return methods


def _resource_models(session: boto3.session.Session, service: str) -> list[ResourceModel]:
    """boto3's resource classes for a service (Table, Bucket, Queue, ...)."""
    loader = session._session.get_component("data_loader")
    resources = loader.load_service_model(service, "resources-1").get("resources", {})
    return [ResourceModel(name, spec, resources) for name, spec in resources.items()]


def _iam_actions(prefix: str, operation: str) -> list[str]:
    if prefix == "s3":
        return _S3_ACTIONS.get(operation, [f"s3:{operation}"])
    return [f"{prefix}:{operation}"]


class AmbiguousCall(ValueError):
    pass


def required_actions(project_dir: Path = PROJECT_DIR) -> dict[str, list[Call]]:
    """IAM action -> the calls in the shipped code that need it."""
    services, calls = _parse(shipped_sources(project_dir), project_dir)
    methods = _operations(services)
    actions: dict[str, list[Call]] = defaultdict(list)
    for call in calls:
        targets = methods.get(call.method)
        if not targets:
            continue
        if len({operation for _, operation in targets}) > 1:
            raise AmbiguousCall(f"{call}: {sorted(targets)} all have this method; "
                                "infra/iam.py cannot tell which one the code calls")
        for prefix, operation in targets:
            for action in _iam_actions(prefix, operation):
                actions[action].append(call)
    return dict(actions)


def main() -> None:
    for action, calls in sorted(required_actions().items()):
        print(f"{action:28} {', '.join(str(call) for call in calls)}")
    for action, why in sorted(RUNTIME_ACTIONS.items()):
        print(f"{action:28} ({why})")


if __name__ == "__main__":
    main()
