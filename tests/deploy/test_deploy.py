"""The `chalice deploy` path: publishing the layer, the stage's secrets, the
pre-flight checks, and a rehearsal of the whole sequence (bootstrap, secrets,
publish-layer, chalice deploy, chalice url, chalice delete) against moto's
server standing in for AWS."""
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import boto3
import pytest

from devstack import bootstrap, emulator, stage
from devstack.ports import free_ports
from infra import deploy, layer as layers, policies, secrets
from infra import package

REGION = "us-east-1"
PROJECT = stage.PROJECT_DIR
DEPLOY_BUCKET = "ml-api-deploy-test"


def _tiny_layer(tmp_path: Path, inputs: str = "a" * 64) -> layers.Layer:
    zip_path = tmp_path / f"layer-{inputs[:4]}.zip"
    with zipfile.ZipFile(zip_path, "w") as archive:
        archive.writestr("python/placeholder.py", "")
    return layers.measure(zip_path, inputs)


def _project_copy(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "deployments", "deployed", "venv")
    for name in ("app.py", "requirements.txt", "requirements-layer.txt"):
        shutil.copy(PROJECT / name, project / name)
    for name in ("chalicelib", ".chalice"):
        shutil.copytree(PROJECT / name, project / name, ignore=ignore)
    return project


# --- layer publishing ----------------------------------------------------------

def test_publish_uploads_via_s3_and_reuses_a_version_of_the_same_build(moto_session, tmp_path):
    moto_session.client("s3").create_bucket(Bucket=DEPLOY_BUCKET)
    first = layers.publish(moto_session, _tiny_layer(tmp_path), DEPLOY_BUCKET)
    assert first.startswith(f"arn:aws:lambda:{REGION}:") and first.endswith(
        ":layer:ml-api-science:1")
    assert layers.publish(moto_session, _tiny_layer(tmp_path), DEPLOY_BUCKET) == first
    second = layers.publish(moto_session, _tiny_layer(tmp_path, "b" * 64), DEPLOY_BUCKET)
    assert second.endswith(":layer:ml-api-science:2")
    keys = [o["Key"] for o in moto_session.client("s3").list_objects_v2(
        Bucket=DEPLOY_BUCKET)["Contents"]]
    assert keys == [f"layers/ml-api-science/{'a' * 64}.zip", f"layers/ml-api-science/{'b' * 64}.zip"]
    version = moto_session.client("lambda").get_layer_version(
        LayerName=second.rsplit(":", 1)[0], VersionNumber=2)
    assert version["CompatibleRuntimes"] == ["python3.13"]
    assert version["CompatibleArchitectures"] == ["x86_64"]


