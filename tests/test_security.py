"""Signed artifacts, API keys and body limits."""
import hashlib
import pickle

import pytest
from chalice.test import Client

from app import app
from chalicelib import api, components
from chalicelib.security import ApiKeys, ArtifactSigner, ConfigurationError, TamperedArtifact
from chalicelib.storage import PIPELINE_ARTIFACT, SERVING_ARTIFACT, artifact_key
from tests.conftest import IRIS, queue_messages
from tests.test_service import _train_queued

CSV = {"Content-Type": "text/csv"}


@pytest.fixture
def ready_model(aws):
    submission = components.service().submit(IRIS)
    assert _train_queued(aws) == ["ready"]
    return submission.model_id


def _overwrite(session, model_id, name, blob, metadata=None):
    kwargs = {"Metadata": metadata} if metadata is not None else {}
    session.client("s3").put_object(Bucket=components.settings().bucket,
                                    Key=artifact_key(model_id, name), Body=blob, **kwargs)


def test_artifacts_carry_an_hmac_that_matches_their_bytes(aws, ready_model):
    s3 = aws.client("s3")
    for name in (PIPELINE_ARTIFACT, SERVING_ARTIFACT):
        obj = s3.get_object(Bucket=components.settings().bucket, Key=artifact_key(ready_model, name))
        blob = obj["Body"].read()
        assert obj["Metadata"]["hmac-sha256"] == components.store().sign(ready_model, name, blob)
    pipeline = pickle.loads(components.store().get_artifact(ready_model, PIPELINE_ARTIFACT))
    assert pipeline.predict([[6.9, 3.1, 5.1, 2.3]]).tolist() == ["virginica"]


@pytest.mark.parametrize("metadata", [None, {"hmac-sha256": "0" * 64}])
@pytest.mark.parametrize("embedded", [True, False], ids=["embedded in the item", "S3 only"])
def test_a_tampered_artifact_is_refused_with_a_clear_error(aws, monkeypatch, metadata, embedded):
    from chalicelib import training

    if not embedded:  # a model too large to ride in its status item
        monkeypatch.setattr(training, "EMBED_LIMIT_BYTES", 0)
    submission = components.service().submit(IRIS)
    assert _train_queued(aws) == ["ready"]
    ready_model = submission.model_id
    assert (components.registry().get(ready_model).serving is not None) == embedded
    original = components.store().get_artifact(ready_model, SERVING_ARTIFACT)
    middle = len(original) // 2
    forged = original[:middle] + bytes([original[middle] ^ 0xFF]) + original[middle + 1:]
    _overwrite(aws, ready_model, SERVING_ARTIFACT, forged, metadata)
    _overwrite(aws, ready_model, PIPELINE_ARTIFACT, pickle.dumps("not a model"), metadata)
    if embedded:
        aws.client("dynamodb").update_item(
            TableName=components.settings().table, Key={"model_id": {"S": ready_model}},
            UpdateExpression="SET serving = :forged",
            ExpressionAttributeValues={":forged": {"B": forged}})
    with pytest.raises(TamperedArtifact, match="integrity check"):
        components.store().get_artifact(ready_model, PIPELINE_ARTIFACT)
    components.reset()  # a cold container, so the model is read from storage
    with Client(app) as client:
        response = client.http.get(f"/models/{ready_model}", headers=CSV, body=b"1,2,3,4")
    assert response.status_code == 409
    assert "failed its integrity check (HMAC-SHA256" in response.body.decode()
    assert "changed outside ml-api" in response.body.decode()


def _artifact_answer(model_id):
    with Client(app) as client:
        return client.http.get(f"/models/{model_id}/artifact")


def test_the_artifact_answer_carries_the_sha256_stored_at_training(aws, ready_model):
    """Clients check a download against the answer's SHA-256, without the
    signing key. It is written to the status item when the pickle is stored,
    so replacing the object in the bucket (its metadata too) does not change it."""
    bucket = components.settings().bucket
    stored = aws.client("s3").get_object(Bucket=bucket,
                                         Key=artifact_key(ready_model, PIPELINE_ARTIFACT))
    blob = stored["Body"].read()
    digest = hashlib.sha256(blob).hexdigest()
    assert components.registry().get(ready_model).pipeline_sha256 == digest
    answer = _artifact_answer(ready_model)
    assert answer.status_code == 200
    assert answer.json_body["sha256"] == digest
    assert "signature" not in answer.json_body  # nothing that needs the key
    _overwrite(aws, ready_model, PIPELINE_ARTIFACT, pickle.dumps("not a model"),
               stored["Metadata"])
    assert _artifact_answer(ready_model).json_body["sha256"] == digest


