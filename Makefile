# The two set-up commands: `make run` and `make test`. Both create .venv first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PYTHON ?= $(shell devstack/find-python.sh)
STAMP := $(VENV)/.installed
# uv installs the pinned requirements (pip took 4 to 6 minutes for LocalStack's alone),
# compiled to bytecode at once as pip does: otherwise each first import of
# scikit-learn compiles it (iris took 22 s to train on a fresh clone).
UV_VERSION := 0.13.9
UV := $(VENV)/bin/uv

.PHONY: run test venv localstack-venv bootstrap clean layer publish-layer secrets deploy package teardown bench

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt $(wildcard pyproject.toml) $(wildcard requirements-layer.txt) devstack/find-python.sh
	@if [ -z "$(PYTHON)" ]; then \
	  echo "error: no Python 3.13 (or 3.12) found. Install one (e.g. 'pyenv install 3.13.0')" \
	       "or point at it: make PYTHON=/path/to/python3.13 $(MAKECMDGOALS)" >&2; exit 1; fi
	@command -v "$(PYTHON)" >/dev/null 2>&1 || { echo "error: PYTHON=$(PYTHON) is not a program" >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] >= (3, 12) else \
	  "error: $(PYTHON) is Python %d.%d; ml-api needs 3.13 (or 3.12): Chalice deploys to the Lambda runtime of the local Python" % sys.version_info[:2])'
	$(PYTHON) -m venv --clear $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(UV) pip install --quiet --compile-bytecode --python $(PY) -r requirements-dev.txt
	$(UV) pip install --quiet --python $(PY) --no-deps --no-build-isolation -e .
	touch $(STAMP)

# LocalStack's core runtime and our DynamoDB provider plugin, in a venv of
# their own (never shipped): `EMULATOR=localstack make run` and the tests'
# LocalStack pass use it. docs/localstack.md.
LS_VENV := .venv-localstack
LS_BASE := $(LS_VENV)/.runtime-installed
LS_STAMP := $(LS_VENV)/.installed

localstack-venv: $(LS_STAMP)

$(LS_BASE): devstack/localstack-requirements.txt devstack/find-python.sh | $(STAMP)
	@if [ -z "$(PYTHON)" ]; then \
	  echo "error: no Python 3.13 found for LocalStack's venv; make PYTHON=/path/to/python3.13 localstack-venv" >&2; exit 1; fi
	$(PYTHON) -m venv --clear $(LS_VENV)
	$(UV) pip install --quiet --compile-bytecode --python $(LS_VENV)/bin/python -r devstack/localstack-requirements.txt
	touch $(LS_BASE)

# Our plugin alone is reinstalled when it changes (seconds, not minutes).
$(LS_STAMP): $(LS_BASE) devstack/localstack_plugins/pyproject.toml $(wildcard devstack/localstack_plugins/mlapi_localstack/*.py)
	$(UV) pip install --quiet --python $(LS_VENV)/bin/python --no-deps --reinstall ./devstack/localstack_plugins
	touch $(LS_STAMP)

# EMULATOR=localstack runs LocalStack instead of moto's server (EMULATOR_PORT moves it).
run: venv $(if $(filter localstack,$(EMULATOR)),localstack-venv,)
	$(PY) -m devstack.run

# Both emulators: the end-to-end tests run against moto's server and LocalStack.
# Two workers (pytest-xdist), each taking whole files: most tests wait on the
# processes of a local stack, so two at once fit 2 cores.
TEST_WORKERS ?= 2
test: venv localstack-venv
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

# Benchmarks (bench/, local only): writes BENCHMARKS.md and prints it. A few minutes.
bench: venv
	$(PY) -m bench

# Deployment: see README, "Deploy to AWS". STAGE picks a stage of .chalice/config.json.
STAGE ?= dev
CHALICE := $(PY) -c 'import sys; from chalice.cli import main; sys.exit(main())'

# The bucket, table and queues of infra/resources.json (emulator or AWS; idempotent).
bootstrap: venv
	$(PY) -m devstack.bootstrap --stage $(STAGE)

# dist/layer/ml-api-science.zip: numpy, scipy, scikit-learn for python3.13 x86_64. No AWS.
layer: venv
	$(PY) -m infra.layer build

# Uploads the layer zip to s3://$(DEPLOY_BUCKET), publishes it, writes the ARN into .chalice/config.json.
publish-layer: layer
	$(PY) -m infra.layer publish --stage $(STAGE) --bucket "$(DEPLOY_BUCKET)"

# The stage's SSM SecureStrings (model-signing key, API keys), created once.
secrets: venv
	$(PY) -m infra.secrets --stage $(STAGE)

# A deployed stage requires API keys; one configured with REQUIRE_API_KEY=false
# is refused unless ALLOW_OPEN_API=yes (then deployed with a loud warning).
OPEN_API_FLAG := $(if $(filter yes,$(ALLOW_OPEN_API)),--allow-open-api,)

# Pre-flight checks, each function's policy rendered for the account, chalice
# deploy --stage $(STAGE), the bucket's CORS origin, then its URL.
deploy: venv
	$(PY) -m infra.deploy --stage $(STAGE) $(OPEN_API_FLAG)

# CloudFormation: chalice package --merge-template (infra/resources.json) + cfn-lint, in dist/package/.
package: venv
	$(PY) -m infra.package --stage $(STAGE) $(OPEN_API_FLAG)

# chalice delete, then the queues; the bucket and table (the models) stay: see README.
teardown: venv
	@[ "$(CONFIRM)" = "$(STAGE)" ] || { echo "error: this deletes stage $(STAGE)'s API, functions" \
	  "and queues; confirm with: make teardown STAGE=$(STAGE) CONFIRM=$(STAGE)" >&2; exit 1; }
	$(CHALICE) delete --stage $(STAGE)
	$(PY) -m devstack.bootstrap --stage $(STAGE) --delete

clean:
	rm -rf $(VENV) $(LS_VENV) .devstack .pytest_cache
