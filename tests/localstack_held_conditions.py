"""LocalStack (devstack.localstack, run by .venv-localstack's python) with
every DynamoDB condition held open for HOLD_SECONDS after it is evaluated by
the moto inside LocalStack, which serves DynamoDB through our mlapi_moto
provider: the LocalStack twin of tests/moto_held_conditions.py. Held open, two
conditional writes to one item overlap for sure unless the provider
serializes them as DynamoDB does.

    .venv-localstack/bin/python tests/localstack_held_conditions.py
"""
import runpy

from held_conditions import hold_conditions  # run as a file: tests/ is on the path

hold_conditions()

if __name__ == "__main__":
    runpy.run_module("localstack.runtime.main", run_name="__main__")
