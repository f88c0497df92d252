"""Least privilege, per function.

Each Lambda function of app.py has its own role, whose policy
(infra/policies.json, rendered by infra/policies.py) must allow what that
function does and nothing else, on its stage's resources only, in one
account and region.

Reading the code (infra/iam.py) finds every call site but not which function
makes it nor the keys it builds at run time. So each function is also run,
as in its own Lambda container, through every path that reaches AWS
(in-process moto, the prod stage's settings), with every botocore call and
presigned request recorded: the function, the operation, its parameters and
the line of chalicelib that made it. Each recorded request is then checked
against that function's own rendered policy with moto's IAM policy evaluator
(moto itself enforces no IAM), and every call site the scan finds must have
been reached by the run, so a new call cannot escape the check.
"""
from __future__ import annotations

import functools
import json
import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from chalice.test import Client
from moto import mock_aws
from moto.iam.access_control import IAMPolicy, PermissionResult

from chalicelib import aws, batches, components, storage
from chalicelib.config import Settings
from chalicelib.registry import ModelRegistry
from devstack import bootstrap, stage
from infra import iam, policies
from tests.conftest import IRIS
from tests.reliability import record

CONFIG = json.loads((stage.PROJECT_DIR / ".chalice" / "config.json").read_text())
STAGES = sorted(CONFIG["stages"])
PROJECT = stage.PROJECT_DIR
ACCOUNT = "123456789012"  # moto's account
REGION = "us-east-1"
API_KEY = "policy-test-key"


def _app_functions() -> list[str]:
    """The Lambda functions Chalice deploys for app.py."""
    from app import app
    return (["api_handler"] + [source.name for source in app.event_sources]
            + [auth.name for auth in app.builtin_auth_handlers]
            + [function.name for function in app.pure_lambda_functions])


def _sqs_triggered() -> set[str]:
    from chalice.app import SQSEventConfig

    from app import app
    return {source.name for source in app.event_sources if isinstance(source, SQSEventConfig)}


# --- the recorded run --------------------------------------------------------------

@dataclass(frozen=True)
class Request:
    """One AWS request a function made (or presigned for a client to make)."""
    function: str
    action: str
    resource: str
    site: str
    what: str

    def __str__(self) -> str:
        return f"{self.function}: {self.action} on {self.resource} ({self.what}, {self.site})"


def _arn(service: str, action: str, params: dict, region: str) -> str:
    if service == "s3":
        if action == "s3:ListBucket" or "Key" not in params:
            return f"arn:aws:s3:::{params['Bucket']}"
        return f"arn:aws:s3:::{params['Bucket']}/{params['Key']}"
    if service == "dynamodb":
        table = f"arn:aws:dynamodb:{region}:{ACCOUNT}:table/{params['TableName']}"
        return f"{table}/index/{params['IndexName']}" if "IndexName" in params else table
    if service == "sqs":
        name = params.get("QueueName") or params["QueueUrl"].rstrip("/").rsplit("/", 1)[1]
        return f"arn:aws:sqs:{region}:{ACCOUNT}:{name}"
    if service == "ssm":
        name = params["Name"]
        return f"arn:aws:ssm:{region}:{ACCOUNT}:parameter{'' if name.startswith('/') else '/'}{name}"
    raise AssertionError(f"test_policy.py does not know {service}'s ARNs: teach _arn()")


def _call_site() -> str:
    """The line of app.py or chalicelib/ that made the call."""
    frame = sys._getframe(2)
    while frame is not None:
        path = Path(frame.f_code.co_filename)
        if path == PROJECT / "app.py" or (PROJECT / "chalicelib") in path.parents:
            return f"{path.relative_to(PROJECT)}:{frame.f_lineno}"
        frame = frame.f_back
    return "?"


