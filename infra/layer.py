"""The scientific-stack Lambda layer: numpy, scipy, scikit-learn and their
dependencies (requirements-layer.txt), built for the python3.13 x86_64 runtime
and published through S3.

Why a layer: vendored by Chalice they make a ~61 MB zip, over the 50 MB that
CreateFunction (`chalice deploy`) accepts directly. A layer published from S3
is limited only by Lambda's 250 MB unzipped (function + layers), so Chalice
bundles just app.py, chalicelib/ and requirements.txt.

    python -m infra.layer build                              # dist/layer/ml-api-science.zip
    python -m infra.layer publish --stage dev --bucket B     # upload, publish, set the ARN

The build:
- pip installs manylinux wheels for CPython 3.13 into python/ (Lambda puts
  /opt/python on sys.path). numpy >= 2.3 and scipy ship manylinux_2_28 wheels
  only, so the manylinux_2_28 (and 2_34: Amazon Linux 2023's glibc) platforms
  are passed besides manylinux2014; pip does not widen manylinux_2_x itself.
- drops the packages' own test suites (33 MB nothing imports),
- compiles every module to bytecode (unchecked-hash .pyc): /opt is read-only,
  so without them each cold start compiles scikit-learn again (measured
  here: importing its linear_model, pipeline and preprocessing takes 4.8 s
  without .pyc files and 1.3 s with them),
- zips in a fixed order with fixed timestamps.
Publishing is keyed on the build's inputs (the pins, runtime, platforms): a
layer version built from the same inputs is reused, not published again.
Wheels are cached in dist/cache/layer-wheels/ (ignored by git); once they
are there the build needs no network.
"""
from __future__ import annotations

import argparse
import compileall
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
REQUIREMENTS = PROJECT_DIR / "requirements-layer.txt"
DIST = PROJECT_DIR / "dist"
WHEEL_CACHE = DIST / "cache" / "layer-wheels"
BUILD_DIR = DIST / "layer"
LAYER_NAME = "ml-api-science"
CONFIG_PATH = PROJECT_DIR / ".chalice" / "config.json"

PYTHON_VERSION = "%d.%d" % sys.version_info[:2]  # Chalice deploys to the local Python's runtime
RUNTIME = f"python{PYTHON_VERSION}"
ARCHITECTURE = "x86_64"
PLATFORMS = ["manylinux2014_x86_64", "manylinux_2_28_x86_64", "manylinux_2_34_x86_64"]

MB = 1024 * 1024
UNZIPPED_LIMIT = 250 * MB       # function + all its layers, unzipped
DIRECT_UPLOAD_LIMIT = 50 * MB   # a zip sent in the API call itself (chalice deploy)

_ZIP_DATE = (2020, 1, 1, 0, 0, 0)


class RegistryUnreachable(RuntimeError):
    """pip could not fetch the wheels (offline, or PyPI down)."""


@dataclass(frozen=True)
class Layer:
    zip_path: Path
    inputs: str  # sha256 of what the build depends on (inputs_digest)
    zipped_bytes: int
    unzipped_bytes: int
    files: int

    def summary(self) -> str:
        return (f"{self.zip_path}: {self.zipped_bytes / MB:.1f} MB zipped, "
                f"{self.unzipped_bytes / MB:.1f} MB unzipped, {self.files} files, "
                f"inputs {self.inputs[:12]}")


# Bump when the build itself changes (pruning, compiling) so a new version is published.
BUILD_FORMAT = 1


def inputs_digest(requirements: Path = REQUIREMENTS) -> str:
    recipe = json.dumps([BUILD_FORMAT, RUNTIME, ARCHITECTURE, PLATFORMS,
                         requirements.read_text()])
    return hashlib.sha256(recipe.encode()).hexdigest()


# What pip prints when it cannot reach the index at all (as opposed to a pin
# that has no wheel for the target, which is a real error).
_NETWORK_ERRORS = re.compile(r"NewConnectionError|Failed to establish a new connection|"
                             r"Temporary failure in name resolution|Name or service not known|"
                             r"Network is unreachable|ConnectTimeout|ProxyError|"
                             r"Max retries exceeded|SSLError")


def unreachable(pip_output: str) -> bool:
    return bool(_NETWORK_ERRORS.search(pip_output))


