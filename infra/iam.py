"""Which IAM actions the shipped code needs, found by reading it.

The functions' policies (infra/policies.json, one per function, autogen_policy
off) must grant these between them, plus what Lambda itself does on the
functions' behalf (RUNTIME_ACTIONS). tests/deploy/test_policy.py compares the
two both ways, and runs each function to check every call it really makes
(with the keys it builds at run time) against that function's own policy.

The scan: every `client("x")` / `resource("x")` in app.py and chalicelib/
names a service; every call `<anything>.<method>(...)` whose method is an
operation of one of those services (or a multi-word action of its boto3
resources, e.g. Table.put_item) is an API call. Clients are injected across
modules, so calls are not tied to a particular variable; a method name that
two services in use share is reported as ambiguous rather than guessed.
Presigned requests count too: S3 serves them with the permissions of whoever
signed them, so `generate_presigned_url("get_object", ...)` needs
s3:GetObject and `generate_presigned_post(...)` s3:PutObject (and
s3:PutObjectTagging when its form sets tags, which only running it shows).

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
    # A multipart upload is PutObject's, but for its abort.
    "CreateMultipartUpload": ["s3:PutObject"],
    "UploadPart": ["s3:PutObject"],
    "CompleteMultipartUpload": ["s3:PutObject"],
    "AbortMultipartUpload": ["s3:AbortMultipartUpload"],
}

# Granted for Lambda's own use of a role, not for calls in the code: every
# function's logs, and the polling of a function with an SQS event source.
LOG_ACTIONS = {
    "logs:CreateLogGroup": "Lambda writes the function's logs",
    "logs:CreateLogStream": "Lambda writes the function's logs",
    "logs:PutLogEvents": "Lambda writes the function's logs",
}
SQS_EVENT_SOURCE_ACTIONS = {
    "sqs:ReceiveMessage": "the SQS event source mapping polls the queue",
    "sqs:DeleteMessage": "the event source mapping deletes a message the function handled",
    "sqs:GetQueueAttributes": "the event source mapping reads the queue's settings",
}
RUNTIME_ACTIONS = {**SQS_EVENT_SOURCE_ACTIONS, **LOG_ACTIONS}


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    line: int
    presigned: bool = False

    def __str__(self) -> str:
        what = f"presigned {self.method}" if self.presigned else f".{self.method}()"
        return f"{self.path}:{self.line} {what}"


# A presigned POST is an S3 PutObject sent by the browser or the CLI.
PRESIGNED_POST_METHOD = "put_object"


def _presigned_method(node: ast.Call, where: str) -> str:
    """The client method a generate_presigned_url call presigns."""
    argument = node.args[0] if node.args else next(
        (keyword.value for keyword in node.keywords if keyword.arg == "ClientMethod"), None)
    if not (isinstance(argument, ast.Constant) and isinstance(argument.value, str)):
        raise AmbiguousCall(f"{where}: generate_presigned_url's ClientMethod is not a "
                            "string literal; infra/iam.py cannot tell what it presigns")
    return argument.value


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
                where = str(path.relative_to(project_dir))
                if node.func.attr == "generate_presigned_url":
                    method = _presigned_method(node, f"{where}:{node.lineno}")
                    calls.append(Call(method, where, node.lineno, presigned=True))
                elif node.func.attr == "generate_presigned_post":
                    calls.append(Call(PRESIGNED_POST_METHOD, where, node.lineno, presigned=True))
                else:
                    calls.append(Call(node.func.attr, where, node.lineno))
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


def iam_actions(prefix: str, operation: str) -> list[str]:
    """The IAM actions an API operation needs (prefix: the service's signing name)."""
    if prefix == "s3":
        return _S3_ACTIONS.get(operation, [f"s3:{operation}"])
    return [f"{prefix}:{operation}"]


class AmbiguousCall(ValueError):
    pass


def call_sites(project_dir: Path = PROJECT_DIR) -> list[Call]:
    """Every call in the shipped code that reaches AWS (the scan's findings)."""
    return sorted({call for calls in required_actions(project_dir).values() for call in calls},
                  key=lambda call: (call.path, call.line))


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
            for action in iam_actions(prefix, operation):
                actions[action].append(call)
    return dict(actions)


def main() -> None:
    for action, calls in sorted(required_actions().items()):
        print(f"{action:28} {', '.join(str(call) for call in calls)}")
    for action, why in sorted(RUNTIME_ACTIONS.items()):
        print(f"{action:28} ({why})")


if __name__ == "__main__":
    main()
