"""devstack.moto_server with every DynamoDB condition held open for
HOLD_SECONDS after it is evaluated, for tests of what happens when two
conditional writes to one item arrive together. Held open, they overlap for
sure unless the server serializes them as DynamoDB does.

    python -m tests.moto_held_conditions -H 127.0.0.1 -p PORT
"""
from __future__ import annotations

from devstack import moto_server
from tests.held_conditions import hold_conditions

hold_conditions()

if __name__ == "__main__":
    moto_server.run()