def target_args() -> list[str]:
    """pip options that select wheels for the Lambda runtime, not this machine."""
    args = ["--only-binary=:all:", "--implementation", "cp",
            "--python-version", PYTHON_VERSION, "--abi", f"cp{PYTHON_VERSION.replace('.', '')}"]
    for platform in PLATFORMS:
        args += ["--platform", platform]
    return args


def _pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                          capture_output=True, text=True)


def _install(target: Path, requirements: Path, cache: Path) -> None:
    """Installs from the wheel cache, filling it from PyPI first if needed."""
    def offline() -> subprocess.CompletedProcess:
        return _pip("install", "--no-index", "--find-links", str(cache), "--target",
                    str(target), "--no-compile", "--quiet", *target_args(),
                    "-r", str(requirements))

    result = offline() if cache.is_dir() else None
    if result is None or result.returncode != 0:
        cache.mkdir(parents=True, exist_ok=True)
        download = _pip("download", "--dest", str(cache), "--quiet", *target_args(),
                        "-r", str(requirements))
        if download.returncode != 0:
            tail = "\n".join(download.stderr.strip().splitlines()[-5:])
            error = RegistryUnreachable if unreachable(download.stderr) else RuntimeError
            raise error(f"pip could not download the layer's wheels for {RUNTIME} "
                        f"{ARCHITECTURE} ({requirements.name}):\n{tail}")
        shutil.rmtree(target, ignore_errors=True)
        result = offline()
    if result.returncode != 0:
        raise RuntimeError(f"pip install of {requirements.name} failed:\n{result.stderr[-2000:]}")


def _prune(site: Path) -> None:
    """Test suites (numpy/**/tests, scipy/**/tests, sklearn/**/tests): nothing imports them."""
    for tests in sorted(site.glob("*/**/tests"), reverse=True):
        if tests.is_dir():
            shutil.rmtree(tests)
    for cache in site.rglob("__pycache__"):
        shutil.rmtree(cache)


def _compile(site: Path) -> None:
    # Paths in the bytecode are where Lambda mounts the layer (tracebacks
    # then name real files, and the bytes do not depend on the build folder).
    ok = compileall.compile_dir(str(site), quiet=1, workers=os.cpu_count() or 1,
                                stripdir=str(site), prependdir="/opt/python",
                                invalidation_mode=compileall.py_compile.PycInvalidationMode
                                .UNCHECKED_HASH)
    if not ok:
        raise RuntimeError(f"compiling {site} to bytecode failed")