class Recorder:
    def __init__(self):
        self.requests: list[Request] = []
        self.function: str | None = None

    @contextmanager
    def acting_as(self, function: str):
        """Runs as `function` in a fresh container: nothing built by another
        function (clients, cached keys, models) is reused."""
        components.reset()
        self.function = function
        try:
            yield
        finally:
            self.function = None
            components.reset()

    def note(self, client, method: str, args: tuple, kwargs: dict) -> None:
        assert self.function, f"an AWS call outside any function: .{method}()"
        model = client.meta.service_model
        service = model.metadata.get("signingName") or model.metadata["endpointPrefix"]
        if method == "generate_presigned_url":
            client_method = args[0] if args else kwargs["ClientMethod"]
            operations = [client.meta.method_to_api_mapping[client_method]]
            params = kwargs.get("Params") or (args[1] if len(args) > 1 else {})
            what = f"presigned {client_method}"
        elif method == "generate_presigned_post":
            params = {"Bucket": kwargs.get("Bucket", args[0] if args else None),
                      "Key": kwargs.get("Key", args[1] if len(args) > 1 else None)}
            # S3 stores the form's object, and its tags if the form sets them.
            operations = ["PutObject"] + (["PutObjectTagging"]
                                          if "tagging" in (kwargs.get("Fields") or {}) else [])
            what = "presigned POST form"
        else:
            operations = [client.meta.method_to_api_mapping[method]]
            params = kwargs
            what = f".{method}()"
        region = client.meta.region_name
        for operation in operations:
            for action in iam.iam_actions(service, operation):
                self.requests.append(Request(self.function, action,
                                             _arn(service, action, params, region),
                                             _call_site(), what))


class RecordingClient:
    """A chalicelib client whose API calls and presigned requests are recorded."""

    def __init__(self, client, recorder: Recorder):
        self._client, self._recorder = client, recorder

    def __getattr__(self, name: str):
        attribute = getattr(self._client, name)
        if name not in ("generate_presigned_url", "generate_presigned_post") \
                and name not in self._client.meta.method_to_api_mapping:
            return attribute

        def call(*args, **kwargs):
            self._recorder.note(self._client, name, args, kwargs)
            return attribute(*args, **kwargs)
        return call


