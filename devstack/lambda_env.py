"""The execution environment: one Lambda function's invocations in a limited,
reusable process, as Lambda runs them.

What a function sees and what happens when it fails is Lambda's contract;
how this module gets there is its own:

* **A worker process per environment.** The first invocation starts it (a
  cold start: the init phase imports the handler's module); later ones reuse
  it while it lives (warm), so module-level state and imports such as
  scikit-learn are paid once. One invocation at a time per environment; an
  `EnvironmentPool` gives each concurrent invocation its own environment and
  reuses idle warm ones first, as Lambda scales a function.
* **Memory.** Lambda kills the whole environment when the memory it uses
  passes the function's `lambda_memory_size`. Here the parent reads the
  worker's peak resident set size (`VmHWM` in /proc/<pid>/status: the
  kernel's high-water mark of its RSS, so a spike between two reads is still
  seen), plus that of its descendants, every `poll_seconds` and when an
  answer arrives, and SIGKILLs the worker's process group once it is over
  the limit: an invocation whose peak passed the limit dies, as in Lambda,
  whatever the load on this machine. A `MemoryError` raised out of the
  handler counts the same. RLIMIT_AS would be no proxy: a warm
  trainer worker (after one training) reserves ~550 MB of address space for
  ~165 MB resident on 2 cores (numpy/OpenBLAS buffers and thread stacks, more
  with more cores), so a 300 MB RLIMIT_AS fails at `import sklearn`. No cgroup is needed, so it works wherever
  /proc does; without /proc the limit is not enforced (logged once).
* **Time.** The parent SIGKILLs a worker whose invocation passes the
  function's `lambda_timeout`. Init has its own limit (`INIT_SECONDS`, or the
  timeout if longer), as Lambda gives init 10 s before retrying it inside the
  invocation's time.
* **Death is the environment's end, reported distinctly.** Out of memory,
  timed out, crashed (killed, `sys.exit`, a segfault) or shut down: the
  `Invocation` carries a `Death` with its kind and a sentence saying why, plus
  the error Lambda would answer (`Runtime.OutOfMemory`, `Sandbox.Timedout`,
  `Runtime.ExitError`). The next invocation starts a new environment. What a
  death means for the event (SQS redelivers it) is the caller's business.
* **A worker never outlives its parent:** it exits when its command pipe
  closes, so a killed parent takes its environments with it.

Use (the SQS runner does this for the trainer; the LocalStack executor
does it for every function):

    spec = FunctionSpec(name="ml-api-dev-train_model", handler="app.train_model",
                        code_paths=("/var/task", "/opt/python"), memory_mb=3008,
                        timeout_seconds=900, environment={...})
    environment = ExecutionEnvironment(spec)    # or EnvironmentPool(spec, size=4)
    environment.start()                         # optional: init now, not at the first invoke
    result = environment.invoke({"Records": [...]})
    if result.ok: result.payload                # the handler's JSON-able return value
    elif result.death: result.death.kind, result.death.reason, result.error
    else: result.error                          # {"errorType", "errorMessage", "stackTrace", "requestId"}
    environment.stop()

Protocol between parent and worker (this file is also the worker: the parent
runs `python -I [-S] lambda_env.py <command fd> <result fd>`; it imports only
the standard library). Two pipes, each carrying frames of a 4-byte big-endian
length and that many bytes of UTF-8 JSON. The worker's stdin is /dev/null and
its stdout and stderr are the function's log (the parent's, unless
`FunctionSpec.log` says otherwise), so nothing a handler prints can break the
protocol.

    parent -> worker  {"type": "init", "handler", "code_paths", "function_name",
                       "function_version", "memory_mb", "region", "log_group_name",
                       "log_stream_name"}                       once, first
                      {"type": "invoke", "request_id", "event", "deadline_ms"}
                                                                deadline: epoch ms
    worker -> parent  {"type": "ready"}                         init done
                      {"type": "init_error", "error": {...}}    init failed; it exits
                      {"type": "result", "request_id", "payload"}
                      {"type": "error", "request_id", "error": {...}}
                      {"type": "out_of_memory", "detail"}       MemoryError; it exits

Closing the command pipe asks the worker to exit.
"""
from __future__ import annotations