def _zip(root: Path, zip_path: Path) -> None:
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    partial = zip_path.with_suffix(".zip.partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        for path in sorted(root.rglob("*")):
            if path.is_dir():
                continue
            info = zipfile.ZipInfo(str(path.relative_to(root)), date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (0o755 if os.access(path, os.X_OK) else 0o644) << 16
            archive.writestr(info, path.read_bytes(), compresslevel=6)
    partial.replace(zip_path)


def measure(zip_path: Path, inputs: str) -> Layer:
    with zipfile.ZipFile(zip_path) as archive:
        infos = [info for info in archive.infolist() if not info.is_dir()]
    return Layer(zip_path, inputs, zip_path.stat().st_size,
                 sum(info.file_size for info in infos), len(infos))


def built(out_dir: Path = BUILD_DIR, requirements: Path = REQUIREMENTS) -> Layer:
    """The layer `build` left in out_dir, if it is up to date with the pins."""
    manifest_path = out_dir / "manifest.json"
    if not manifest_path.exists():
        raise SystemExit(f"{out_dir / (LAYER_NAME + '.zip')} is missing: run `make layer` first")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("inputs") != inputs_digest(requirements):
        raise SystemExit(f"{out_dir} was built from other pins than {requirements.name}: "
                         "run `make layer` again")
    return measure(Path(manifest["zip_path"]), manifest["inputs"])


def build(out_dir: Path = BUILD_DIR, requirements: Path = REQUIREMENTS,
          cache: Path = WHEEL_CACHE) -> Layer:
    """Builds <out_dir>/ml-api-science.zip (and its unzipped tree in <out_dir>/tree)."""
    tree = out_dir / "tree"
    shutil.rmtree(tree, ignore_errors=True)
    site = tree / "python"
    _install(site, requirements, cache)
    _prune(site)
    _compile(site)
    zip_path = out_dir / f"{LAYER_NAME}.zip"
    _zip(tree, zip_path)
    layer = measure(zip_path, inputs_digest(requirements))
    if layer.unzipped_bytes >= UNZIPPED_LIMIT:
        raise RuntimeError(f"the layer alone is {layer.unzipped_bytes / MB:.1f} MB unzipped; "
                           f"Lambda allows {UNZIPPED_LIMIT / MB:.0f} MB for function + layers")
    manifest = {**asdict(layer), "zip_path": str(layer.zip_path), "runtime": RUNTIME,
                "architecture": ARCHITECTURE,
                "requirements": requirements.read_text()}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return layer


# --- publishing -----------------------------------------------------------------------

def _description(layer: Layer) -> str:
    return f"numpy, scipy, scikit-learn for ml-api ({RUNTIME} {ARCHITECTURE}); inputs {layer.inputs}"


def publish(session, layer: Layer, bucket: str) -> str:
    """Uploads the zip to s3://bucket/layers/ and publishes it; returns the
    layer version ARN. A version built from the same inputs is reused."""
    lambda_ = session.client("lambda")
    for page in lambda_.get_paginator("list_layer_versions").paginate(LayerName=LAYER_NAME):
        for version in page["LayerVersions"]:
            if layer.inputs in version.get("Description", ""):
                return version["LayerVersionArn"]
    s3 = session.client("s3")
    region = session.region_name or "us-east-1"
    location = s3.get_bucket_location(Bucket=bucket).get("LocationConstraint") or "us-east-1"
    if location != region:
        raise SystemExit(f"bucket {bucket} is in {location}, the layer is published in "
                         f"{region}: Lambda reads layer zips from the same region only")
    key = f"layers/{LAYER_NAME}/{layer.inputs}.zip"
    s3.upload_file(str(layer.zip_path), bucket, key)
    return lambda_.publish_layer_version(
        LayerName=LAYER_NAME, Description=_description(layer),
        Content={"S3Bucket": bucket, "S3Key": key},
        CompatibleRuntimes=[RUNTIME], CompatibleArchitectures=[ARCHITECTURE],
    )["LayerVersionArn"]


def set_stage_layers(stage: str, arns: list[str], config_path: Path = CONFIG_PATH) -> None:
    """Writes `"layers": [...]` of one stage in .chalice/config.json, leaving
    the rest of the file (and its layout) as it is."""
    text = config_path.read_text()
    config = json.loads(text)
    if stage not in config.get("stages", {}):
        raise SystemExit(f"stage {stage!r} is not in {config_path}")
    wanted = json.loads(text)
    wanted["stages"][stage]["layers"] = arns
    start = re.search(r'\n(\s*)"%s"\s*:\s*\{' % re.escape(stage), text)
    layers = re.compile(r'"layers"\s*:\s*\[[^\]]*\]')
    match = layers.search(text, start.end()) if start else None
    new = None
    if match:
        new = text[:match.start()] + '"layers": ' + json.dumps(arns) + text[match.end():]
        if json.loads(new) != wanted:
            new = None
    if new is None:  # no "layers" line in that stage yet: write the file anew
        new = json.dumps(wanted, indent=2) + "\n"
    config_path.write_text(new)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("build", help=f"build dist/layer/{LAYER_NAME}.zip")
    publish_cmd = commands.add_parser("publish", help="upload via S3, publish, write the ARN "
                                                      "into .chalice/config.json")
    publish_cmd.add_argument("--stage", required=True)
    publish_cmd.add_argument("--bucket", default=os.environ.get("DEPLOY_BUCKET"),
                             help="an S3 bucket of yours in the target region (DEPLOY_BUCKET)")
    args = parser.parse_args()
    if args.command == "build":
        try:
            print(build().summary())
        except RegistryUnreachable as error:
            raise SystemExit(str(error)) from None
        return
    if not args.bucket:
        raise SystemExit("set DEPLOY_BUCKET (or --bucket) to an S3 bucket in the target "
                         "region that you can write to, e.g. `aws s3 mb s3://ml-api-deploy-"
                         "<account id>`; the layer zip is uploaded there")
    layer = built()
    import boto3

    session = boto3.session.Session()
    arn = publish(session, layer, args.bucket)
    set_stage_layers(args.stage, [arn])
    print(f"{arn}\n(.chalice/config.json, stage {args.stage}: \"layers\": [that ARN])")


if __name__ == "__main__":
    main()
