"""What would be deployed, really built: the layer zip (infra.layer) and
`chalice package --merge-template` output (infra.package), measured against
Lambda's limits, linted with cfn-lint, and run together without the venv.

Needs PyPI for the first build (wheels are cached in dist/cache/); skipped
with a message when it is unreachable. About a minute."""
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from chalice.utils import to_cfn_resource_name

from devstack import stage
from infra import layer as layers
from infra import package, policies

pytestmark = pytest.mark.package

STAGE = "prod"
FAKE_LAYER = "arn:aws:lambda:us-east-1:123456789012:layer:ml-api-science:7"
MB = 1024 * 1024
PROJECT = stage.PROJECT_DIR
# What the python3.13 Lambda runtime itself provides besides the standard library.
RUNTIME_PACKAGES = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3", "six.py")


def _pypi_unreachable(tmp: Path) -> str | None:
    """Why PyPI cannot be reached, or None. A pin without a wheel for the
    runtime is not "unreachable": the build then fails, as it should."""
    pins = [line for line in (PROJECT / "requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                             "--dest", str(tmp), *layers.target_args(), *pins],
                            capture_output=True, text=True, timeout=600)
    if result.returncode and layers.unreachable(result.stderr):
        return result.stderr.strip().splitlines()[-1]
    return None


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The layer and the package of a copy of the project whose prod stage has
    a (made-up) published layer, as after `make publish-layer`."""
    tmp = tmp_path_factory.mktemp("package")
    problem = _pypi_unreachable(tmp / "probe")
    if problem:
        pytest.skip(f"PyPI is unreachable, so the layer and package cannot be built: {problem}")
    try:
        layer = layers.build(tmp / "layer")
    except layers.RegistryUnreachable as error:
        pytest.skip(f"PyPI is unreachable: {error}")
    project = tmp / "project"
    project.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "deployments", "deployed", "venv")
    for name in ("app.py", "requirements.txt"):
        shutil.copy(PROJECT / name, project / name)
    for name in ("chalicelib", ".chalice"):
        shutil.copytree(PROJECT / name, project / name, ignore=ignore)
    layers.set_stage_layers(STAGE, [FAKE_LAYER], project / ".chalice" / "config.json")
    template_path = package.package(STAGE, tmp / "out" / STAGE, project_dir=project)
    return {"layer": layer, "template_path": template_path,
            "template": json.loads(template_path.read_text()),
            "app_zip": template_path.parent / "deployment.zip", "tmp": tmp}


def test_app_zip_is_small_and_leaves_the_scientific_stack_to_the_layer(built):
    app_zip = built["app_zip"]
    size = app_zip.stat().st_size
    with zipfile.ZipFile(app_zip) as archive:
        tops = {name.split("/")[0] for name in archive.namelist()}
    print(f"\napp zip: {size / MB:.2f} MB zipped, {package.unzipped_bytes(app_zip) / MB:.2f} MB "
          f"unzipped; top level: {sorted(tops)}")
    assert size < layers.DIRECT_UPLOAD_LIMIT / 10, f"{size / MB:.1f} MB"
    assert {"app.py", "chalicelib", "chalice", "orjson"} <= tops
    with zipfile.ZipFile(app_zip) as archive:  # the dashboard page is a data file
        assert archive.read("chalicelib/dashboard.html") == \
            (PROJECT / "chalicelib" / "dashboard.html").read_bytes()
    heavy = {t for t in tops if t.split("-")[0].split(".")[0].lower()
             in {"numpy", "scipy", "sklearn", "scikit_learn", "joblib", "threadpoolctl",
                 "narwhals", "cloudpickle"}}
    assert not heavy, f"the app zip vendors {sorted(heavy)}, which belong in the layer"


def test_function_and_layer_fit_lambdas_limits(built):
    layer, app_zip = built["layer"], built["app_zip"]
    total = layer.unzipped_bytes + package.unzipped_bytes(app_zip)
    print(f"\nlayer: {layer.zipped_bytes / MB:.1f} MB zipped, {layer.unzipped_bytes / MB:.1f} MB "
          f"unzipped, {layer.files} files; function + layer unzipped: {total / MB:.1f} MB "
          f"(limit {layers.UNZIPPED_LIMIT / MB:.0f} MB)")
    assert total < layers.UNZIPPED_LIMIT
    # Too big to send with the API call: published from S3 (infra.layer.publish).
    assert layer.zipped_bytes > layers.DIRECT_UPLOAD_LIMIT


def test_layer_has_bytecode_and_no_test_suites(built):
    with zipfile.ZipFile(built["layer"].zip_path) as archive:
        names = archive.namelist()
    assert all(name.startswith("python/") for name in names)
    assert not [n for n in names if "/tests/" in n]
    assert any(n.startswith("python/sklearn/__pycache__/__init__.cpython-313") for n in names)
    for pin in layers.REQUIREMENTS.read_text().split():
        if "==" in pin:
            name, version = pin.split("==")
            dist = name.replace("-", "_")
            assert f"python/{dist}-{version}.dist-info/METADATA" in names, pin


def test_template_lints_clean(built):
    assert package.lint(built["template_path"]) == ""


def test_template_wires_layer_queue_and_settings(built):
    resources = built["template"]["Resources"]
    trainer, api = resources["TrainModel"]["Properties"], resources["APIHandler"]["Properties"]
    for function in (trainer, api):
        assert function["Runtime"] == "python3.13"
        assert function["Layers"] == [FAKE_LAYER]
    assert (api["MemorySize"], api["Timeout"]) == (512, 30)
    assert (trainer["MemorySize"], trainer["Timeout"]) == (3008, 900)
    reserved = trainer["ReservedConcurrentExecutions"]
    event = trainer["Events"]["TrainModelSqsEventSource"]["Properties"]
    assert event["Queue"] == {"Fn::Sub": "${TrainingQueue.Arn}"}
    assert event["ScalingConfig"] == {"MaximumConcurrency": reserved}
    assert event["BatchSize"] == 1
    runner = resources["RunBatch"]["Properties"]
    assert (runner["MemorySize"], runner["Timeout"]) == (512, 900)
    event = runner["Events"]["RunBatchSqsEventSource"]["Properties"]
    assert event["Queue"] == {"Fn::Sub": "${BatchQueue.Arn}"}
    assert event["ScalingConfig"] == {"MaximumConcurrency": runner["ReservedConcurrentExecutions"]}
    for name in ("ModelsBucket", "ModelsTable", "TrainingQueue", "TrainingDeadLetterQueue",
                 "BatchesTable", "BatchQueue", "BatchDeadLetterQueue"):
        assert name in resources
    assert resources["TrainingQueue"]["Properties"]["QueueName"] == "ml-api-prod-training"
    # A role per function, each with its own policy, scoped to the stack's
    # account and region through Fn::Sub.
    roles = {name: r["Properties"] for name, r in resources.items()
             if r["Type"] == "AWS::IAM::Role"}
    assert sorted(roles) == ["ApiHandlerRole", "ApiKeyAuthorizerRole", "RunBatchRole",
                             "SweepExpiredRole", "TrainModelRole"]
    for function, resource in (("api_handler", "APIHandler"), ("train_model", "TrainModel"),
                               ("api_key_authorizer", "ApiKeyAuthorizer"),
                               ("sweep_expired", "SweepExpired"), ("run_batch", "RunBatch")):
        role = resources[resource]["Properties"]["Role"]
        assert role == {"Fn::GetAtt": [f"{to_cfn_resource_name(function)}Role", "Arn"]}
        [policy] = roles[f"{to_cfn_resource_name(function)}Role"]["Policies"]
        document = policy["PolicyDocument"]
        rendered = {"Resources": {"R": {"Type": "AWS::IAM::Role", "Properties": {"Policies": [
            {"PolicyDocument": policies.render(STAGE, **policies.CLOUDFORMATION)[function]}]}}}}
        policies.substitute_pseudo_parameters(rendered)
        expected = rendered["Resources"]["R"]["Properties"]["Policies"][0]["PolicyDocument"]
        assert document == expected, function
        for statement in document["Statement"]:
            for arn in statement["Resource"]:
                assert set(arn) == {"Fn::Sub"}, arn
                if ":s3:::" not in arn["Fn::Sub"]:
                    assert ":${AWS::Region}:${AWS::AccountId}:" in arn["Fn::Sub"], arn
    # What API Gateway hands Lambda: text for CSV and JSON (api.event_bytes).
    from chalicelib import api as service_api
    swagger = resources["RestAPI"]["Properties"]["DefinitionBody"]
    assert tuple(swagger["x-amazon-apigateway-binary-media-types"]) == \
        service_api.BINARY_MEDIA_TYPES
    groups = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::Logs::LogGroup"]
    assert sorted(g["LogGroupName"]["Fn::Sub"] for g in groups) == [
        "/aws/lambda/${APIHandler}", "/aws/lambda/${ApiKeyAuthorizer}",
        "/aws/lambda/${RunBatch}", "/aws/lambda/${SweepExpired}", "/aws/lambda/${TrainModel}"]
    # The sweep of expired models, on EventBridge's schedule.
    sweep = resources["SweepExpired"]["Properties"]
    assert (sweep["MemorySize"], sweep["Timeout"], sweep["Layers"]) == (256, 300, [FAKE_LAYER])
    [schedule] = sweep["Events"].values()
    assert schedule["Type"] == "Schedule"
    assert schedule["Properties"]["Schedule"] == "rate(10 minutes)"
    assert {g["RetentionInDays"] for g in groups} == {90}
    # prod: API Gateway checks X-Api-Key with the app's authorizer on every route
    # but the dashboard page, which holds no data and asks for the key itself.
    assert resources["ApiKeyAuthorizer"]["Properties"]["Layers"] == [FAKE_LAYER]
    swagger = resources["RestAPI"]["Properties"]["DefinitionBody"]
    [authorizer] = swagger["securityDefinitions"].values()
    assert (authorizer["in"], authorizer["name"]) == ("header", "X-Api-Key")
    for path, methods in swagger["paths"].items():
        for method, operation in methods.items():
            if method != "options":
                page = path in ("/", "/dashboard")
                assert bool(operation.get("security")) != page, (path, method)


def test_app_runs_on_the_layer_alone(built):
    """The deployment zip + the layer + what the runtime provides, and nothing
    from the venv: every module imports, and a model trains and predicts."""
    tmp = built["tmp"]
    task, opt, runtime = tmp / "var-task", tmp / "opt", tmp / "runtime"
    with zipfile.ZipFile(built["app_zip"]) as archive:
        archive.extractall(task)
    with zipfile.ZipFile(built["layer"].zip_path) as archive:
        archive.extractall(opt)
    runtime.mkdir()
    site = Path(next(p for p in sys.path if p.endswith("site-packages")))
    for name in RUNTIME_PACKAGES:
        (runtime / name).symlink_to(site / name)
    probe = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(task)!r}, {str(opt / "python")!r}, {str(runtime)!r}]
        import importlib, pkgutil
        import app, chalicelib
        for module in pkgutil.iter_modules(chalicelib.__path__):
            importlib.import_module("chalicelib." + module.name)
        import numpy, sklearn, chalice, orjson
        from sklearn.datasets import load_iris
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        X, y = load_iris(return_X_y=True)
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(X, y)
        assert model.score(X, y) > 0.9
        for module in (numpy, sklearn, chalice, orjson, app):
            print(module.__name__, module.__file__)
    """)
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run([sys.executable, "-S", "-I", "-c", probe], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    where = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert where["numpy"].startswith(str(opt)) and where["sklearn"].startswith(str(opt))
    for name in ("chalice", "orjson", "app"):
        assert where[name].startswith(str(task)), (name, where[name])