def test_publish_refuses_a_bucket_in_another_region(moto_session, tmp_path):
    moto_session.client("s3", region_name="eu-west-1").create_bucket(
        Bucket=DEPLOY_BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    with pytest.raises(SystemExit, match=f"bucket {DEPLOY_BUCKET} is in eu-west-1, the layer "
                                         f"is published in {REGION}"):
        layers.publish(moto_session, _tiny_layer(tmp_path), DEPLOY_BUCKET)


def test_set_stage_layers_changes_one_line_of_the_config(tmp_path):
    config = tmp_path / "config.json"
    shutil.copy(PROJECT / ".chalice" / "config.json", config)
    before = config.read_text()
    arn = "arn:aws:lambda:us-east-1:123456789012:layer:ml-api-science:3"
    layers.set_stage_layers("prod", [arn], config)
    after = config.read_text()
    changed = [(a, b) for a, b in zip(before.splitlines(), after.splitlines()) if a != b]
    assert len(changed) == 1 and arn in changed[0][1]
    loaded = json.loads(after)
    assert loaded["stages"]["prod"]["layers"] == [arn]
    assert loaded["stages"]["dev"]["layers"] == json.loads(before)["stages"]["dev"]["layers"]
    with pytest.raises(SystemExit, match="stage 'qa' is not in"):
        layers.set_stage_layers("qa", [arn], config)


# --- secrets ---------------------------------------------------------------------

def test_secrets_are_created_once_and_never_overwritten(moto_session):
    assert secrets.ensure(moto_session, "prod") == {
        "/ml-api/prod/model-signing-key": True, "/ml-api/prod/api-keys": True}
    ssm = moto_session.client("ssm")
    key = ssm.get_parameter(Name="/ml-api/prod/model-signing-key", WithDecryption=True)
    assert key["Parameter"]["Type"] == "SecureString"
    assert len(key["Parameter"]["Value"]) >= 16
    assert secrets.ensure(moto_session, "prod") == {
        "/ml-api/prod/model-signing-key": False, "/ml-api/prod/api-keys": False}
    assert ssm.get_parameter(Name="/ml-api/prod/model-signing-key", WithDecryption=True)[
        "Parameter"]["Value"] == key["Parameter"]["Value"]
    # Every deployed stage requires API keys, dev too.
    assert list(secrets.ensure(moto_session, "dev")) == ["/ml-api/dev/model-signing-key",
                                                        "/ml-api/dev/api-keys"]


# --- pre-flight --------------------------------------------------------------------

def test_preflight_lists_every_missing_step(moto_session):
    problems = deploy.preflight(moto_session, "prod")
    text = "\n".join(problems)
    assert "api_handler has no layer: run `make publish-layer STAGE=prod DEPLOY_BUCKET=" in text
    assert "bucket ml-api-prod-models is missing (or not yours): run `make bootstrap STAGE=prod`" in text
    assert "queue ml-api-prod-training is missing" in text
    assert "SSM parameter /ml-api/prod/model-signing-key is missing: run `make secrets STAGE=prod`" in text


def test_preflight_passes_once_everything_is_in_place(moto_session, tmp_path):
    project = _project_copy(tmp_path)
    moto_session.client("s3").create_bucket(Bucket=DEPLOY_BUCKET)
    arn = layers.publish(moto_session, _tiny_layer(tmp_path), DEPLOY_BUCKET)
    layers.set_stage_layers("prod", [arn], project / ".chalice" / "config.json")
    bootstrap.bootstrap(moto_session, stage.deployed_settings("prod"), visibility_timeout=60)
    secrets.ensure(moto_session, "prod")
    # Bootstrapped with a local visibility timeout: Lambda would refuse the mapping.
    assert deploy.preflight(moto_session, "prod", project) == [
        "queue ml-api-prod-training has a visibility timeout of 60 s, less than the trainer's "
        "900 s (Lambda refuses the event source): run `make bootstrap STAGE=prod` against this "
        "account, without --visibility-timeout"]
    bootstrap.bootstrap(moto_session, stage.deployed_settings("prod"))
    assert deploy.preflight(moto_session, "prod", project) == []


def test_after_deploying_the_bucket_takes_upload_forms_from_the_api_only(moto_session):
    bootstrap.bootstrap(moto_session, stage.deployed_settings("prod"))
    s3 = moto_session.client("s3")
    with pytest.raises(s3.exceptions.ClientError, match="NoSuchCORSConfiguration"):
        s3.get_bucket_cors(Bucket="ml-api-prod-models")  # no origin known before the API
    origins = deploy.allow_uploads_from(
        moto_session, "prod", "https://abc123defg.execute-api.us-east-1.amazonaws.com/api/\n")
    assert origins == ["https://abc123defg.execute-api.us-east-1.amazonaws.com"]
    [rule] = s3.get_bucket_cors(Bucket="ml-api-prod-models")["CORSRules"]
    assert rule["AllowedOrigins"] == origins and rule["AllowedMethods"] == ["POST", "GET"]
    # A later bootstrap without an origin leaves it as it is.
    bootstrap.bootstrap(moto_session, stage.deployed_settings("prod"))
    assert s3.get_bucket_cors(Bucket="ml-api-prod-models")["CORSRules"] == [rule]


def test_preflight_refuses_the_scientific_stack_in_requirements_txt(tmp_path):
    project = _project_copy(tmp_path)
    with open(project / "requirements.txt", "a") as requirements:
        requirements.write("scikit-learn==1.9.1\n")
    assert deploy.check_requirements(project) == [
        "scikit-learn in both requirements.txt (vendored into the deployment zip) and "
        "requirements-layer.txt: keep them in the layer only, or the zip outgrows chalice "
        "deploy's 50 MB"]
    assert deploy.check_requirements(PROJECT) == []


# --- the whole sequence against moto's server ------------------------------------------

@pytest.fixture
def moto_server(tmp_path):
    [port] = free_ports(1)
    server = emulator.start_moto("127.0.0.1", port, str(tmp_path / "moto.log"))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.mark.package
def test_chalice_deploy_rehearsal_against_moto_server(moto_server, tmp_path):
    """bootstrap, secrets, publish-layer, pre-flight and `chalice deploy` with
    the project's real configuration, moto's server standing in for AWS.
    moto 5.2.5 cannot import Chalice's API definition into API Gateway (it
    takes OpenAPI 3 with info.description only; Chalice sends Swagger 2.0), so
    the deploy stops at its last step, "Creating Rest API"; everything before it (roles, policies, functions, layers, sizes,
    concurrency, the SQS event source) is checked here."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "MODELS_", "TRAINING_", "MODEL_"))}
    env.update(AWS_ENDPOINT_URL=moto_server, AWS_ACCESS_KEY_ID="test",
               AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION=REGION)
    session = boto3.session.Session(region_name=REGION, aws_access_key_id="test",
                                    aws_secret_access_key="test")

    def client(name):
        return session.client(name, endpoint_url=moto_server)

    def run(*command):
        result = subprocess.run(command, cwd=PROJECT, env=env, capture_output=True, text=True,
                                timeout=600)
        return result.returncode, result.stdout + result.stderr

    project = _project_copy(tmp_path)
    for step in (["devstack.bootstrap", "--stage", "dev", "--visibility-timeout", "5400"],
                 ["infra.secrets", "--stage", "dev"]):
        code, output = run(sys.executable, "-m", *step)
        assert code == 0, output
    # publish-layer, with a stand-in for the 61 MB zip (test_package builds the real one)
    client("s3").create_bucket(Bucket=DEPLOY_BUCKET)
    arn = layers.publish(_OnEmulator(session, moto_server), _tiny_layer(tmp_path), DEPLOY_BUCKET)
    layers.set_stage_layers("dev", [arn], project / ".chalice" / "config.json")
    # make deploy: pre-flight, each function's policy rendered for the account,
    # then chalice deploy
    code, output = run(sys.executable, "-m", "infra.deploy", "--stage", "dev",
                       "--project-dir", str(project))
    if code and "Could not install dependencies" in output and layers.unreachable(output):
        pytest.skip("PyPI is unreachable: chalice deploy cannot vendor requirements.txt")
    assert "stage dev: layer, resources and secrets are in place" in output, output
    assert "rendered .chalice/policy-dev-train_model.json" in output, output
    assert "Subscribing ml-api-dev-train_model to SQS queue ml-api-dev-training" in output, output
    # moto's own failure, at the last step (see the docstring)
    assert code != 0 and "Creating Rest API" in output, output[-2000:]
    assert "when calling the ImportRestApi operation" in output, output[-2000:]

    lambda_ = client("lambda")
    api = lambda_.get_function(FunctionName="ml-api-dev")["Configuration"]
    trainer = lambda_.get_function(FunctionName="ml-api-dev-train_model")
    config = trainer["Configuration"]
    assert (api["MemorySize"], api["Timeout"], api["Runtime"]) == (512, 30, "python3.13")
    assert (config["MemorySize"], config["Timeout"]) == (3008, 900)
    assert [layer["Arn"] for layer in config["Layers"]] == [arn]
    assert [layer["Arn"] for layer in api["Layers"]] == [arn]
    assert trainer["Concurrency"]["ReservedConcurrentExecutions"] == 5
    [mapping] = [m for m in lambda_.list_event_source_mappings()["EventSourceMappings"]
                 if m["FunctionArn"] == config["FunctionArn"]]
    assert mapping["EventSourceArn"].endswith(":ml-api-dev-training")
    assert mapping["BatchSize"] == 1
    # A role per function, each with that function's policy, scoped to the
    # account and region deployed to (moto's).
    account = client("sts").get_caller_identity()["Account"]
    expected = policies.render("dev", account=account, region=REGION)
    iam = client("iam")
    roles = {}
    for function_name, function in (("api_handler", api), ("train_model", config)):
        role = function["Role"].rsplit("/", 1)[1]
        [name] = iam.list_role_policies(RoleName=role)["PolicyNames"]
        document = iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
        assert (json.loads(document) if isinstance(document, str) else document) == \
            expected[function_name]
        roles[function_name] = role
    assert roles == {"api_handler": "ml-api-dev-api_handler",
                     "train_model": "ml-api-dev-train_model"}
    assert f":{REGION}:{account}:table/ml-api-dev-models" in json.dumps(expected["train_model"])


class _OnEmulator:
    """A session whose clients talk to the emulator."""

    def __init__(self, session, endpoint):
        self._session, self._endpoint = session, endpoint
        self.region_name = session.region_name

    def client(self, name):
        return self._session.client(name, endpoint_url=self._endpoint)


# --- the CloudFormation path, offline parts ------------------------------------------

def test_package_refuses_a_stage_without_its_layer(tmp_path):
    project = _project_copy(tmp_path)
    layers.set_stage_layers("prod", [], project / ".chalice" / "config.json")
    with pytest.raises(package.PackageError, match="stage prod has no layer in "
                                                   r".chalice/config.json.*make publish-layer"):
        package.package("prod", tmp_path / "out", project_dir=project)


def test_merge_template_wires_the_event_source_to_the_stacks_queue():
    template = package.merge_template("prod")
    assert set(template) == {"Resources", "Outputs"}
    event = template["Resources"]["TrainModel"]["Properties"]["Events"][
        "TrainModelSqsEventSource"]["Properties"]
    # Same key as Chalice's {"Fn::Sub": "arn:...:<name>"}, so the deep merge replaces it.
    assert event == {"Queue": {"Fn::Sub": "${TrainingQueue.Arn}"},
                     "ScalingConfig": {"MaximumConcurrency": 10}}
    assert template["Resources"]["ApiHandlerLogGroup"] == {"Properties": {
        "LogGroupName": {"Fn::Sub": "/aws/lambda/${APIHandler}"}}}
    # Upload forms from the stack's own API (the dashboard), not from anywhere.
    [cors] = template["Resources"]["ModelsBucket"]["Properties"]["CorsConfiguration"][
        "CorsRules"]
    assert cors["AllowedOrigins"] == [
        {"Fn::Sub": "https://${RestAPI}.execute-api.${AWS::Region}.${AWS::URLSuffix}"}]
    assert template["Resources"]["ModelsBucketPolicy"]["Properties"]["PolicyDocument"][
        "Statement"][0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    rule, batch_rule = template["Resources"]["ModelsBucket"]["Properties"][
        "LifecycleConfiguration"]["Rules"]
    assert (rule["Prefix"], rule["ExpirationInDays"]) == ("uploads/", 1)
    assert batch_rule["Prefix"] == "batches/"
    assert template["Resources"]["RunBatch"]["Properties"]["Events"]["RunBatchSqsEventSource"][
        "Properties"]["Queue"] == {"Fn::Sub": "${BatchQueue.Arn}"}


def test_package_scopes_each_roles_policy_to_the_stacks_account_and_region(tmp_path):
    """Rendered for CloudFormation, each function's policy names
    ${AWS::AccountId} and ${AWS::Region}; in the template every such string
    becomes an Fn::Sub."""
    documents = policies.render("prod", **policies.CLOUDFORMATION)
    table = "arn:${AWS::Partition}:dynamodb:${AWS::Region}:${AWS::AccountId}:table/ml-api-prod-models"
    assert table in documents["train_model"]["Statement"][3]["Resource"]
    template = {"Resources": {
        "TrainModelRole": {"Type": "AWS::IAM::Role", "Properties": {"Policies": [
            {"PolicyName": "TrainModelRolePolicy", "PolicyDocument": documents["train_model"]}]}},
        "Other": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": "${AWS::Region}"}}}}
    changed = policies.substitute_pseudo_parameters(template)
    document = template["Resources"]["TrainModelRole"]["Properties"]["Policies"][0][
        "PolicyDocument"]
    # Every ARN names the partition at least.
    assert changed == sum(len(st["Resource"]) for st in documents["train_model"]["Statement"])
    assert {"Fn::Sub": table} in document["Statement"][3]["Resource"]
    assert template["Resources"]["Other"]["Properties"]["QueueName"] == "${AWS::Region}"


def test_package_refuses_an_open_stage_without_the_opt_in(tmp_path, monkeypatch):
    project = _project_copy(tmp_path)
    keyless = {**stage.stage_environment("prod"), "REQUIRE_API_KEY": "false"}
    real = stage.stage_environment
    monkeypatch.setattr(stage, "stage_environment",
                        lambda name="dev": keyless if name == "prod" else real(name))
    with pytest.raises(package.PackageError, match="anyone on the internet"):
        package.package("prod", tmp_path / "out", project_dir=project, require_layer=False)
