"""EventBridge's schedules, played locally: every `@app.schedule` handler of
the app is invoked at its rate with the event EventBridge sends
(`chalice local` runs no scheduled functions).

As in AWS, an invocation that fails is logged and the next one comes at the
next tick (EventBridge invokes asynchronously; Lambda's own retries of a failed
asynchronous invocation are not imitated). Ticks of one handler never overlap
here; in AWS they may, which the handlers must bear anyway.

    python -m devstack.scheduler [--stage dev] [--interval SECONDS]

`--interval` (or SCHEDULE_INTERVAL_SECONDS) replaces every handler's rate, so a
test can make the sweep of expired models run every second.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from chalicelib.logs import log
from devstack import stage

ACCOUNT = "123456789012"  # moto's default account
_UNIT_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}


def rate_seconds(expression: str) -> float:
    """Seconds between runs of `rate(N unit)`; cron expressions are not played."""
    match = re.fullmatch(r"rate\((\d+) (minute|hour|day)s?\)", expression)
    if not match:
        raise ValueError(f"{expression!r}: only rate(...) schedules are played locally")
    return int(match[1]) * _UNIT_SECONDS[match[2]]


def scheduled_event(rule_arn: str, region: str, when: float | None = None) -> dict:
    """The event EventBridge sends a function on a schedule."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": ACCOUNT,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when)),
        "region": region,
        "resources": [rule_arn],
        "detail": {},
    }


@dataclass(frozen=True)
class Schedule:
    name: str          # the function's name in the app, e.g. sweep_expired
    expression: str    # rate(10 minutes)
    handler: Callable[[dict, Any], Any]


def schedules(app, module) -> list[Schedule]:
    """The app's scheduled handlers (Chalice's ScheduledEventConfig)."""
    found = []
    for source in app.event_sources:
        expression = getattr(source, "schedule_expression", None)
        if expression is None:
            continue
        if not isinstance(expression, str):
            expression = expression.to_string()
        found.append(Schedule(source.name, expression,
                              getattr(module, source.handler_string.rsplit(".", 1)[1])))
    return found


class Scheduler:
    # The context's figures are the sweep's settings in .chalice/config.json;
    # like the SQS runner, this process does not enforce them.
    def __init__(self, schedules_: list[Schedule], *, function_prefix: str, region: str,
                 interval: float | None = None, timeout_seconds: int = 300,
                 memory_mb: int = 256):
        self._schedules = schedules_
        self._function_prefix = function_prefix
        self._region = region
        self._interval = interval
        self._timeout_ms = timeout_seconds * 1000
        self._memory_mb = memory_mb

    def invoke(self, schedule: Schedule) -> bool:
        """One run of a handler, as EventBridge's target; False if it failed."""
        from chalice.local import LambdaContext

        function = f"{self._function_prefix}-{schedule.name}"
        rule = f"arn:aws:events:{self._region}:{ACCOUNT}:rule/{function}-event"
        context = LambdaContext(function, self._memory_mb, self._timeout_ms)
        try:
            schedule.handler(scheduled_event(rule, self._region), context)
        except Exception as error:
            log("scheduler.handler_failed", level=logging.ERROR, function=function,
                error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc())
            return False
        return True

    def run(self, stop: threading.Event) -> None:
        """Each handler in its own thread, at its rate (or the interval), until `stop`."""
        def loop(schedule: Schedule) -> None:
            period = self._interval or rate_seconds(schedule.expression)
            while not stop.wait(period):
                self.invoke(schedule)

        threads = [threading.Thread(target=loop, args=(s,), name=f"schedule-{s.name}",
                                    daemon=True) for s in self._schedules]
        for thread in threads:
            thread.start()
        stop.wait()  # with no schedule at all too: the stack's processes run until stopped
        for thread in threads:
            thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the app's scheduled functions.")
    parser.add_argument("--stage", default="dev")
    interval = os.environ.get("SCHEDULE_INTERVAL_SECONDS")
    parser.add_argument("--interval", type=float, default=float(interval) if interval else None,
                        help="seconds between runs of every scheduled function, instead of "
                             "their rates (SCHEDULE_INTERVAL_SECONDS)")
    args = parser.parse_args()
    stage.apply(args.stage)

    import app as module  # after the environment is set

    found = schedules(module.app, module)
    scheduler = Scheduler(found, function_prefix=f"{module.app.app_name}-{args.stage}",
                          region=os.environ["AWS_DEFAULT_REGION"], interval=args.interval)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    log("scheduler.started", functions={s.name: args.interval or s.expression for s in found})
    scheduler.run(stop)


if __name__ == "__main__":
    main()