import enum
import json
import logging
import math
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from typing import IO, Any, Mapping

LOG = logging.getLogger("devstack.lambda_env")

# Lambda's own defaults, for a function that does not say.
DEFAULT_MEMORY_MB = 128
DEFAULT_TIMEOUT_SECONDS = 3
# Lambda gives the init phase 10 s (then retries init within the invocation's timeout).
INIT_SECONDS = 10
POLL_SECONDS = 0.02
# The worker's exit status after a MemoryError escaped the handler.
OUT_OF_MEMORY_EXIT = 99
RUNTIME = "python3.13"
WORKER = os.path.abspath(__file__)
_HEADER = struct.Struct(">I")


# --- what the caller gets ---------------------------------------------------------

class DeathKind(enum.StrEnum):
    OUT_OF_MEMORY = "out of memory"
    TIMEOUT = "timeout"
    CRASH = "crash"          # killed, exited, segfaulted: not by this module
    SHUTDOWN = "shutdown"    # stopped by its owner while it ran


@dataclass(frozen=True)
class Death:
    kind: DeathKind
    # Reads after the function's name: "the trainer ran out of its 300 MB of memory ...".
    reason: str
    exit_code: int | None = None  # Popen's: negative for a signal


@dataclass(frozen=True)
class Invocation:
    """One invocation's outcome, with what Lambda's REPORT line would say."""
    request_id: str
    payload: Any = None
    # Lambda's error answer: {"errorType", "errorMessage", ...}; set when the
    # handler raised, init failed, or the environment died.
    error: dict | None = None
    death: Death | None = None
    duration_ms: float = 0.0
    init_ms: float | None = None  # a cold start's init; None when warm
    max_memory_mb: float | None = None  # peak RSS of the environment so far
    pid: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.death is None


@dataclass(frozen=True)
class FunctionSpec:
    """One Lambda function, as its configuration describes it."""
    name: str
    # Lambda's "module.attr" (a path like "dir/module.attr" too) or "module:attr".
    handler: str
    # Prepended to sys.path in this order, like /var/task and /opt/python; the
    # first is the working directory (LAMBDA_TASK_ROOT).
    code_paths: tuple[str, ...]
    memory_mb: int = DEFAULT_MEMORY_MB
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    # The worker's whole environment; Lambda's own variables (AWS_LAMBDA_*,
    # _HANDLER, LAMBDA_TASK_ROOT, ...) are added where it does not set them.
    environment: Mapping[str, str] = field(default_factory=dict)
    python: str = sys.executable
    # False: only the standard library and code_paths are importable (python -S),
    # as in Lambda, where the deployment package and layers carry everything.
    site_packages: bool = True
    region: str = "us-east-1"
    version: str = "$LATEST"
    # Where the worker's stdout and stderr go (a file object or descriptor);
    # None: this process's.
    log: IO | int | None = None
    poll_seconds: float = POLL_SECONDS

    def lambda_variables(self, log_stream: str = "") -> dict[str, str]:
        """The environment the function sees."""
        task_root = self.code_paths[0] if self.code_paths else os.getcwd()
        defaults = {
            "_HANDLER": self.handler, "AWS_EXECUTION_ENV": f"AWS_Lambda_{RUNTIME}",
            "AWS_LAMBDA_FUNCTION_NAME": self.name,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.memory_mb),
            "AWS_LAMBDA_FUNCTION_VERSION": self.version,
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{self.name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": log_stream,
            "AWS_REGION": self.region, "AWS_DEFAULT_REGION": self.region,
            "LAMBDA_TASK_ROOT": task_root, "TZ": ":UTC",
            "PATH": "/usr/local/bin:/usr/bin:/bin",
        }
        return {**defaults, **self.environment}


def parse_handler(handler: str) -> tuple[str, str]:
    """(module, attribute) of a handler string; ValueError when malformed."""
    if ":" in handler:
        module, _, attribute = handler.partition(":")
    else:
        module, _, attribute = handler.rpartition(".")
    module = module.replace("/", ".").strip(".")
    if not module or not attribute.isidentifier():
        raise ValueError(f"Bad handler '{handler}': expected 'module.function' "
                         "(or 'module:function')")
    return module, attribute


