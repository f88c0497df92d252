"""devstack.lambda_env: real worker processes running small handler modules
written into the test's folder (as a deployment package would be)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from devstack.lambda_env import (DeathKind, EnvironmentPool, ExecutionEnvironment,
                                 FunctionSpec, parse_handler)
from devstack.stage import PROJECT_DIR

HANDLERS = '''
import os, signal, sys, time

INITS = []
INITS.append(os.getpid())  # module state: kept while the environment is warm


def info(event, context):
    already = "sklearn" in sys.modules
    import sklearn.linear_model  # noqa: F401  (what the trainer pays once)
    return {"pid": os.getpid(), "inits": len(INITS), "sklearn_already_imported": already,
            "function_name": context.function_name,
            "memory_limit_in_mb": context.memory_limit_in_mb,
            "request_id": context.aws_request_id,
            "remaining_ms": context.get_remaining_time_in_millis(),
            "env_name": os.environ.get("AWS_LAMBDA_FUNCTION_NAME"),
            "env_memory": os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE"),
            "handler": os.environ.get("_HANDLER"), "cwd": os.getcwd(),
            "mine": os.environ.get("MINE"), "event": event}


def fail(event, context):
    raise ValueError("the data is bad: " + event["why"])


def grow(event, context):
    # Touches every page (b"x" * n writes them), 20 MB at a time.
    blocks = []
    for _ in range(event["mb"] // 20):
        blocks.append(b"x" * (20 << 20))
        time.sleep(0.01)
    return len(blocks) * 20


def spike(event, context):
    # Far over the limit for a moment only, then done: a poll of the current
    # RSS could miss it; the peak (VmHWM) does not.
    blob = b"x" * (event["mb"] << 20)
    del blob
    return "survived"


def memory_error(event, context):
    raise MemoryError("Unable to allocate 7.3 TiB for an array")


def sleep(event, context):
    time.sleep(event["seconds"])
    return "slept"


def exit_(event, context):
    sys.exit(3)


def not_json(event, context):
    return object()
'''


@pytest.fixture
def package(tmp_path) -> Path:
    (tmp_path / "fn.py").write_text(HANDLERS)
    return tmp_path


def _spec(package: Path, handler: str, **overrides) -> FunctionSpec:
    values = dict(name="fn-test", handler=handler, code_paths=(str(package),), memory_mb=256,
                  timeout_seconds=60, environment={**os.environ, "MINE": "kept"})
    values.update(overrides)
    return FunctionSpec(**values)


@pytest.fixture
def environments():
    started: list[ExecutionEnvironment | EnvironmentPool] = []
    yield started
    for environment in started:
        if isinstance(environment, EnvironmentPool):
            environment.close()
        else:
            environment.stop(grace=0)


def _gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def test_handler_strings_as_lambda_and_chalice_write_them():
    assert parse_handler("app.train_model") == ("app", "train_model")
    assert parse_handler("app:app") == ("app", "app")
    assert parse_handler("src/handlers/api.main") == ("src.handlers.api", "main")
    assert parse_handler("pkg.mod.fn") == ("pkg.mod", "fn")
    for bad in ("app", "app.", ".fn", "app:1x"):
        with pytest.raises(ValueError, match="Bad handler"):
            parse_handler(bad)


def test_a_warm_environment_is_reused_and_pays_its_imports_once(package, environments):
    environment = ExecutionEnvironment(_spec(package, "fn.info"))
    environments.append(environment)
    first = environment.invoke({"n": 1}, request_id="req-1")
    second = environment.invoke({"n": 2})
    assert first.ok and second.ok, (first.error, second.error)
    one, two = first.payload, second.payload
    # One process, initialised once: module state and scikit-learn stay loaded.
    assert one["pid"] == two["pid"] == first.pid == second.pid
    assert (one["inits"], two["inits"]) == (1, 1)
    assert (one["sklearn_already_imported"], two["sklearn_already_imported"]) == (False, True)
    assert first.init_ms > 0 and second.init_ms is None  # a cold start, then warm
    # What the function sees: Lambda's context and variables, and its own.
    assert one["event"] == {"n": 1} and one["request_id"] == "req-1"
    assert one["function_name"] == one["env_name"] == "fn-test"
    assert one["memory_limit_in_mb"] == one["env_memory"] == "256"
    assert 0 < one["remaining_ms"] <= 60_000
    assert one["handler"] == "fn.info" and one["mine"] == "kept"
    assert Path(one["cwd"]) == package
    assert second.max_memory_mb > 100  # scikit-learn is loaded: the REPORT's figure


def test_a_handler_error_is_lambdas_answer_and_keeps_the_environment(package, environments):
    environment = ExecutionEnvironment(_spec(package, "fn.fail"))
    environments.append(environment)
    failed = environment.invoke({"why": "row 3"}, request_id="req-9")
    assert not failed.ok and failed.death is None
    assert failed.error["errorType"] == "ValueError"
    assert failed.error["errorMessage"] == "the data is bad: row 3"
    assert failed.error["requestId"] == "req-9"
    assert any("fn.py" in line for line in failed.error["stackTrace"])
    again = environment.invoke({"why": "row 4"})
    assert again.pid == failed.pid and again.init_ms is None


@pytest.mark.parametrize("handler, error_type, message", [
    ("nothere.fn", "Runtime.ImportModuleError", "Unable to import module 'nothere'"),
    ("fn.missing", "Runtime.HandlerNotFound", "Handler 'missing' missing on module 'fn'"),
    ("fnmissing", "Runtime.MalformedHandlerName", "Bad handler 'fnmissing'"),
])
def test_init_errors_are_lambdas(package, environments, handler, error_type, message):
    environment = ExecutionEnvironment(_spec(package, handler))
    environments.append(environment)
    result = environment.invoke({})
    assert result.error["errorType"] == error_type and result.death is None
    assert result.error["errorMessage"].startswith(message), result.error
    assert not environment.alive


def test_a_result_that_is_not_json_is_a_marshal_error(package, environments):
    environment = ExecutionEnvironment(_spec(package, "fn.not_json"))
    environments.append(environment)
    result = environment.invoke({})
    assert result.error["errorType"] == "Runtime.MarshalError"
    assert environment.alive


def test_growing_past_the_memory_limit_kills_the_environment(package, environments):
    environment = ExecutionEnvironment(_spec(package, "fn.grow", memory_mb=200))
    environments.append(environment)
    within = environment.invoke({"mb": 60})
    assert within.ok and within.payload == 60
    over = environment.invoke({"mb": 600})
    assert over.death is not None and over.death.kind == DeathKind.OUT_OF_MEMORY
    assert over.death.reason.startswith("ran out of its 200 MB of memory"), over.death
    assert over.error["errorType"] == "Runtime.OutOfMemory"
    assert over.death.exit_code == -signal.SIGKILL
    assert _gone(over.pid)
    # The next invocation starts a new environment.
    after = environment.invoke({"mb": 20})
    assert after.ok and after.pid != over.pid and after.init_ms is not None


def test_a_short_spike_over_the_limit_is_seen(package, environments):
    environment = ExecutionEnvironment(_spec(package, "fn.spike", memory_mb=200))
    environments.append(environment)
    result = environment.invoke({"mb": 400})
    assert result.death is not None and result.death.kind == DeathKind.OUT_OF_MEMORY, result
    assert result.payload is None


def test_a_memory_error_counts_as_out_of_memory(package, environments):
    environment = ExecutionEnvironment(_spec(package, "fn.memory_error"))
    environments.append(environment)
    result = environment.invoke({})
    assert result.death.kind == DeathKind.OUT_OF_MEMORY
    assert "MemoryError: Unable to allocate 7.3 TiB" in result.death.reason
    assert result.error["errorType"] == "Runtime.OutOfMemory"
    assert _gone(result.pid)


def test_passing_the_timeout_kills_the_environment(package, environments):
    environment = ExecutionEnvironment(_spec(package, "fn.sleep", timeout_seconds=1))
    environments.append(environment)
    assert environment.start() is None  # init first: its time is its own
    started = time.monotonic()
    result = environment.invoke({"seconds": 30})
    elapsed = time.monotonic() - started
    assert result.death.kind == DeathKind.TIMEOUT
    assert result.death.reason == "timed out after 1 s (lambda_timeout)"
    assert result.error["errorType"] == "Sandbox.Timedout"
    assert "Task timed out after 1.00 seconds" in result.error["errorMessage"]
    assert elapsed < 20  # killed, not waited for
    assert _gone(result.pid)


def test_a_worker_killed_from_outside_is_a_crash(package, environments):
    environment = ExecutionEnvironment(_spec(package, "fn.sleep"))
    environments.append(environment)
    assert environment.start() is None
    results = []
    invocation = threading.Thread(target=lambda: results.append(
        environment.invoke({"seconds": 30})))
    invocation.start()
    time.sleep(0.3)
    os.kill(environment.pid, signal.SIGKILL)
    invocation.join(timeout=20)
    [result] = results
    assert result.death.kind == DeathKind.CRASH
    assert result.death.reason == "was killed by SIGKILL (signal 9)"
    assert result.error["errorType"] == "Runtime.ExitError"
    assert result.error["errorMessage"].endswith("Runtime exited with error: signal: killed")


def test_sys_exit_in_a_handler_is_a_crash(package, environments):
    environment = ExecutionEnvironment(_spec(package, "fn.exit_"))
    environments.append(environment)
    result = environment.invoke({})
    assert result.death.kind == DeathKind.CRASH and result.death.exit_code == 3
    assert result.error["errorMessage"].endswith("exit status 3")


def test_stopping_ends_a_running_invocation_as_a_shutdown(package, environments):
    environment = ExecutionEnvironment(_spec(package, "fn.sleep"))
    environments.append(environment)
    assert environment.start() is None
    results = []
    invocation = threading.Thread(target=lambda: results.append(
        environment.invoke({"seconds": 30})))
    invocation.start()
    time.sleep(0.3)
    pid = environment.pid
    environment.stop()
    invocation.join(timeout=20)
    assert results[0].death.kind == DeathKind.SHUTDOWN
    assert _gone(pid)


def test_a_pool_gives_each_concurrent_invocation_its_own_environment(package, environments):
    pool = EnvironmentPool(_spec(package, "fn.sleep"), size=2)
    environments.append(pool)
    results = []
    threads = [threading.Thread(target=lambda: results.append(pool.invoke({"seconds": 1})))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert [result.payload for result in results] == ["slept", "slept"]
    assert len({result.pid for result in results}) == 2
    # Warm ones are reused, no third is started.
    again = pool.invoke({"seconds": 0})
    assert again.pid in {result.pid for result in results} and again.init_ms is None
    assert len(pool.environments) == 2


def test_a_worker_does_not_outlive_its_parent(package, tmp_path):
    """A parent killed mid-invocation takes its worker with it."""
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(f"""
        import sys, threading, time
        sys.path.insert(0, {str(PROJECT_DIR)!r})
        from devstack.lambda_env import ExecutionEnvironment, FunctionSpec
        environment = ExecutionEnvironment(FunctionSpec(
            name="orphan", handler="fn.sleep", code_paths=({str(package)!r},),
            timeout_seconds=600))
        assert environment.start() is None
        print(environment.pid, flush=True)
        environment.invoke({{"seconds": 600}})
    """))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    worker = None
    try:
        worker = int(parent.stdout.readline())
        time.sleep(0.3)  # inside the invocation
        parent.kill()
        parent.wait(timeout=10)
        assert _gone(worker, timeout=10), f"worker {worker} outlived its parent"
    finally:
        parent.kill()
        parent.wait(timeout=10)
        parent.stdout.close()
        if worker is not None and not _gone(worker, timeout=0):
            os.killpg(worker, signal.SIGKILL)  # its own group: it and anything it started