def test_an_item_without_the_sha256_gets_it_from_the_signed_artifact(aws, ready_model):
    """Models trained before the digest was stored: the route reads the pickle,
    checks its HMAC and hashes it; a tampered or missing pickle is a 409."""
    table, bucket = components.settings().table, components.settings().bucket
    aws.client("dynamodb").update_item(TableName=table, Key={"model_id": {"S": ready_model}},
                                       UpdateExpression="REMOVE pipeline_sha256")
    blob = components.store().get_artifact(ready_model, PIPELINE_ARTIFACT)
    answer = _artifact_answer(ready_model)
    assert (answer.status_code, answer.json_body["sha256"]) == (
        200, hashlib.sha256(blob).hexdigest())
    _overwrite(aws, ready_model, PIPELINE_ARTIFACT, pickle.dumps("not a model"))
    tampered = _artifact_answer(ready_model)
    assert tampered.status_code == 409
    assert "failed its integrity check" in tampered.body.decode()
    aws.client("s3").delete_object(Bucket=bucket, Key=artifact_key(ready_model, PIPELINE_ARTIFACT))
    missing = _artifact_answer(ready_model)
    assert missing.status_code == 409
    assert f"models/{ready_model}/model.pkl is missing" in missing.body.decode()


def test_another_key_cannot_verify():
    ours = ArtifactSigner(lambda: b"a" * 32)
    theirs = ArtifactSigner(lambda: b"b" * 32)
    with pytest.raises(TamperedArtifact):
        ours.verify("models/a/serving.npz", b"blob", theirs.sign("models/a/serving.npz", b"blob"))
    assert ours.verify("models/a/serving.npz", b"blob",
                       ours.sign("models/a/serving.npz", b"blob")) == b"blob"


def test_a_signature_does_not_verify_under_another_name():
    signer = ArtifactSigner(lambda: b"a" * 32)
    signature = signer.sign("models/b/serving.npz", b"blob")
    with pytest.raises(TamperedArtifact, match="models/a/serving.npz failed its integrity"):
        signer.verify("models/a/serving.npz", b"blob", signature)


def test_missing_signing_key_is_a_503_not_a_crash(aws, ready_model, monkeypatch):
    monkeypatch.delenv("MODEL_SIGNING_KEY")
    monkeypatch.delenv("MODEL_SIGNING_KEY_PARAMETER")
    components.reset()
    with pytest.raises(ConfigurationError, match="no model signing key"):
        components.store().get_artifact(ready_model, SERVING_ARTIFACT)
    components.reset()
    # The dev stage names an SSM parameter that was never created.
    with Client(app) as client:
        response = client.http.get(f"/models/{ready_model}", headers=CSV, body=b"1,2,3,4")
        assert response.status_code == 503
        assert response.body.decode() == (
            "The service is misconfigured: the SSM parameter /ml-api/dev/model-signing-key "
            "(MODEL_SIGNING_KEY_PARAMETER) does not exist.")
        # Routes that need no artifact still work.
        assert client.http.post(f"/check_model_status/{ready_model}").status_code == 200


def test_signing_key_from_ssm(aws, monkeypatch):
    aws.client("ssm").put_parameter(Name="/ml-api/dev/model-signing-key", Type="SecureString",
                                    Value="from-ssm-0123456789")
    monkeypatch.delenv("MODEL_SIGNING_KEY")
    monkeypatch.setenv("MODEL_SIGNING_KEY_PARAMETER", "/ml-api/dev/model-signing-key")
    signer = ArtifactSigner.from_env(lambda: aws.client("ssm"))
    assert signer.verify("k", b"x", ArtifactSigner(lambda: b"from-ssm-0123456789").sign("k", b"x"))


@pytest.mark.parametrize("method, path", [
    ("POST", "/models"), ("GET", "/models/model_x"), ("POST", "/models/model_x"),
    ("POST", "/check_model_status/model_x"), ("GET", "/check_model_status/model_x")])
def test_api_key_required_when_turned_on(keyed, method, path):
    missing = keyed.http.request(method, path, headers=CSV, body=IRIS)
    assert (missing.status_code, missing.body.decode()) == (
        401, "Missing API key: send it in the X-Api-Key header.")
    wrong = keyed.http.request(method, path, headers={**CSV, "X-Api-Key": "nope"}, body=IRIS)
    assert (wrong.status_code, wrong.body.decode()) == (403, "The API key in X-Api-Key is not valid.")


def test_refusals_do_not_tell_whether_a_model_exists(keyed):
    model_id = keyed.http.post("/models", headers={**CSV, "X-Api-Key": "beta-key"},
                               body=IRIS).json_body["model_id"]
    for path in (f"/check_model_status/{model_id}", "/check_model_status/model_unknown"):
        assert keyed.http.post(path).body.decode() == "Missing API key: send it in the X-Api-Key header."
        assert keyed.http.post(path, headers={"X-Api-Key": "x"}).status_code == 403
    ok = keyed.http.post(f"/check_model_status/{model_id}", headers={"X-Api-Key": "alpha-key"})
    assert ok.status_code == 200


