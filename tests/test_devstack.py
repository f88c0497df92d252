"""Local tooling: bootstrap, the SQS event-source runner, the interpreter finder."""
import json
import shutil
import subprocess
import threading

import pytest

from chalicelib import components
from devstack import bootstrap, stage
from devstack.sqs_runner import InProcess, SqsEventSourceRunner


def test_bootstrap_is_idempotent_and_wires_the_dead_letter_queue(aws):
    settings = components.settings()
    bootstrap.bootstrap(aws, settings, visibility_timeout=45)  # second run: no error
    sqs = aws.client("sqs")
    url = sqs.get_queue_url(QueueName=settings.queue)["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attributes["VisibilityTimeout"] == "45"
    policy = json.loads(attributes["RedrivePolicy"])
    assert policy["deadLetterTargetArn"].endswith(":" + settings.dead_letter_queue)
    assert int(policy["maxReceiveCount"]) == settings.max_receives == 3
    assert aws.client("dynamodb").describe_table(
        TableName=settings.table)["Table"]["TableStatus"] == "ACTIVE"
    block = aws.client("s3").get_public_access_block(Bucket=settings.bucket)
    assert all(block["PublicAccessBlockConfiguration"].values())


def _runner(aws, handler, visibility_timeout=30):
    sqs = aws.client("sqs")
    url = sqs.get_queue_url(QueueName=components.settings().queue)["QueueUrl"]
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"VisibilityTimeout": str(visibility_timeout)})
    return sqs, url, SqsEventSourceRunner(sqs, url, InProcess(handler), wait_seconds=0)


def _count(sqs, url):
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    return (int(attributes["ApproximateNumberOfMessages"])
            + int(attributes["ApproximateNumberOfMessagesNotVisible"]))


def test_runner_builds_the_lambda_event_and_deletes_on_success(aws):
    seen = []
    sqs, url, runner = _runner(aws, lambda event, context: seen.append((event, context)))
    sqs.send_message(QueueUrl=url, MessageBody='{"hello": 1}',
                     MessageAttributes={"kind": {"DataType": "String", "StringValue": "x"}})
    assert runner.poll_once() == 1
    [(event, context)] = seen
    [record] = event["Records"]
    assert record["body"] == '{"hello": 1}'
    assert record["eventSource"] == "aws:sqs"
    assert record["eventSourceARN"].endswith(":" + components.settings().queue)
    assert record["attributes"]["ApproximateReceiveCount"] == "1"
    assert record["messageAttributes"]["kind"]["stringValue"] == "x"
    assert {"messageId", "receiptHandle", "md5OfBody", "awsRegion"} <= set(record)
    assert context.get_remaining_time_in_millis() > 0
    assert _count(sqs, url) == 0


def test_failing_message_is_redelivered_then_dead_lettered(aws):
    receive_counts = []

    def failing(event, context):
        receive_counts.append(event["Records"][0]["attributes"]["ApproximateReceiveCount"])
        raise RuntimeError("boom")

    sqs, url, runner = _runner(aws, failing, visibility_timeout=0)
    sqs.send_message(QueueUrl=url, MessageBody="{}")
    for _ in range(5):
        runner.poll_once()
    assert receive_counts == ["1", "2", "3"]
    dlq = sqs.get_queue_url(QueueName=components.settings().dead_letter_queue)["QueueUrl"]
    [dead] = sqs.receive_message(QueueUrl=dlq).get("Messages", [])
    assert dead["Body"] == "{}"


def test_runner_trains_through_the_real_chalice_handler(aws):
    from app import train_model

    submission = components.service().submit(b"1,a\n2,a\n3,b\n4,b\n")
    _, _, runner = _runner(aws, train_model)
    assert runner.poll_once() == 1
    assert components.registry().get(submission.model_id).status == "READY"


def test_run_stops_when_asked(aws):
    _, _, runner = _runner(aws, lambda event, context: None)
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop, 2))
    thread.start()
    stop.set()
    thread.join(timeout=10)
    assert not thread.is_alive()


