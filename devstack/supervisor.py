"""Keeps `make run`'s processes running, as AWS keeps its services up: each is
a named `Child` with a restart policy. One that dies is reported in plain
words (who, how it ended, what that costs) and started again; one that must
not die, or keeps dying, stops the stack with the reason.

    supervisor = Supervisor()
    supervisor.start(Child("The trainer (devstack.sqs_runner)", start_runner,
                           consequence="A training it ran comes back after 60 s."))
    while running:
        supervisor.check()      # raises StackFailed
        time.sleep(0.2)
    supervisor.stop()           # in reverse start order
"""
from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from devstack.lambda_env import describe_exit
from devstack.ports import stop_process

# A child that dies this often within WINDOW_SECONDS is broken, not unlucky.
MAX_RESTARTS = 5
WINDOW_SECONDS = 60.0


class StackFailed(Exception):
    """A child died that may not be restarted, or keeps dying."""


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Child:
    name: str  # as the log calls it: "The trainer (devstack.sqs_runner)"
    # Starts it and returns its process (waiting until it is usable, if it must).
    start: Callable[[], subprocess.Popen]
    restart: bool = True  # False: its death stops the stack
    consequence: str = ""  # what its death costs, said when it dies
    after_restart: Callable[[], None] | None = None  # e.g. bootstrap an emulator again
    # Stops its process; default SIGTERM, then SIGKILL after 10 s.
    stop: Callable[[subprocess.Popen], None] | None = None
    process: subprocess.Popen | None = field(default=None, init=False)
    restarts: list[float] = field(default_factory=list, init=False)


class Supervisor:
    def __init__(self, report: Callable[[str], None] = say):
        self.children: list[Child] = []
        self._report = report

    def start(self, child: Child) -> Child:
        """Starts a child (its start() raising is the caller's problem) and watches it."""
        child.process = child.start()
        self.children.append(child)
        return child

    def check(self) -> None:
        """Starts again every child that died; raises StackFailed for one that
        may not be restarted or keeps dying."""
        for child in self.children:
            process = child.process
            if process is not None and process.poll() is None:
                continue
            if process is not None:
                died = f"{child.name}, pid {process.pid}, {describe_exit(process.returncode)}."
                if child.consequence:
                    died += " " + child.consequence
                child.process = None
                if not child.restart:
                    raise StackFailed(died + " Stopping.")
                self._report(died)
            now = time.monotonic()
            child.restarts = [at for at in child.restarts if now - at < WINDOW_SECONDS]
            if len(child.restarts) >= MAX_RESTARTS:
                raise StackFailed(f"{child.name} died {len(child.restarts) + 1} times within "
                                  f"{WINDOW_SECONDS:.0f} s; stopping. Its output above says why.")
            child.restarts.append(now)
            try:
                child.process = child.start()
            except Exception as error:  # tried again at the next check
                self._report(f"Starting {child.name} again failed: {error}")
                continue
            self._report(f"{child.name} started again, pid {child.process.pid}.")
            if child.after_restart is not None:
                child.after_restart()

    def stop(self) -> None:
        """Stops every child, in reverse start order (the API and the trainer
        before the emulator they use)."""
        for child in reversed(self.children):
            if child.process is not None:
                (child.stop or stop_process)(child.process)