def describe_exit(code: int | None) -> str:
    if code is None:
        return "stopped answering"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name} (signal {-code})"
    return f"exited with code {code}"


# How Lambda's runtime error names the common signals.
_SIGNAL_WORDS = {signal.SIGKILL: "killed", signal.SIGTERM: "terminated",
                 signal.SIGSEGV: "segmentation fault", signal.SIGABRT: "aborted"}


def _runtime_exit_error(request_id: str, code: int | None) -> str:
    if code is not None and code < 0:
        how = "signal: " + _SIGNAL_WORDS.get(-code, f"signal {-code}")
    else:
        how = f"exit status {code}"
    return f"RequestId: {request_id} Error: Runtime exited with error: {how}"


# --- reading memory ---------------------------------------------------------------

_PROC = os.path.isdir("/proc/self/task")
_warned_no_proc = False


def _status_kb(pid: int, field_name: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(field_name):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _descendants(pid: int) -> list[int]:
    found, pending = [], [pid]
    while pending:
        parent = pending.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as children:
                    kids = [int(kid) for kid in children.read().split()]
            except (OSError, ValueError):
                continue
            found += kids
            pending += kids
    return found


def peak_memory_mb(pid: int) -> float | None:
    """The peak resident set size (MiB) of a process and its living descendants:
    what the memory limit is compared with. None without /proc."""
    global _warned_no_proc
    if not _PROC:
        if not _warned_no_proc:
            LOG.warning("no /proc here: memory limits are not enforced")
            _warned_no_proc = True
        return None
    total = 0
    for member in [pid, *_descendants(pid)]:
        total += _status_kb(member, b"VmHWM") or 0
    return total / 1024


# --- the parent side --------------------------------------------------------------

class _Frames:
    """Reads length-prefixed JSON frames from a pipe without blocking past a deadline."""

    def __init__(self, fd: int):
        self.fd = fd
        self._buffer = b""
        self.closed = False

    def next(self, wait: float) -> dict | None:
        """A frame, or None when none arrived within `wait` seconds (or the pipe closed)."""
        frame = self._take()
        if frame is not None or self.closed:
            return frame
        if _ready(self.fd, select.POLLIN, wait):
            chunk = os.read(self.fd, 1 << 20)
            if not chunk:
                self.closed = True
            self._buffer += chunk
        return self._take()

    def _take(self) -> dict | None:
        if len(self._buffer) < _HEADER.size:
            return None
        (length,) = _HEADER.unpack_from(self._buffer)
        if len(self._buffer) < _HEADER.size + length:
            return None
        body = self._buffer[_HEADER.size:_HEADER.size + length]
        self._buffer = self._buffer[_HEADER.size + length:]
        return json.loads(body)


def _ready(fd: int, event: int, wait: float) -> bool:
    """Whether `fd` is ready (or closed) within `wait` seconds. poll(), not
    select(): a host process such as LocalStack may hold more than 1024 files."""
    poller = select.poll()
    poller.register(fd, event)
    return bool(poller.poll(max(0.0, wait) * 1000))


def _encode(frame: dict) -> bytes:
    body = json.dumps(frame, separators=(",", ":")).encode()
    return _HEADER.pack(len(body)) + body


class _Gone(Exception):
    """The worker died, hit a limit, or was stopped; carries the Death."""

    def __init__(self, death: Death):
        super().__init__(death.reason)
        self.death = death


class ExecutionEnvironment:
    """One worker process for one function: start() (init), invoke() any
    number of times while it lives, stop(). Thread-safe: invocations queue
    up, and stop() from another thread ends a running one (DeathKind.SHUTDOWN)."""

    def __init__(self, spec: FunctionSpec):
        self.spec = spec
        self._process: subprocess.Popen | None = None
        self._commands: int | None = None
        self._results: _Frames | None = None
        self._invoking = threading.Lock()
        self._stopping = False
        self.init_ms: float | None = None
        self.invocations = 0

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None and not self._stopping

    # -- lifecycle

    def start(self) -> Invocation | None:
        """Starts the worker and runs init, unless it is running. Returns None
        when it is ready, else an Invocation saying why init failed (the
        environment is then stopped; the next start tries again)."""
        with self._invoking:
            return self._start()

    def _start(self, request_id: str = "init") -> Invocation | None:
        if self.alive:
            return None
        self._discard()
        self._stopping = False
        spec = self.spec
        started = time.monotonic()  # init, as Lambda counts it: from the process's start
        commands_read, commands_write = os.pipe()
        results_read, results_write = os.pipe()
        # One log stream per environment, as in CloudWatch.
        stream = f"{time.strftime('%Y/%m/%d')}/[{spec.version}]{uuid.uuid4().hex}"
        command = [spec.python, "-I", *([] if spec.site_packages else ["-S"]), WORKER,
                   str(commands_read), str(results_write)]
        try:
            self._process = subprocess.Popen(
                command, env=spec.lambda_variables(stream),
                cwd=spec.code_paths[0] if spec.code_paths else None,
                pass_fds=(commands_read, results_write), stdin=subprocess.DEVNULL,
                stdout=spec.log, stderr=spec.log,
                # Its own group: a kill reaches anything the function started.
                process_group=0)
        finally:
            os.close(commands_read)
            os.close(results_write)
        self._commands, self._results = commands_write, _Frames(results_read)
        deadline = started + max(INIT_SECONDS, spec.timeout_seconds)
        try:
            self._send({"type": "init", "handler": spec.handler,
                        "code_paths": list(spec.code_paths), "function_name": spec.name,
                        "function_version": spec.version, "memory_mb": spec.memory_mb,
                        "region": spec.region,
                        "log_group_name": f"/aws/lambda/{spec.name}",
                        "log_stream_name": stream},
                       deadline, request_id)
            frame = self._await(deadline, request_id, "init")
        except _Gone as gone:
            return self._dead(request_id, gone.death, started)
        if frame["type"] == "ready":
            self.init_ms = _ms_since(started)
            return None
        error = frame.get("error") or {"errorType": "Runtime.Unknown",
                                       "errorMessage": f"unexpected {frame['type']!r} at init"}
        self._kill()  # it exits by itself; this makes sure, and reaps it
        self._discard()
        return Invocation(request_id, error=error, duration_ms=_ms_since(started),
                          pid=self._process.pid if self._process else None)

    def stop(self, grace: float = 2.0) -> None:
        """Ends the worker: closes its command pipe (it exits), then SIGKILLs
        its process group after `grace` seconds. An invocation running in
        another thread ends at once, with DeathKind.SHUTDOWN. A later invoke()
        or start() starts a new worker."""
        self._stopping = True
        if not self._invoking.acquire(blocking=False):
            self._kill()  # the running invocation sees it and cleans up
            return
        try:
            process = self._process
            if process is not None and process.poll() is None and grace > 0:
                self._close_commands()
                try:
                    process.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    pass
            self._kill()
            self._discard()
        finally:
            self._invoking.release()

    def _close_commands(self) -> None:
        if self._commands is not None:
            try:
                os.close(self._commands)
            except OSError:
                pass
            self._commands = None

    def _kill(self) -> None:
        process = self._process
        if process is None:
            return
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            LOG.warning("worker %s did not die within 10 s of SIGKILL", process.pid)

    def _discard(self) -> None:
        """Forgets a finished worker, closing this side's pipes."""
        self._close_commands()
        if self._results is not None:
            try:
                os.close(self._results.fd)
            except OSError:
                pass
            self._results = None

    # -- invocations

    def invoke(self, event: Any, request_id: str | None = None) -> Invocation:
        """Runs the handler on `event` (JSON-able) in this environment, starting
        it first if needed (a cold start), within the function's memory and time."""
        request_id = request_id or str(uuid.uuid4())
        with self._invoking:
            cold = not self.alive
            if cold:
                failed = self._start(request_id)
                if failed is not None:
                    return failed
            started = time.monotonic()
            deadline = started + self.spec.timeout_seconds
            try:
                self._send({"type": "invoke", "request_id": request_id, "event": event,
                            "deadline_ms": int(time.time() * 1000
                                               + self.spec.timeout_seconds * 1000)},
                           deadline, request_id)
                frame = self._await(deadline, request_id, "invoke")
            except _Gone as gone:
                return self._dead(request_id, gone.death, started,
                                  self.init_ms if cold else None)
            self.invocations += 1
            common = dict(duration_ms=_ms_since(started), init_ms=self.init_ms if cold else None,
                          max_memory_mb=peak_memory_mb(self._process.pid), pid=self._process.pid)
            if frame["type"] == "result":
                return Invocation(request_id, payload=frame["payload"], **common)
            return Invocation(request_id, error=frame["error"], **common)

    def _send(self, frame: dict, deadline: float, request_id: str) -> None:
        data = memoryview(_encode(frame))
        while data:
            self._check(deadline, request_id)
            if _ready(self._commands, select.POLLOUT, self.spec.poll_seconds):
                try:
                    data = data[os.write(self._commands, data[:1 << 16]):]
                except BrokenPipeError:
                    raise _Gone(self._death_after_exit(request_id)) from None

    def _await(self, deadline: float, request_id: str, phase: str) -> dict:
        """The worker's answer, unless it dies or passes a limit first."""
        while True:
            self._check(deadline, request_id, phase)
            frame = self._results.next(self.spec.poll_seconds)
            if frame is not None:
                if frame["type"] == "out_of_memory":
                    self._kill()
                    raise _Gone(Death(DeathKind.OUT_OF_MEMORY,
                                      f"{self._out_of_memory()}: {frame['detail']}",
                                      self._process.returncode))
                # A peak over the limit since the last look: Lambda would have
                # killed it then, whatever it answered since.
                self._check_memory()
                return frame
            if self._results.closed:
                raise _Gone(self._death_after_exit(request_id))

    def _check(self, deadline: float, request_id: str, phase: str = "invoke") -> None:
        """Raises _Gone when the worker was stopped, died, or passed a limit."""
        process = self._process
        if self._stopping:
            self._kill()
            raise _Gone(Death(DeathKind.SHUTDOWN, _STOPPED, process.returncode))
        self._check_memory()
        if time.monotonic() > deadline:
            self._kill()
            if phase == "init":
                seconds = max(INIT_SECONDS, self.spec.timeout_seconds)
                reason = f"timed out after {seconds:g} s of init (importing its handler)"
            else:
                reason = f"timed out after {self.spec.timeout_seconds:g} s (lambda_timeout)"
            raise _Gone(Death(DeathKind.TIMEOUT, reason, process.returncode))
        if process.poll() is not None and self._results.closed:
            raise _Gone(self._death_after_exit(request_id))

    def _check_memory(self) -> None:
        # Rounded up, so that the figure said is over the limit, as it was.
        used = peak_memory_mb(self._process.pid)
        if used is not None and used > self.spec.memory_mb:
            self._kill()
            raise _Gone(Death(DeathKind.OUT_OF_MEMORY,
                              f"{self._out_of_memory()}: it reached {math.ceil(used * 10) / 10} MB",
                              self._process.returncode))

    def _out_of_memory(self) -> str:
        return f"ran out of its {self.spec.memory_mb} MB of memory (lambda_memory_size)"

    def _death_after_exit(self, request_id: str) -> Death:
        process = self._process
        try:
            code = process.wait(timeout=5)
        except subprocess.TimeoutExpired:  # closed its pipe but lives on: end it
            self._kill()
            code = process.returncode
        if self._stopping:
            return Death(DeathKind.SHUTDOWN, _STOPPED, code)
        if code == OUT_OF_MEMORY_EXIT:
            return Death(DeathKind.OUT_OF_MEMORY, f"{self._out_of_memory()}: MemoryError", code)
        return Death(DeathKind.CRASH, describe_exit(code), code)

    def _dead(self, request_id: str, death: Death, started: float,
              init_ms: float | None = None) -> Invocation:
        pid = self._process.pid if self._process else None
        self._kill()
        self._discard()
        if death.kind == DeathKind.OUT_OF_MEMORY:
            error = {"errorType": "Runtime.OutOfMemory",
                     "errorMessage": _runtime_exit_error(request_id, -signal.SIGKILL)}
        elif death.kind == DeathKind.TIMEOUT:
            error = {"errorType": "Sandbox.Timedout",
                     "errorMessage": f"RequestId: {request_id} Error: Task timed out after "
                                     f"{self.spec.timeout_seconds:.2f} seconds"}
        elif death.kind == DeathKind.SHUTDOWN:
            error = _shutdown_error(request_id)
        else:
            error = {"errorType": "Runtime.ExitError",
                     "errorMessage": _runtime_exit_error(request_id, death.exit_code)}
        LOG.info("environment of %s (pid %s) %s", self.spec.name, pid, death.reason)
        return Invocation(request_id, error=error, death=death, duration_ms=_ms_since(started),
                          init_ms=init_ms, pid=pid)


_STOPPED = "was stopped while it ran (its execution environment was shut down)"


def _shutdown_error(request_id: str) -> dict:
    return {"errorType": "Runtime.ExitError",
            "errorMessage": f"RequestId: {request_id} Error: the execution environment "
                            "was shut down"}


def _ms_since(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)


class EnvironmentPool:
    """Lambda's scaling for one function: each concurrent invocation gets an
    environment of its own, an idle warm one first (the most recently used),
    else a new one, up to `size` (an event source mapping's maximum
    concurrency); beyond that invoke() waits for one to be free."""

    def __init__(self, spec: FunctionSpec, size: int):
        if size < 1:
            raise ValueError("an environment pool needs room for at least 1 environment")
        self.spec = spec
        self.size = size
        self._idle: list[ExecutionEnvironment] = []
        self._busy: set[ExecutionEnvironment] = set()
        self._free = threading.Condition()
        self._closed = False

    def invoke(self, event: Any, request_id: str | None = None) -> Invocation:
        request_id = request_id or str(uuid.uuid4())
        environment = self._acquire()
        if environment is None:
            return Invocation(request_id, error=_shutdown_error(request_id),
                              death=Death(DeathKind.SHUTDOWN, "was stopped before it ran"))
        try:
            return environment.invoke(event, request_id)
        finally:
            self._release(environment)

    def _acquire(self) -> ExecutionEnvironment | None:
        with self._free:
            while not self._closed:
                while self._idle:
                    environment = self._idle.pop()
                    if environment.alive:
                        self._busy.add(environment)
                        return environment
                    environment.stop(grace=0)
                if len(self._busy) < self.size:
                    environment = ExecutionEnvironment(self.spec)
                    self._busy.add(environment)
                    return environment
                self._free.wait()
            return None

    def _release(self, environment: ExecutionEnvironment) -> None:
        with self._free:
            self._busy.discard(environment)
            if environment.alive and not self._closed:
                self._idle.append(environment)
            else:
                environment.stop(grace=0)
            self._free.notify()

    @property
    def environments(self) -> list[ExecutionEnvironment]:
        with self._free:
            return [*self._idle, *self._busy]

    def close(self) -> None:
        """Stops every environment; running invocations end with DeathKind.SHUTDOWN."""
        with self._free:
            self._closed = True
            everyone = [*self._idle, *self._busy]
            self._idle.clear()
            self._free.notify_all()
        for environment in everyone:
            environment.stop(grace=0)


# --- the worker side (runs as `python -I lambda_env.py <command fd> <result fd>`) --

class LambdaContext:
    """What Lambda's Python runtime passes as `context`."""

    def __init__(self, init: dict, request_id: str, deadline_ms: int):
        self.function_name = init["function_name"]
        self.function_version = init["function_version"]
        self.invoked_function_arn = (f"arn:aws:lambda:{init['region']}:000000000000:function:"
                                     f"{init['function_name']}")
        self.memory_limit_in_mb = str(init["memory_mb"])  # a string, as in Lambda
        self.aws_request_id = request_id
        self.log_group_name = init["log_group_name"]
        self.log_stream_name = init["log_stream_name"]
        self.identity = None
        self.client_context = None
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int(self._deadline_ms - time.time() * 1000))


