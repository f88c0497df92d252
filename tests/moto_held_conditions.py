"""devstack.moto_server with every DynamoDB condition held open for
HOLD_SECONDS after it is evaluated, for tests of what happens when two
conditional writes to one item arrive together. Held open, they overlap for
sure unless the server serializes them as DynamoDB does.

    python -m tests.moto_held_conditions -H 127.0.0.1 -p PORT
"""
from __future__ import annotations

import time

from moto.dynamodb import models

from devstack import moto_server

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
    moto_server.run()
