"""The infrastructure definition (infra/resources.json), bootstrap applying it
with boto3 (in-process moto and moto's server), and the Lambda settings in
.chalice/config.json."""
import json
import os
import subprocess
import sys
import textwrap

import boto3
import botocore.exceptions
import pytest
from chalice.cli.factory import CLIFactory

from chalicelib.config import Settings

from devstack import bootstrap, emulator, stage
from devstack.ports import free_ports
from infra import definition
from infra.definition import DefinitionError

CONFIG = json.loads((stage.PROJECT_DIR / ".chalice" / "config.json").read_text())
STAGES = sorted(CONFIG["stages"])
REGION = "us-east-1"


def _scope(stage_name: str, function: str):
    config = CLIFactory(str(stage.PROJECT_DIR), environ={}).create_config_obj(
        chalice_stage_name=stage_name)
    return config.scope(stage_name, function)


# --- the definition ----------------------------------------------------------------

@pytest.mark.parametrize("stage_name", STAGES)
def test_definition_renders_with_the_names_the_stages_lambdas_read(stage_name):
    env = stage.stage_environment(stage_name)
    resources = definition.render(stage.deployed_settings(stage_name))["Resources"]
    props = {name: resource["Properties"] for name, resource in resources.items()}
    assert props["ModelsBucket"]["BucketName"] == env["MODELS_BUCKET"]
    assert props["ModelsTable"]["TableName"] == env["MODELS_TABLE"]
    assert props["TrainingQueue"]["QueueName"] == env["TRAINING_QUEUE"]
    assert props["TrainingDeadLetterQueue"]["QueueName"] == env["TRAINING_DLQ"]
    assert "{{" not in json.dumps(resources)


@pytest.mark.parametrize("stage_name", STAGES)
def test_training_queue_redrives_after_the_trainers_last_receive(stage_name):
    queue = definition.render(stage.deployed_settings(stage_name))["Resources"]["TrainingQueue"]
    redrive = queue["Properties"]["RedrivePolicy"]
    assert redrive["deadLetterTargetArn"] == {"Fn::GetAtt": ["TrainingDeadLetterQueue", "Arn"]}
    # The trainer marks the model failed on this receive (TRAINING_MAX_RECEIVES).
    assert redrive["maxReceiveCount"] == 3 == int(stage.stage_environment(stage_name)
                                                  ["TRAINING_MAX_RECEIVES"])


@pytest.mark.parametrize("stage_name", STAGES)
def test_visibility_timeout_is_at_least_six_times_the_trainers_timeout(stage_name):
    queue = definition.render(stage.deployed_settings(stage_name))["Resources"]["TrainingQueue"]
    timeout = _scope(stage_name, "train_model").lambda_timeout
    assert queue["Properties"]["VisibilityTimeout"] >= 6 * timeout == 5400


def test_bucket_is_encrypted_and_private_and_the_table_on_demand_with_ttl():
    resources = definition.load()["Resources"]
    bucket = resources["ModelsBucket"]["Properties"]
    [rule] = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms")
    assert set(bucket["PublicAccessBlockConfiguration"].values()) == {True}
    assert len(bucket["PublicAccessBlockConfiguration"]) == 4
    table = resources["ModelsTable"]["Properties"]
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    # Data outlives a deleted stack.
    for name in ("ModelsBucket", "ModelsTable"):
        assert resources[name]["DeletionPolicy"] == resources[name]["UpdateReplacePolicy"] == "Retain"


def test_the_bucket_is_tls_only_in_the_deployed_definition():
    """A request over plain HTTP is refused, by a bucket policy in the stack
    (infra/resources.json, so both `make package` and `make bootstrap` against
    AWS carry it). Emulators get none: see test_bootstrap_command_against_moto_server."""
    resources = definition.render(stage.deployed_settings("prod"))["Resources"]
    policy = resources["ModelsBucketPolicy"]
    assert policy["Type"] == "AWS::S3::BucketPolicy"
    assert policy["Properties"]["Bucket"] == {"Ref": "ModelsBucket"}
    assert policy["DeletionPolicy"] == "Retain"  # stays with the retained bucket
    [statement] = policy["Properties"]["PolicyDocument"]["Statement"]
    assert (statement["Effect"], statement["Principal"], statement["Action"]) == \
        ("Deny", "*", "s3:*")
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert statement["Resource"] == [{"Fn::GetAtt": ["ModelsBucket", "Arn"]},
                                     {"Fn::Sub": "${ModelsBucket.Arn}/*"}]
    assert bootstrap.LEFT_OUT_ON_EMULATORS.keys() == {"AWS::S3::BucketPolicy"}