def _error(error: BaseException, error_type: str | None = None,
           message: str | None = None, request_id: str | None = None) -> dict:
    answer = {"errorMessage": message if message is not None else str(error),
              "errorType": error_type or type(error).__name__,
              "stackTrace": traceback.format_list(traceback.extract_tb(error.__traceback__))}
    if request_id:
        answer["requestId"] = request_id
    return answer


def _load_handler(init: dict):
    """The handler function; raises (type, message) as Lambda reports it."""
    import importlib

    try:
        module_name, attribute = parse_handler(init["handler"])
    except ValueError as bad:
        raise _InitError("Runtime.MalformedHandlerName", str(bad)) from None
    for path in reversed(init["code_paths"]):
        sys.path.insert(0, path)
    try:
        module = importlib.import_module(module_name)
    except MemoryError:
        raise
    except SyntaxError as error:
        raise _InitError("Runtime.UserCodeSyntaxError", f"Syntax error in module "
                         f"'{module_name}': {error}") from error
    except ImportError as error:
        raise _InitError("Runtime.ImportModuleError",
                         f"Unable to import module '{module_name}': {error}") from error
    handler = getattr(module, attribute, None)
    if handler is None:
        raise _InitError("Runtime.HandlerNotFound",
                         f"Handler '{attribute}' missing on module '{module_name}'")
    return handler


