"""LocalStack (devstack.localstack, run by .venv-localstack's python) with
every DynamoDB condition held open for HOLD_SECONDS after it is evaluated by
the moto inside LocalStack, which serves DynamoDB through our mlapi_moto
provider: the LocalStack twin of tests/moto_held_conditions.py. Held open, two
conditional writes to one item overlap for sure unless the provider
serializes them as DynamoDB does.

    .venv-localstack/bin/python tests/localstack_held_conditions.py
"""
import runpy
import time

from moto.dynamodb import models

HOLD_SECONDS = 0.05
_parser = models.create_condition_expression_parser


def _held_parser(*args, **kwargs):
    parser = _parser(*args, **kwargs)
    parse = parser.parse

    def held_parse():
        condition = parse()
        evaluate = condition.expr

        def held(item):
            result = evaluate(item)
            time.sleep(HOLD_SECONDS)  # between the check and the write
            return result

        condition.expr = held
        return condition

    parser.parse = held_parse
    return parser


models.create_condition_expression_parser = _held_parser

if __name__ == "__main__":
    runpy.run_module("localstack.runtime.main", run_name="__main__")