def test_api_keys_follow_require_api_key_and_default_to_on_only_in_lambda(monkeypatch):
    monkeypatch.delenv("REQUIRE_API_KEY", raising=False)
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME", raising=False)
    assert not ApiKeys.from_env(lambda: None).required  # a local process
    monkeypatch.setenv("API_KEYS", "k")
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "ml-api-dev")
    assert ApiKeys.from_env(lambda: None).required  # deployed
    monkeypatch.setenv("REQUIRE_API_KEY", "false")
    assert not ApiKeys.from_env(lambda: None).required  # a stage's explicit opt-out


def test_required_but_no_keys_configured_refuses_everything():
    keys = ApiKeys(frozenset())
    assert keys.refusal("anything")[0] == 403


def test_bodies_over_the_limits_are_413_before_parsing(aws, monkeypatch):
    with Client(app) as client:
        big = b"x" * (api.TRAINING_BODY_LIMIT_BYTES + 1)
        response = client.http.post("/models", headers=CSV, body=big)
        assert response.status_code == 413
        assert response.body.decode() == (
            "The body is 5.94 MB, 5.94 MB as API Gateway passes it to Lambda, which takes at "
            "most 6 MB per request: training data sent to POST /models may take at most "
            "5.94 MB there. Send larger datasets through POST /uploads.")
        big = b"x" * (api.PREDICT_BODY_LIMIT_BYTES + 1)
        response = client.http.post("/models/model_x", headers=CSV, body=big)
        assert response.status_code == 413
        assert "a prediction request may take at most 5.94 MB there. Send fewer rows" in \
            response.body.decode()
    assert queue_messages(aws, components.settings().queue) == []


def test_api_gateway_authorizer_allows_valid_keys_only(aws, monkeypatch):
    from chalice.app import AuthRequest

    monkeypatch.setenv("REQUIRE_API_KEY", "true")
    monkeypatch.setenv("API_KEYS", "alpha-key")
    components.reset()
    request = AuthRequest("TOKEN", "alpha-key",
                          "arn:aws:execute-api:us-east-1:1:abc/api/GET/models/m1")
    handlers = app.builtin_auth_handlers  # registered even where routes do not use it
    assert [h.name for h in handlers] == ["api_key_authorizer"]
    assert api.authorize("alpha-key").routes == ["*"]
    assert api.authorize("beta-key").routes == []
    assert api.authorize(None).routes == []
    policy = api.authorize("alpha-key").to_dict(request)["policyDocument"]
    assert policy["Statement"][0]["Effect"] == "Allow"


def test_authorizer_fails_closed_when_keys_cannot_be_read(aws, monkeypatch):
    monkeypatch.setenv("REQUIRE_API_KEY", "true")
    monkeypatch.delenv("API_KEYS", raising=False)
    monkeypatch.setenv("API_KEYS_PARAMETER", "/ml-api/prod/missing")
    components.reset()
    assert api.authorize("anything").routes == []


def test_routes_carry_the_authorizer_only_where_the_stage_asks(tmp_path):
    import subprocess
    import sys

    from devstack import stage

    # The dashboard page (/ and /dashboard) asks for the key itself: never an authorizer.
    script = ("import app; print(sorted({str(getattr(e.authorizer, 'name', None)) "
              "for p, m in app.app.routes.items() "
              "if p not in ('/', '/dashboard') for e in m.values()}), "
              "sorted({str(e.authorizer) for p in ('/', '/dashboard') "
              "for e in app.app.routes[p].values()}))")
    for stage_name, expected in (("dev", "['None'] ['None']"),
                                 ("prod", "['api_key_authorizer'] ['None']")):
        env = {"PATH": "/usr/bin:/bin", **stage.stage_environment(stage_name)}
        out = subprocess.run([sys.executable, "-c", script], cwd=stage.PROJECT_DIR, env=env,
                             capture_output=True, text=True, check=True).stdout.strip()
        assert out == expected, stage_name


def test_security_rows_form_their_own_section_of_the_report():
    from tests import reliability

    rows = [reliability.Row("Training queue", "Trainer killed", "SIGKILL", 3, "READY once"),
            reliability.Row("Security: AWS rules", "Presigned requests", "read them", 2, "SigV4")]
    report = reliability.render(rows)
    general, security = report.split("## Security")
    assert "| Training queue | Trainer killed |" in general and "SigV4" not in general
    assert "| Security: AWS rules | Presigned requests | read them | 2 | SigV4 |" in security
    assert "## Security" not in reliability.render(rows[:1])