def _policy_drive(recorder: Recorder, session) -> dict:
    """Every function through every path that reaches AWS. Returns what the
    run saw, for the report."""
    from app import app

    settings = components.settings()
    s3 = session.client("s3")  # the user's side: not recorded
    headers = {"X-Api-Key": API_KEY}
    csv, as_json = {**headers, "Content-Type": "text/csv"}, {**headers,
                                                            "Content-Type": "application/json"}
    client = Client(app, stage_name="prod", project_dir=str(PROJECT))
    seen = {}

    def api(method, path, **kwargs):
        with recorder.acting_as("api_handler"):
            return client.http.request(method, path, **kwargs)

    def train_queued():
        sqs = session.client("sqs")
        url = sqs.get_queue_url(QueueName=settings.queue)["QueueUrl"]
        bodies = []
        while True:
            batch = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
            if not batch:
                return bodies
            for message in batch:
                bodies.append(message["Body"])
                event = client.events.generate_sqs_event(queue_name=settings.queue,
                                                         message_bodies=[message["Body"]])
                with recorder.acting_as("train_model"):
                    client.lambda_.invoke("train_model", event)
                sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])

    # The authorizer API Gateway runs before the routes (prod).
    with recorder.acting_as("api_key_authorizer"):
        answer = client.lambda_.invoke("api_key_authorizer", {
            "type": "TOKEN", "authorizationToken": API_KEY,
            "methodArn": f"arn:aws:execute-api:{REGION}:{ACCOUNT}:abc/api/GET/models"}).payload
    seen["authorizer"] = answer["policyDocument"]["Statement"][0]["Effect"]

    # Submit CSV; an upload (sent, claimed, trained); an upload never sent.
    iris = api("POST", "/models", headers=csv, body=IRIS).json_body["model_id"]
    form = api("POST", "/uploads", headers=headers).json_body
    s3.put_object(Bucket=settings.bucket, Key=form["fields"]["key"], Body=IRIS,
                  Tagging=f"{storage.UPLOAD_STATE_TAG}={storage.UNCLAIMED}")
    uploaded = api("POST", "/models", headers=as_json,
                   body=json.dumps({"upload_id": form["upload_id"]}).encode()).json_body["model_id"]
    missing = api("POST", "/uploads", headers=headers).json_body["upload_id"]
    never = api("POST", "/models", headers=as_json,
                body=json.dumps({"upload_id": missing}).encode()).json_body["model_id"]
    seen["trained"] = len(train_queued())

    # Read, predict (the first load reads serving.npz from S3), link, list.
    registry = session.client("dynamodb")
    registry.update_item(TableName=settings.table, Key={"model_id": {"S": iris}},
                         UpdateExpression="REMOVE serving, serving_hmac")
    statuses = {model: api("GET", f"/check_model_status/{model}", headers=headers).json_body
                ["status"] for model in (iris, uploaded, never)}
    seen["statuses"] = sorted(statuses.values())
    assert api("POST", f"/models/{iris}", headers=csv, body=b"6.9,3.1,5.1,2.3\n").status_code == 202
    assert api("POST", f"/models/{uploaded}", headers=csv,
               body=b"6.9,3.1,5.1,2.3\n").status_code == 202
    assert "url" in api("GET", f"/models/{iris}/artifact", headers=headers).json_body
    assert api("GET", "/models", headers=headers).status_code == 200

    # Batches. A posted one, run to Done a part per invocation (each hands off
    # to a continuation message), its status with the results' link, then
    # deleted; one from an upload with a bad row (Failed), removed with its
    # model below; one whose item is deleted just as it completes.
    features = b"".join(line.rsplit(b",", 1)[0] + b"\n" for line in IRIS.splitlines() if line)

    def run_batches():
        said = []
        url = sqs.get_queue_url(QueueName=settings.batch_queue)["QueueUrl"]
        while True:
            messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get(
                "Messages", [])
            if not messages:
                return said
            for message in messages:
                event = client.events.generate_sqs_event(queue_name=settings.batch_queue,
                                                         message_bodies=[message["Body"]])
                with recorder.acting_as("run_batch"):
                    said.append(client.lambda_.invoke("run_batch", event).payload)
                sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])

    def batch(model, **kwargs):
        return api("POST", f"/models/{model}/batches", **kwargs).json_body["batch_id"]

    sqs = session.client("sqs")
    posted = batch(iris, headers=csv, body=features * 20)
    upload = api("POST", "/uploads", headers=headers).json_body
    s3.put_object(Bucket=settings.bucket, Key=upload["fields"]["key"],
                  Body=features + b"1,2,x,4\n", Tagging=f"{storage.UPLOAD_STATE_TAG}=claimed")
    bad = batch(uploaded, headers=as_json,
                body=json.dumps({"upload_id": upload["upload_id"]}).encode())
    vanishing = batch(iris, headers=csv, body=features)
    real_finish = batches.BatchTable.finish

    def deleted_meanwhile(self, batch_id, *args, **kwargs):
        if batch_id == vanishing:  # as a DELETE /batches/{id} at that moment would
            session.client("dynamodb").delete_item(TableName=settings.batches_table,
                                                   Key={"batch_id": {"S": vanishing}})
            s3.delete_object(Bucket=settings.bucket, Key=storage.batch_input_key(vanishing))
        return real_finish(self, batch_id, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("chalicelib.csvdata.CHUNK_BYTES", 1024)
        patch.setattr(batches, "MIN_PART_BYTES", 1)
        patch.setattr(batches, "HANDOFF_SECONDS", 10**6)  # every part hands off
        patch.setattr("moto.s3.models.S3_UPLOAD_PART_MIN_SIZE", 1)
        patch.setattr(batches.BatchTable, "finish", deleted_meanwhile)
        seen["batch_runs"] = len(run_batches())
    seen["batches"] = [api("GET", f"/batches/{one}", headers=headers).json_body["status"]
                       for one in (posted, bad)]
    assert api("GET", f"/batches/{vanishing}", headers=headers).status_code == 404
    assert "result_url" in api("GET", f"/batches/{posted}", headers=headers).json_body
    assert api("DELETE", f"/batches/{posted}", headers=headers).status_code == 204

    # Expiry. A model deleted while it trains: the trainer removes what it wrote.
    # A DELETE of an expired model finishes the job. The sweep removes another
    # expired model, a dataset whose item is gone, and an upload no model names.
    def expire(model):
        registry.update_item(TableName=settings.table, Key={"model_id": {"S": model}},
                             UpdateExpression="SET expires_at = :past",
                             ExpressionAttributeValues={":past": {"N": "1"}})

    short, swept, doomed = (api("POST", "/models?ttl_hours=1", headers=csv, body=IRIS)
                            .json_body["model_id"] for _ in range(3))
    real_mark_ready = ModelRegistry.mark_ready

    def deleted_meanwhile(self, model_id, *args, **kwargs):
        if model_id == doomed:
            registry.delete_item(TableName=settings.table, Key={"model_id": {"S": doomed}})
        return real_mark_ready(self, model_id, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ModelRegistry, "mark_ready", deleted_meanwhile)
        seen["expiry_trained"] = len(train_queued())
    # A batch of the model the sweep removes, stopped part-way (its parts are dropped).
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("chalicelib.csvdata.CHUNK_BYTES", 1024)
        patch.setattr(batches, "MIN_PART_BYTES", 1)
        patch.setattr(batches, "HANDOFF_SECONDS", 10**6)
        batch(swept, headers=csv, body=features * 5)
        url = sqs.get_queue_url(QueueName=settings.batch_queue)["QueueUrl"]
        [message] = sqs.receive_message(QueueUrl=url).get("Messages", [])
        event = client.events.generate_sqs_event(queue_name=settings.batch_queue,
                                                 message_bodies=[message["Body"]])
        with recorder.acting_as("run_batch"):
            client.lambda_.invoke("run_batch", event)
        sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    for model in (short, swept):
        expire(model)
    seen["expired_delete"] = api("DELETE", f"/models/{short}", headers=headers).status_code
    s3.put_object(Bucket=settings.bucket, Key=storage.dataset_key("model_orphaned"), Body=IRIS)
    s3.put_object(Bucket=settings.bucket, Key=storage.upload_key("upload_" + "0" * 24), Body=IRIS)
    with recorder.acting_as("sweep_expired"):
        client.lambda_.invoke("sweep_expired", client.events.generate_cw_event(
            source="aws.events", detail_type="Scheduled Event", detail={},
            resources=[f"arn:aws:events:{REGION}:{ACCOUNT}:rule/sweep"], region=REGION))
    seen["batch_of_a_swept_model"] = run_batches()  # its continuation finds no batch
    seen["expired_left"] = sorted(
        entry["Key"] for entry in s3.list_objects_v2(Bucket=settings.bucket).get("Contents", [])
        if any(name in entry["Key"] for name in (short, swept, doomed, "model_orphaned",
                                                 "upload_" + "0" * 24)))

    # Delete a model trained from an upload, and one from posted CSV.
    for model in (uploaded, iris, never):
        assert api("DELETE", f"/models/{model}", headers=headers).status_code == 204

    # A submission that fails after storing its dataset is undone.
    queue_url = sqs.get_queue_url(QueueName=settings.queue)["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])
    sqs.delete_queue(QueueUrl=queue_url)
    seen["undone"] = api("POST", "/models", headers=csv, body=IRIS).status_code
    sqs.create_queue(QueueName=settings.queue, Attributes={
        name: value for name, value in attributes["Attributes"].items()
        if name in ("VisibilityTimeout", "RedrivePolicy")})
    left = [entry["Key"] for entry in s3.list_objects_v2(Bucket=settings.bucket).get(
        "Contents", [])]
    seen["objects_left"] = left
    return seen


@pytest.fixture(scope="module")
def drive():
    """The recorded run, once for the module: (requests, what it saw)."""
    recorder = Recorder()
    environment = {**stage.stage_environment("prod"), "REQUIRE_API_KEY": "true",
                   # The sweep removes orphans and stray uploads at once.
                   "ORPHAN_GRACE_SECONDS": "0", "UPLOAD_RETENTION_SECONDS": "0",
                   "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                   "AWS_DEFAULT_REGION": REGION}
    original_client = aws.client

    @functools.cache
    def recording_client(service):
        return RecordingClient(original_client(service), recorder)

    with pytest.MonkeyPatch.context() as patch, mock_aws():
        patch.delenv("AWS_ENDPOINT_URL", raising=False)
        patch.delenv("MODEL_SIGNING_KEY", raising=False)
        patch.delenv("API_KEYS", raising=False)
        for name, value in environment.items():
            patch.setenv(name, value)
        patch.setattr(aws, "client", recording_client)
        patch.setattr(aws, "slow_client", recording_client)
        components.reset()
        session = boto3.session.Session()
        bootstrap.bootstrap(session, Settings.from_env(), visibility_timeout=30)
        ssm = session.client("ssm")
        ssm.put_parameter(Name=environment["API_KEYS_PARAMETER"], Type="SecureString",
                          Value=API_KEY)
        ssm.put_parameter(Name=environment["MODEL_SIGNING_KEY_PARAMETER"], Type="SecureString",
                          Value="policy-test-signing-key-0123456789")
        try:
            seen = _policy_drive(recorder, session)
        finally:
            components.reset()
    return recorder.requests, seen


def _rendered(stage_name: str = "prod") -> dict[str, dict]:
    return policies.render(stage_name, account=ACCOUNT, region=REGION)


# --- the checks ------------------------------------------------------------------------

def test_the_run_went_through_every_path(drive):
    requests, seen = drive
    assert seen["authorizer"] == "Allow"
    assert seen["trained"] == 3
    assert seen["statuses"] == ["Ready to Use", "Ready to Use", "Training Failed"]
    assert seen["undone"] == 503 and seen["objects_left"] == []
    assert seen["expiry_trained"] == 3 and seen["expired_delete"] == 204
    assert seen["batches"] == ["Done", "Failed"] and seen["batch_runs"] > 4
    assert seen["batch_of_a_swept_model"] == [None]
    assert seen["expired_left"] == []
    assert {request.function for request in requests} == set(_app_functions())


def test_every_call_site_in_the_code_was_run(drive):
    """The scan's call sites, each reached by some function in the run: a new
    AWS call needs a path in _policy_drive before it can pass."""
    requests, _ = drive
    reached = {request.site for request in requests}
    missed = [str(call) for call in iam.call_sites() if f"{call.path}:{call.line}" not in reached]
    assert not missed, f"never run, so never checked against a policy: {missed}"


def test_each_function_is_allowed_every_request_it_makes(drive):
    requests, _ = drive
    documents = _rendered()
    denied = [str(request) for request in requests
              if IAMPolicy(json.dumps(documents[request.function])).is_action_permitted(
                  request.action, request.resource) != PermissionResult.PERMITTED]
    by_function = {function: sum(r.function == function for r in requests)
                   for function in documents}
    record("Security: AWS rules", "IAM, per function",
           "ran each Lambda function through every path that reaches AWS (submit, upload form, "
           "claim, train, predict, link, list, delete, undone submission, authorizer, expired "
           "DELETE, the expiry sweep, a model deleted while it trained; batches submitted, "
           "run in parts with continuations, failed on a bad row, deleted alone, with their "
           "model and by the sweep) and "
           "checked each request, presigned ones and run-time keys included, against that "
           "function's own policy",
           len(requests), f"{len(requests) - len(denied)} allowed, {len(denied)} denied; "
           + ", ".join(f"{function} {count}" for function, count in by_function.items()))
    assert not denied, "denied by the function's own policy:\n" + "\n".join(denied)


def _statement_grants(document: dict):
    for statement in document["Statement"]:
        for action in statement["Action"]:
            for resource in statement["Resource"]:
                yield statement["Sid"], action, resource


def test_each_function_is_granted_nothing_it_does_not_use(drive):
    """Every action on every resource pattern of a function's policy is used
    by that function in the run, or by Lambda on its behalf (logs; the SQS
    event source of an SQS-triggered function)."""
    requests, _ = drive
    triggered = _sqs_triggered()
    unused = []
    for function, document in _rendered().items():
        runtime = set(iam.LOG_ACTIONS) | (set(iam.SQS_EVENT_SOURCE_ACTIONS)
                                          if function in triggered else set())
        for sid, action, pattern in _statement_grants(document):
            if action in runtime:
                continue
            grant = IAMPolicy(json.dumps({"Statement": [
                {"Effect": "Allow", "Action": action, "Resource": pattern}]}))
            if not any(request.function == function and grant.is_action_permitted(
                    request.action, request.resource) == PermissionResult.PERMITTED
                    for request in requests):
                unused.append(f"{function} {sid}: {action} on {pattern}")
    assert not unused, "granted but never used:\n" + "\n".join(unused)


def test_runtime_grants_go_to_the_functions_lambda_acts_for():
    triggered = _sqs_triggered()
    for function, document in _rendered().items():
        actions = {action for _, action, _ in _statement_grants(document)}
        assert set(iam.LOG_ACTIONS) <= actions, function
        assert (set(iam.SQS_EVENT_SOURCE_ACTIONS) <= actions) == (function in triggered), function
        assert not (set(iam.SQS_EVENT_SOURCE_ACTIONS) & actions) or function in triggered


def test_every_function_has_its_own_policy_file_in_every_stage():
    assert CONFIG["autogen_policy"] is False
    assert set(policies.functions()) == set(_app_functions()), (
        "infra/policies.json must hold one policy per Lambda function of app.py")
    for stage_name in STAGES:
        stage_config = CONFIG["stages"][stage_name]
        assert "iam_policy_file" not in stage_config, "one policy for all functions"
        files = [policies.policy_file(stage_name, function).name
                 for function in _app_functions()]
        assert files == [f"policy-{stage_name}-{function}.json" for function in _app_functions()]
    for function in CONFIG.get("lambda_functions", {}).values():
        assert "iam_policy_file" not in function and "autogen_policy" not in function


_ARN = re.compile(r"arn:(?P<partition>[^:]+):(?P<service>[^:]+):(?P<region>[^:]*):"
                  r"(?P<account>[^:]*):(?P<resource>.+)")


@pytest.mark.parametrize("stage_name", STAGES)
def test_arns_name_the_account_region_and_the_stages_own_resources(stage_name):
    settings = stage.deployed_settings(stage_name)
    env = stage.stage_environment(stage_name)
    names = {"s3": settings.bucket,
             "dynamodb": (f"table/{settings.table}", f"table/{settings.batches_table}"),
             "sqs": (settings.queue, settings.batch_queue),
             "ssm": f"parameter/ml-api/{stage_name}/",
             "logs": f"log-group:/aws/lambda/ml-api-{stage_name}"}
    checked = 0
    for function, document in policies.render(stage_name, account="111122223333",
                                              region="eu-west-3").items():
        for sid, action, resource in _statement_grants(document):
            assert "*" not in action, f"wildcard action {action}"
            arn = _ARN.fullmatch(resource)
            assert arn, resource
            service = arn["service"]
            if service == "s3":  # S3 ARNs carry neither region nor account
                assert (arn["region"], arn["account"]) == ("", "")
            else:
                assert (arn["region"], arn["account"]) == ("eu-west-3", "111122223333"), resource
            own = names[service] if isinstance(names[service], tuple) else (names[service],)
            assert arn["resource"].startswith(own), (function, sid, resource)
            if service == "sqs":
                assert arn["resource"] in own, (function, sid, resource)
            if service == "logs":
                group = "/aws/lambda/" + policies.function_name(stage_name, function)
                assert arn["resource"] in (f"log-group:{group}", f"log-group:{group}:*")
            if service == "ssm":
                assert arn["resource"].removeprefix("parameter") in (
                    env.get("API_KEYS_PARAMETER"), env.get("MODEL_SIGNING_KEY_PARAMETER"))
            checked += 1
    assert checked > 20


def test_the_scan_finds_the_calls_the_code_makes():
    required = iam.required_actions()
    for action in ("s3:PutObject", "s3:GetObject", "dynamodb:UpdateItem", "sqs:SendMessage",
                   "ssm:GetParameter", "s3:PutObjectTagging"):
        assert action in required, f"the scan missed {action}: {sorted(required)}"
    assert "s3:ListBucket" in required  # a missing key is NoSuchKey, not AccessDenied
    presigned = {str(call) for call in iam.call_sites() if call.presigned}
    assert any("presigned get_object" in call for call in presigned), presigned
    assert any("presigned put_object" in call for call in presigned), presigned


def test_every_action_the_scan_finds_is_granted_to_some_function():
    granted = {action for document in _rendered().values()
               for _, action, _ in _statement_grants(document)}
    missing = {action: [str(call) for call in calls]
               for action, calls in iam.required_actions().items() if action not in granted}
    assert not missing, f"no function's policy grants: {missing}"


def test_an_unknown_boto3_call_would_be_caught(tmp_path):
    (tmp_path / "chalicelib").mkdir()
    (tmp_path / "app.py").write_text("")
    (tmp_path / "chalicelib" / "x.py").write_text(
        "def f(aws):\n"
        "    s3 = aws.client('s3')\n"
        "    s3.head_object(Bucket='b', Key='k')\n"
        "    aws.resource('dynamodb').Table('t').query(KeyConditionExpression='x')\n"
        "    registry.delete('m')  # the code's own method, not Table.delete\n"
        "    s3.generate_presigned_url('delete_object', Params={'Bucket': 'b', 'Key': 'k'})\n"
        "    s3.generate_presigned_post('b', 'k')\n")
    required = iam.required_actions(tmp_path)
    assert set(required) == {"s3:GetObject", "dynamodb:Query", "s3:DeleteObject",
                             "s3:PutObject"}
    assert str(required["dynamodb:Query"][0]) == "chalicelib/x.py:4 .query()"
    assert str(required["s3:DeleteObject"][0]) == "chalicelib/x.py:6 presigned delete_object"
    assert str(required["s3:PutObject"][0]) == "chalicelib/x.py:7 presigned put_object"
    (tmp_path / "chalicelib" / "y.py").write_text(
        "def g(s3, method):\n    s3.generate_presigned_url(method)\n")
    with pytest.raises(iam.AmbiguousCall, match="not a string literal"):
        iam.required_actions(tmp_path)


def test_the_old_shared_policy_would_fail_the_per_function_check():
    """The policy every function shared before (S3 on datasets/ and models/
    only): the trainer's read of an upload is denied under it."""
    shared = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject"],
         "Resource": ["arn:aws:s3:::ml-api-prod-models/datasets/*",
                      "arn:aws:s3:::ml-api-prod-models/models/*"]}]}
    upload = f"arn:aws:s3:::ml-api-prod-models/{storage.upload_key('upload_' + '0' * 24)}"
    assert IAMPolicy(json.dumps(shared)).is_action_permitted(
        "s3:GetObject", upload) != PermissionResult.PERMITTED
    assert IAMPolicy(json.dumps(_rendered()["train_model"])).is_action_permitted(
        "s3:GetObject", upload) == PermissionResult.PERMITTED
