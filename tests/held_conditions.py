"""Holds every DynamoDB condition that moto evaluates open for HOLD_SECONDS
after it is evaluated, so that two conditional writes to one item overlap for
sure unless the server serializes them as DynamoDB does. Used by
tests/moto_held_conditions.py (moto's server) and
tests/localstack_held_conditions.py (the moto inside LocalStack); it imports
only moto, which both venvs have."""
from __future__ import annotations

import time

from moto.dynamodb import models

HOLD_SECONDS = 0.05


def hold_conditions() -> None:
    """Patches moto's condition parser in this process."""
    make_parser = models.create_condition_expression_parser

    def held_parser(*args, **kwargs):
        parser = make_parser(*args, **kwargs)
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

    models.create_condition_expression_parser = held_parser