class _InitError(Exception):
    def __init__(self, error_type: str, message: str):
        super().__init__(message)
        self.error_type = error_type


def _worker(commands_fd: int, results_fd: int) -> None:
    import queue

    # Lambda functions do not get Ctrl-C; their owner stops them.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.stdout.reconfigure(line_buffering=True)  # log lines reach the log as they are printed
    inbox: queue.Queue = queue.Queue()

    def read_commands() -> None:
        # The only reader of the command pipe. End of file means the parent is
        # gone (or asked us to go): exit at once, even in the middle of a handler.
        frames = _Frames(commands_fd)
        while True:
            frame = frames.next(3600)
            if frame is not None:
                inbox.put(frame)
            elif frames.closed:
                os._exit(0)

    def send(frame: dict) -> None:
        data = _encode(frame)
        while data:
            data = data[os.write(results_fd, data):]

    threading.Thread(target=read_commands, name="lambda-commands", daemon=True).start()
    init = inbox.get()
    try:
        handler = _load_handler(init)
    except MemoryError as error:
        send({"type": "out_of_memory", "detail": f"MemoryError at init: {error}"})
        os._exit(OUT_OF_MEMORY_EXIT)
    except _InitError as error:  # Lambda shows no stack for these: it is not the code's
        send({"type": "init_error", "error": {"errorType": error.error_type,
                                              "errorMessage": str(error), "stackTrace": []}})
        os._exit(1)
    except Exception as error:  # the module raised while importing
        send({"type": "init_error", "error": _error(error)})
        os._exit(1)
    send({"type": "ready"})

    while True:
        command = inbox.get()
        if command["type"] != "invoke":
            continue
        request_id = command["request_id"]
        context = LambdaContext(init, request_id, command["deadline_ms"])
        try:
            payload = handler(command["event"], context)
        except MemoryError as error:
            send({"type": "out_of_memory", "detail": f"MemoryError: {error}"})
            os._exit(OUT_OF_MEMORY_EXIT)
        except Exception as error:
            answer = _error(error, request_id=request_id)
            # What Lambda's runtime writes to the function's log.
            print(f"[ERROR] {answer['errorType']}: {answer['errorMessage']}\n"
                  + "".join(traceback.format_exception(error)), file=sys.stderr, flush=True)
            send({"type": "error", "request_id": request_id, "error": answer})
            continue
        try:
            send({"type": "result", "request_id": request_id, "payload": payload})
        except (TypeError, ValueError) as error:
            send({"type": "error", "request_id": request_id, "error": {
                "errorType": "Runtime.MarshalError", "requestId": request_id,
                "errorMessage": f"Unable to marshal response: {error}", "stackTrace": []}})


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]))