def test_abandoned_uploads_expire_and_claimed_ones_stay(aws):
    """The lifecycle rule deletes uploads still tagged unclaimed after a day;
    the upload form requires that tag and POST /models replaces it."""
    from chalicelib import components, storage

    bucket = definition.load()["Resources"]["ModelsBucket"]["Properties"]
    rule, batch_rule = definition.render(stage.deployed_settings("dev"))["Resources"][
        "ModelsBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    assert "{{" in str(bucket["LifecycleConfiguration"])  # the names come from chalicelib
    assert rule == {"Id": "abandoned-uploads", "Status": "Enabled",
                    "Prefix": storage.UPLOADS_PREFIX,
                    "TagFilters": [{"Key": storage.UPLOAD_STATE_TAG, "Value": storage.UNCLAIMED}],
                    "ExpirationInDays": 1}
    form = components.store().upload_form("upload_" + "0" * 24, 60, 100)
    assert f"<Key>{rule['TagFilters'][0]['Key']}</Key><Value>{rule['TagFilters'][0]['Value']}" \
        in form["fields"]["tagging"]
    assert form["fields"]["key"].startswith(rule["Prefix"])
    # bootstrap (the `aws` fixture ran it) applies it as the S3 API has it.
    applied, batch_applied = aws.client("s3").get_bucket_lifecycle_configuration(
        Bucket=components.settings().bucket)["Rules"]
    assert applied == {"ID": "abandoned-uploads", "Status": "Enabled", "Expiration": {"Days": 1},
                       "Filter": {"And": {"Prefix": "uploads/", "Tags": [
                           {"Key": storage.UPLOAD_STATE_TAG, "Value": storage.UNCLAIMED}]}}}
    # Batch inputs and results go after BATCH_RETENTION_DAYS (their items' TTL
    # too); a multipart upload a dead run left unfinished, after a day.
    assert batch_rule == {"Id": "batch-inputs-and-results", "Status": "Enabled",
                          "Prefix": storage.BATCHES_PREFIX,
                          "ExpirationInDays": storage.BATCH_RETENTION_DAYS,
                          "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}}
    assert batch_applied == {"ID": "batch-inputs-and-results", "Status": "Enabled",
                             "Expiration": {"Days": storage.BATCH_RETENTION_DAYS},
                             "Filter": {"Prefix": "batches/"},
                             "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}}


def test_the_upload_cors_origin_is_the_stages(monkeypatch):
    settings = stage.deployed_settings("prod")
    # Unknown until the API exists: no rule (infra.deploy adds the API's origin).
    assert "CorsConfiguration" not in definition.render(settings)["Resources"][
        "ModelsBucket"]["Properties"]
    monkeypatch.setitem(os.environ, "UPLOAD_ORIGINS", "https://ml.example.com, https://b.example")
    configured = Settings.from_env()
    [rule] = definition.render(configured)["Resources"]["ModelsBucket"]["Properties"][
        "CorsConfiguration"]["CorsRules"]
    assert rule == {"Id": "dashboard-uploads", "AllowedMethods": ["POST", "GET"],
                    "AllowedOrigins": ["https://ml.example.com", "https://b.example"],
                    "MaxAge": 3600}
    assert "*" not in json.dumps(rule)


def test_unknown_placeholder_is_named(tmp_path):
    path = tmp_path / "resources.json"
    path.write_text(json.dumps({"Resources": {"Q": {"Type": "AWS::SQS::Queue", "Properties": {
        "QueueName": "x-{{NOPE}}"}}}}))
    with pytest.raises(DefinitionError, match=r"Q.Properties.QueueName: unknown placeholder "
                                              r"\{\{NOPE\}\}; known: .*MODELS_BUCKET"):
        definition.render(stage.deployed_settings("dev"), path)


# --- Lambda settings -----------------------------------------------------------------

@pytest.mark.parametrize("stage_name", STAGES)
def test_functions_are_sized_for_their_work(stage_name):
    api, trainer = _scope(stage_name, "api_handler"), _scope(stage_name, "train_model")
    assert (api.lambda_memory_size, api.lambda_timeout) == (512, 30)
    assert (trainer.lambda_memory_size, trainer.lambda_timeout) == (3008, 900)
    assert api.reserved_concurrency is None
    assert trainer.reserved_concurrency >= 5  # see README: SQS pollers and throttling
    assert api.log_retention_in_days and trainer.log_retention_in_days
    # The training lease (chalicelib.config) lasts as long as the trainer may run.
    assert stage.deployed_settings(stage_name).training_lease_seconds >= trainer.lambda_timeout


@pytest.mark.parametrize("stage_name", STAGES)
def test_runtime_is_the_local_python_and_nothing_is_layered_automatically(stage_name):
    scope = _scope(stage_name, "train_model")
    assert scope.lambda_python_version == "python3.13" == "python%d.%d" % sys.version_info[:2]
    assert scope.automatic_layer is False
    assert isinstance(scope.layers, list)


@pytest.mark.parametrize("stage_name", STAGES)
def test_chalice_wires_the_trainer_to_the_stages_own_queue(stage_name):
    """app.py reads TRAINING_QUEUE at import time; `chalice deploy --stage X`
    (and package) import it after putting stage X's variables in os.environ.
    A stray TRAINING_QUEUE in the shell must not win."""
    probe = textwrap.dedent(f"""
        import os
        from chalice.cli.factory import CLIFactory
        factory = CLIFactory({str(stage.PROJECT_DIR)!r}, environ=os.environ)  # as the CLI does
        app = factory.create_config_obj(chalice_stage_name={stage_name!r}).chalice_app
        print(*[source.queue for source in app.event_sources if hasattr(source, "queue")])
    """)
    env = {**os.environ, "TRAINING_QUEUE": "from-the-shell", "BATCH_QUEUE": "from-the-shell"}
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                            text=True, cwd=stage.PROJECT_DIR, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [stage.stage_environment(stage_name)["TRAINING_QUEUE"],
                                     stage.stage_environment(stage_name)["BATCH_QUEUE"]]


# --- bootstrap, in-process moto ---------------------------------------------------

def _queue_attributes(session, name):
    sqs = session.client("sqs")
    url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]


def test_bootstrap_creates_everything_as_defined(moto_session):
    settings = stage.deployed_settings("prod")
    done = bootstrap.bootstrap(moto_session, settings, upload_origins=["https://ml.example.com"],
                               for_aws=True)
    s3, dynamodb = moto_session.client("s3"), moto_session.client("dynamodb")
    [rule] = s3.get_bucket_encryption(Bucket=settings.bucket)[
        "ServerSideEncryptionConfiguration"]["Rules"]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    block = s3.get_public_access_block(Bucket=settings.bucket)["PublicAccessBlockConfiguration"]
    assert block == {name: True for name in ("BlockPublicAcls", "IgnorePublicAcls",
                                             "BlockPublicPolicy", "RestrictPublicBuckets")}
    assert s3.get_bucket_ownership_controls(Bucket=settings.bucket)["OwnershipControls"][
        "Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    # The dashboard POSTs large files to a presigned form, and GETs a model's
    # pickle from a presigned link to check its SHA-256, from the API's origin only.
    # moto's server lets any origin GET whatever the bucket says; S3 only as the rule allows.
    [cors] = s3.get_bucket_cors(Bucket=settings.bucket)["CORSRules"]
    assert cors == {"ID": "dashboard-uploads", "AllowedMethods": ["POST", "GET"],
                    "AllowedOrigins": ["https://ml.example.com"], "MaxAgeSeconds": 3600}
    rule, batch_rule = s3.get_bucket_lifecycle_configuration(Bucket=settings.bucket)["Rules"]
    assert rule["ID"] == "abandoned-uploads" and rule["Expiration"] == {"Days": 1}
    assert batch_rule["ID"] == "batch-inputs-and-results"
    # For AWS, the TLS-only policy too (moto stores it; it would refuse object requests).
    [deny] = json.loads(s3.get_bucket_policy(Bucket=settings.bucket)["Policy"])["Statement"]
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert deny["Resource"] == [f"arn:aws:s3:::{settings.bucket}",
                                f"arn:aws:s3:::{settings.bucket}/*"]
    table = dynamodb.describe_table(TableName=settings.table)["Table"]
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert dynamodb.describe_time_to_live(TableName=settings.table)["TimeToLiveDescription"] == {
        "TimeToLiveStatus": "ENABLED", "AttributeName": "expires_at"}
    queue = _queue_attributes(moto_session, settings.queue)
    assert queue["VisibilityTimeout"] == "5400"  # no override: the definition's value
    assert queue["SqsManagedSseEnabled"] == "true"
    redrive = json.loads(queue["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"] == done["TrainingDeadLetterQueue"]["Arn"]
    assert int(redrive["maxReceiveCount"]) == 3
    assert _queue_attributes(moto_session, settings.dead_letter_queue)[
        "MessageRetentionPeriod"] == "1209600"
    batch_queue = _queue_attributes(moto_session, settings.batch_queue)
    assert batch_queue["VisibilityTimeout"] == "5400"
    assert json.loads(batch_queue["RedrivePolicy"])["deadLetterTargetArn"] == \
        done["BatchDeadLetterQueue"]["Arn"]
    batches_table = dynamodb.describe_table(TableName=settings.batches_table)["Table"]
    assert [index["IndexName"] for index in batches_table["GlobalSecondaryIndexes"]] == [
        "by_model"]


def test_bootstrap_is_idempotent_and_brings_drift_back_in_line(moto_session):
    settings = stage.deployed_settings("dev")
    bootstrap.bootstrap(moto_session, settings, visibility_timeout=5)
    assert _queue_attributes(moto_session, settings.queue)["VisibilityTimeout"] == "5"
    moto_session.client("s3").delete_public_access_block(Bucket=settings.bucket)
    bootstrap.bootstrap(moto_session, settings)
    bootstrap.bootstrap(moto_session, settings)
    assert _queue_attributes(moto_session, settings.queue)["VisibilityTimeout"] == "5400"
    assert moto_session.client("s3").get_public_access_block(Bucket=settings.bucket)
    assert len(moto_session.client("sqs").list_queues()["QueueUrls"]) == 4


def test_bootstrap_refuses_what_it_cannot_apply(moto_session):
    settings = stage.deployed_settings("dev")
    with pytest.raises(DefinitionError, match=r"ModelsTable \(AWS::DynamoDB::Table\) sets "
                                              r"PointInTimeRecoverySpecification, which "
                                              r"devstack.bootstrap does not apply"):
        bootstrap.apply(moto_session, {"ModelsTable": {"Type": "AWS::DynamoDB::Table",
                                                       "Properties": {
            "TableName": settings.table, "BillingMode": "PAY_PER_REQUEST",
            "AttributeDefinitions": [], "KeySchema": [],
            "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True}}}})
    with pytest.raises(DefinitionError, match=r"Topic has type 'AWS::SNS::Topic'"):
        bootstrap.apply(moto_session, {"Topic": {"Type": "AWS::SNS::Topic"}})


def test_bootstrap_refuses_a_table_with_another_key(moto_session):
    settings = stage.deployed_settings("dev")
    moto_session.client("dynamodb").create_table(
        TableName=settings.table, BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}])
    with pytest.raises(SystemExit, match=r"exists with key .*'id'.*a key cannot be changed"):
        bootstrap.bootstrap(moto_session, settings)


def test_teardown_keeps_the_data_unless_asked(moto_session):
    settings = stage.deployed_settings("dev")
    bootstrap.bootstrap(moto_session, settings)
    s3 = moto_session.client("s3")
    s3.put_object(Bucket=settings.bucket, Key="models/m/model.pkl", Body=b"x")
    assert bootstrap.teardown(moto_session, settings) == [
        "BatchQueue", "BatchDeadLetterQueue", "TrainingQueue", "TrainingDeadLetterQueue"]
    assert moto_session.client("sqs").list_queues().get("QueueUrls", []) == []
    assert s3.head_bucket(Bucket=settings.bucket)
    assert bootstrap.teardown(moto_session, settings, including_data=True) == [
        "BatchesTable", "ModelsTable", "ModelsBucket"]
    assert s3.list_buckets()["Buckets"] == []
    assert moto_session.client("dynamodb").list_tables()["TableNames"] == []
    assert bootstrap.teardown(moto_session, settings, including_data=True) == []


# --- bootstrap's command line against moto's server ---------------------------------

def test_bootstrap_command_against_moto_server(tmp_path):
    [port] = free_ports(1)
    server = emulator.start_moto("127.0.0.1", port, str(tmp_path / "moto.log"))
    try:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("AWS_", "MODELS_", "TRAINING_"))}
        env.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="test",
                   AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION=REGION)

        def run(*args):
            result = subprocess.run([sys.executable, "-m", "devstack.bootstrap", *args],
                                    env=env, cwd=stage.PROJECT_DIR, capture_output=True,
                                    text=True, timeout=120)
            assert result.returncode == 0, result.stderr
            return result.stdout

        first = run("--stage", "prod", "--upload-origin", "http://127.0.0.1:8000")
        assert "queue ml-api-prod-training (visibility timeout 60 s;" in first
        assert "left out on an emulator: the TLS-only bucket policy" in first
        assert run("--stage", "prod", "--visibility-timeout", "5").count("visibility timeout 5 s") == 1
        session = boto3.session.Session(region_name=REGION, aws_access_key_id="test",
                                        aws_secret_access_key="test")
        s3 = session.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
        assert s3.get_bucket_encryption(Bucket="ml-api-prod-models")
        assert s3.get_bucket_cors(Bucket="ml-api-prod-models")["CORSRules"][0][
            "AllowedOrigins"] == ["http://127.0.0.1:8000"]
        # How the emulator differs: with the TLS-only policy, moto refuses every
        # object request (it cannot evaluate aws:SecureTransport), so it gets none.
        with pytest.raises(botocore.exceptions.ClientError, match="NoSuchBucketPolicy"):
            s3.get_bucket_policy(Bucket="ml-api-prod-models")
        s3.put_object(Bucket="ml-api-prod-models", Key="probe", Body=b"x")
        tls_only = definition.render(stage.deployed_settings("prod"))["Resources"][
            "ModelsBucketPolicy"]["Properties"]["PolicyDocument"]
        tls_only["Statement"][0]["Resource"] = ["arn:aws:s3:::ml-api-prod-models",
                                                "arn:aws:s3:::ml-api-prod-models/*"]
        s3.put_bucket_policy(Bucket="ml-api-prod-models", Policy=json.dumps(tls_only))
        with pytest.raises(botocore.exceptions.ClientError, match="403"):
            s3.get_object(Bucket="ml-api-prod-models", Key="probe")
        s3.delete_bucket_policy(Bucket="ml-api-prod-models")
        s3.delete_object(Bucket="ml-api-prod-models", Key="probe")
        gone = run("--stage", "prod", "--delete", "--including-data")
        assert "deleted from http://127.0.0.1" in gone and "ModelsBucket" in gone
        assert s3.list_buckets()["Buckets"] == []
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_localstack_compose_is_pinned_local_and_minimal():
    import yaml

    compose = yaml.safe_load((stage.PROJECT_DIR / "docker-compose.localstack.yml").read_text())
    service = compose["services"]["localstack"]
    image = service["image"].removeprefix("${LOCALSTACK_IMAGE:-").removesuffix("}")
    name, _, tag = image.partition(":")
    assert name == "localstack/localstack" and tag and tag != "latest"
    assert service["ports"] == ["127.0.0.1:4566:4566"]
    env = service["environment"]
    assert env["SERVICES"].split(",")[:3] == ["s3", "dynamodb", "sqs"]
    assert set(env["SERVICES"].split(",")) == {"s3", "dynamodb", "sqs", "lambda", "apigateway",
                                               "iam", "sts", "cloudformation", "ssm", "logs"}
    assert env["LOCALSTACK_AUTH_TOKEN"] == "${LOCALSTACK_AUTH_TOKEN:-}"


def test_trainer_event_source_concurrency_matches_its_reserved_concurrency():
    """Throttled receives count towards the dead-letter limit: SQS must not
    hand the trainer more messages at once than it may run."""
    import json as _json
    from pathlib import Path as _Path

    config = _json.loads((_Path(__file__).resolve().parents[2] / ".chalice" / "config.json").read_text())
    for name, stage in config["stages"].items():
        reserved = stage["lambda_functions"]["train_model"]["reserved_concurrency"]
        assert int(stage["environment_variables"]["TRAINER_MAX_CONCURRENCY"]) == reserved, name