def test_find_python_prints_a_312_or_313_interpreter():
    path = subprocess.run([str(stage.PROJECT_DIR / "devstack" / "find-python.sh")],
                          capture_output=True, text=True, check=True).stdout.strip()
    version = subprocess.run([path, "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert version in ("(3, 13)", "(3, 12)")


def test_stage_environment_reads_chalice_config():
    env = stage.stage_environment("prod")
    assert env["TRAINING_QUEUE"] == "ml-api-prod-training"
    with pytest.raises(SystemExit, match="stage 'nope'"):
        stage.stage_environment("nope")


@pytest.mark.parametrize("python, message", [
    ("python3.11", "is Python 3.11; ml-api needs 3.13"),
    ("/nonexistent/python3.13", "PYTHON=/nonexistent/python3.13 is not a program"),
])
def test_make_refuses_an_unusable_python_with_a_clear_message(tmp_path, python, message):
    if "/" not in python:
        found = subprocess.run(["sh", "-c", f"command -v {python} && {python} -V"],
                               capture_output=True, text=True)
        if found.returncode != 0:
            pytest.skip(f"no working {python} here")
    for name in ("Makefile", "requirements.txt", "requirements-dev.txt"):
        shutil.copy(stage.PROJECT_DIR / name, tmp_path / name)
    (tmp_path / "devstack").mkdir()
    shutil.copy(stage.PROJECT_DIR / "devstack" / "find-python.sh", tmp_path / "devstack")
    result = subprocess.run(["make", "venv", f"PYTHON={python}"], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert message in result.stderr
    assert not (tmp_path / ".venv").exists()


def test_dead_letters_can_be_listed_and_redriven(aws):
    from devstack import dlq

    settings = components.settings()
    sqs = aws.client("sqs")
    dead = sqs.get_queue_url(QueueName=settings.dead_letter_queue)["QueueUrl"]
    for i in range(12):
        sqs.send_message(QueueUrl=dead, MessageBody=json.dumps({"model_id": f"m{i}"}))
    listed = dlq.dead_messages(sqs, settings)
    assert sorted(json.loads(m["Body"])["model_id"] for m in listed) == sorted(
        f"m{i}" for i in range(12))
    assert dlq.redrive(sqs, settings) == 12  # listing left them all there
    live = sqs.get_queue_url(QueueName=settings.queue)["QueueUrl"]
    bodies = []
    for _ in range(5):
        bodies += [m["Body"] for m in sqs.receive_message(
            QueueUrl=live, MaxNumberOfMessages=10).get("Messages", [])]
    assert len(bodies) == 12
    assert dlq.dead_messages(sqs, settings) == []


def test_the_embedded_moto_enforces_s3s_rules_for_presigned_requests(tmp_path):
    """devstack.moto_server refuses what S3 refuses and moto 5.2.5 takes: a form
    outside its signed policy (size range, fields, expiry), SigV2 links and
    forms; and answers a browser's POST with the bucket's CORS headers."""
    import boto3
    import botocore.config
    import requests

    from chalicelib.aws import S3_CONFIG
    from devstack.emulator import start_moto
    from devstack.ports import free_ports
    from tests.reliability import record

    [port] = free_ports(1)
    moto = start_moto("127.0.0.1", port, str(tmp_path / "moto.log"))
    origin = "http://127.0.0.1:8000"
    try:
        def s3_client(config):
            return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}",
                                region_name="us-east-1", aws_access_key_id="test",
                                aws_secret_access_key="test", config=config)

        s3 = s3_client(S3_CONFIG)
        s3.create_bucket(Bucket="uploads-test")
        s3.put_bucket_cors(Bucket="uploads-test", CORSConfiguration={"CORSRules": [
            {"AllowedMethods": ["POST"], "AllowedOrigins": [origin], "MaxAgeSeconds": 60}]})
        tagging = "<Tagging><TagSet><Tag><Key>t</Key><Value>v</Value></Tag></TagSet></Tagging>"
        fields = {"Content-Type": "text/csv", "tagging": tagging}
        form = s3.generate_presigned_post(
            "uploads-test", "k.csv", Fields=fields, ExpiresIn=60,
            Conditions=[{"Content-Type": "text/csv"}, {"tagging": tagging},
                        ["content-length-range", 1, 100]])
        http = requests.Session()
        http.trust_env = False

        def post(data, form=form, **changes):
            return http.post(form["url"], data={**form["fields"], **changes},
                             files={"file": ("k.csv", data)}, headers={"Origin": origin})

        def code(answer):
            return f"{answer.status_code} {answer.text.split('<Code>')[1].split('<')[0]}"

        expired = s3.generate_presigned_post("uploads-test", "k.csv", ExpiresIn=-5)
        answers = {
            "101 bytes": post(b"x" * 101), "0 bytes": post(b""),
            "text/plain": post(b"1,a\n", **{"Content-Type": "text/plain"}),
            "an extra field": post(b"1,a\n", acl="public-read"),
            "expired": post(b"1,a\n", form=expired),
        }
        assert [code(a) for a in answers.values()] == [
            "400 EntityTooLarge", "400 EntityTooSmall", "403 AccessDenied", "403 AccessDenied",
            "403 AccessDenied"]
        assert "Policy expired" in answers["expired"].text
        assert s3.list_objects_v2(Bucket="uploads-test")["KeyCount"] == 0

        preflight = http.options(form["url"], headers={"Origin": origin,
                                                       "Access-Control-Request-Method": "POST"})
        assert preflight.status_code == 200
        assert preflight.headers["Access-Control-Allow-Origin"] == origin
        elsewhere = http.options(form["url"], headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
        assert elsewhere.status_code == 403
        stored = post(b"1,a\n")
        assert stored.status_code == 204, stored.text
        assert stored.headers["Access-Control-Allow-Origin"] == origin
        assert s3.get_object(Bucket="uploads-test", Key="k.csv")["Body"].read() == b"1,a\n"
        assert s3.get_object_tagging(Bucket="uploads-test", Key="k.csv")["TagSet"] == [
            {"Key": "t", "Value": "v"}]

        sigv2 = s3_client(botocore.config.Config(signature_version="s3"))
        old_link = sigv2.generate_presigned_url("get_object", Params={
            "Bucket": "uploads-test", "Key": "k.csv"})
        assert "AWSAccessKeyId=" in old_link
        refused = http.get(old_link)
        assert refused.status_code == 400 and "Please use AWS4-HMAC-SHA256" in refused.text
        old_form = post(b"1,a\n", form=sigv2.generate_presigned_post("uploads-test", "k2.csv"))
        assert old_form.status_code == 400 and "Please use AWS4-HMAC-SHA256" in old_form.text
        assert http.get(s3.generate_presigned_url("get_object", Params={
            "Bucket": "uploads-test", "Key": "k.csv"})).content == b"1,a\n"
        answers.update({"a SigV2 link": refused, "a SigV2 form": old_form})
        tags = s3.get_object_tagging(Bucket="uploads-test", Key="k.csv")["TagSet"]
        record("Security: AWS rules", "Upload forms (local emulator)",
               "sent the embedded moto presigned forms its policy refuses (size range 1..100, "
               "Content-Type, no extra field, expiry) and SigV2 requests, then a good form",
               len(answers) + 1,
               "; ".join(f"{name}: {code(answer)}" for name, answer in answers.items())
               + f"; the good form: {stored.status_code}, stored only then, tagged "
               f"{tags[0]['Key']}={tags[0]['Value']}, Access-Control-Allow-Origin "
               f"{stored.headers['Access-Control-Allow-Origin']}")
    finally:
        moto.terminate()
        moto.wait(timeout=10)


def test_the_emulator_serializes_conditional_writes_as_dynamodb_does(tmp_path, monkeypatch,
                                                                      emulator):
    """Two duplicate deliveries both try to take a model's training lease at
    once. DynamoDB applies conditional writes to one item one after the
    other, so exactly one wins; moto's threaded server did not (both won in
    about 1 of 300 contested updates), nor does moto inside LocalStack, whose
    gateway serves requests on many threads. Here each condition is held open
    50 ms after it is evaluated, so without serialization (devstack.moto_server;
    the mlapi_moto provider in devstack/localstack_plugins) both writes would
    pass it."""
    import boto3

    from chalicelib.aws import CLIENT_CONFIG
    from chalicelib.config import Settings
    from chalicelib.registry import ModelRecord, ModelRegistry, Status, now_iso
    from devstack import localstack
    from devstack.emulator import start_moto
    from devstack.ports import free_ports, stop_process

    [port] = free_ports(1)
    if emulator == "moto":
        moto = start_moto("127.0.0.1", port, str(tmp_path / "moto.log"),
                          module="tests.moto_held_conditions")
        stop = stop_process
    else:
        localstack.install()
        moto = localstack.start(
            "127.0.0.1", port, tmp_path / "localstack.log", tmp_path / "localstack",
            main=(str(stage.PROJECT_DIR / "tests" / "localstack_held_conditions.py"),))
        stop = localstack.stop
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        session = boto3.session.Session(aws_access_key_id="test", aws_secret_access_key="test",
                                        region_name="us-east-1")
        settings = Settings.from_env()
        bootstrap.bootstrap(session, settings)

        def registry() -> ModelRegistry:
            return ModelRegistry(session.client("dynamodb", config=CLIENT_CONFIG), settings.table)

        models = [f"model_race_{i}" for i in range(12)]
        for model_id in models:
            assert registry().create(ModelRecord(
                model_id=model_id, task_id="t", status=Status.QUEUED, created_at=now_iso(),
                n_rows=1, n_features=1, dataset_key=f"datasets/{model_id}.csv"))
        winners: dict[str, list[str]] = {model_id: [] for model_id in models}
        together = threading.Barrier(2)

        def delivery(owner: str) -> None:
            mine = registry()
            for model_id in models:
                together.wait(timeout=30)
                if mine.start_training(model_id, owner, lease_seconds=60):
                    winners[model_id].append(owner)

        threads = [threading.Thread(target=delivery, args=(owner,)) for owner in ("a", "b")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert {model_id: len(owners) for model_id, owners in winners.items()} == \
            {model_id: 1 for model_id in models}
        assert all(registry().get(model_id).status == Status.TRAINING for model_id in models)
    finally:
        stop(moto)
def test_the_trainer_runs_with_its_stages_memory_and_timeout(monkeypatch):
    from devstack.sqs_runner import trainer_spec

    for name in ("dev", "prod"):
        function = stage.lambda_function("train_model", name)
        assert function.name == f"ml-api-{name}-train_model"
        assert (function.memory_mb, function.timeout_seconds) == (3008, 900)
        assert function.environment["TRAINING_QUEUE"] == f"ml-api-{name}-training"
    api = stage.lambda_function("api_handler", "prod")
    assert (api.memory_mb, api.timeout_seconds) == (512, 30)
    monkeypatch.setenv("MODELS_BUCKET", "overridden")
    spec = trainer_spec("dev")
    assert (spec.handler, spec.memory_mb, spec.timeout_seconds) == ("app.train_model", 3008, 900)
    assert spec.code_paths == (str(stage.PROJECT_DIR),)
    assert spec.environment["MODELS_BUCKET"] == "overridden"  # what the runner was given
    small = trainer_spec("dev", memory_mb=300, timeout_seconds=2)
    assert (small.memory_mb, small.timeout_seconds) == (300, 2)


@pytest.mark.parametrize("env, message", [
    ({"EMULATOR": "dynalite"}, "EMULATOR='dynalite' is not an emulator this stack runs; "
                               "expected one of: moto, localstack"),
    ({"EMULATOR": "localstack", "LOCALSTACK_HOST": "127.0.0.1:{port}"},
     "LOCALSTACK_HOST=127.0.0.1:{port} names a LocalStack, but none answers at "
     "http://127.0.0.1:{port}; start it, or unset LOCALSTACK_HOST"),
    ({"EMULATOR": "localstack", "LOCALSTACK_HOST": "localhost:{port}"},
     "none answers at http://127.0.0.1:{port};"),
])
def test_run_refuses_an_emulator_it_cannot_use_with_a_clear_message(tmp_path, env, message):
    """devstack.run names a bad EMULATOR, and a LocalStack the user named with
    LOCALSTACK_HOST (localstack-client's convention; localhost becomes
    127.0.0.1) that does not answer, and starts nothing."""
    import sys

    from devstack.ports import free_ports
    from tests.stack import clean_environment

    api_port, port = free_ports(2)
    environment = clean_environment({name: value.format(port=port)
                                     for name, value in env.items()})
    result = subprocess.run([sys.executable, "-m", "devstack.run", "--port", str(api_port),
                             "--log-dir", str(tmp_path)], cwd=stage.PROJECT_DIR,
                            env=environment, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert message.format(port=port) in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == []  # no emulator log: nothing started
