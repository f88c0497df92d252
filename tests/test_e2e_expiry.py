"""End to end: expired models are removed by the sweep that the local stack's
scheduler (devstack.scheduler, EventBridge's part) runs, here every second,
while DELETEs and a second scheduler on the same emulator race it."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor

import pytest

from devstack.ports import stop_process, tail
from tests.reliability import record
from tests.stack import REPO, Stack, clean_environment, running_stack

pytestmark = pytest.mark.e2e

IRIS = (REPO / "iris.csv").read_bytes()
CSV = {"Content-Type": "text/csv"}
AREA = "Limits and expiry"
SWEEP_TIMEOUT = 30
GRACE = 2


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    env = {"SCHEDULE_INTERVAL_SECONDS": "1", "ORPHAN_GRACE_SECONDS": str(GRACE),
           "RUNNER_WORKERS": "2"}
    with running_stack(tmp_path_factory.mktemp("devstack"), env=env) as running:
        yield running


def _train(stack: Stack, count: int, query: str = "") -> list[str]:
    ids = []
    for _ in range(count):
        answer = stack.http.post(f"{stack.api}/models{query}", data=IRIS, headers=CSV, timeout=30)
        assert answer.status_code == 201, answer.text
        ids.append(answer.json()["model_id"])
    for model_id in ids:
        assert stack.wait_for_training(model_id)["status"] == "Ready to Use"
    return ids


def _expire(stack: Stack, model_id: str) -> None:
    stack.dynamodb_client.update_item(
        TableName=stack.table.name, Key={"model_id": {"S": model_id}},
        UpdateExpression="SET expires_at = :past",
        ExpressionAttributeValues={":past": {"N": str(int(time.time()) - 1)}})


def _keys(stack: Stack, model_id: str) -> list[str]:
    keys = []
    for prefix in (f"datasets/{model_id}", f"models/{model_id}/"):
        listing = stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix=prefix)
        keys += [entry["Key"] for entry in listing.get("Contents", [])]
    return keys


def _item(stack: Stack, model_id: str):
    return stack.dynamodb_client.get_item(TableName=stack.table.name, ConsistentRead=True,
                                          Key={"model_id": {"S": model_id}}).get("Item")


def _wait_until_gone(stack: Stack, ids: list[str]) -> float:
    started = time.monotonic()
    while any(_keys(stack, m) or _item(stack, m) for m in ids):
        if time.monotonic() - started > SWEEP_TIMEOUT:
            left = {m: _keys(stack, m) for m in ids if _keys(stack, m) or _item(stack, m)}
            pytest.fail(f"not swept within {SWEEP_TIMEOUT} s: {left}\n{stack.output()}",
                        pytrace=False)
        time.sleep(0.2)
    return time.monotonic() - started


def _wait_for_sweeps(log_path: Path, count: int) -> None:
    """Until the scheduler logging to log_path has finished `count` sweeps."""
    started = time.monotonic()
    def finished() -> int:
        text = log_path.read_text()
        return len(_sweep_events(text[:text.rfind("\n") + 1], "sweep.done"))  # whole lines

    while finished() < count:
        if time.monotonic() - started > SWEEP_TIMEOUT:
            pytest.fail(f"the second scheduler did not finish {count} sweeps within "
                        f"{SWEEP_TIMEOUT} s:\n{tail(log_path)}", pytrace=False)
        time.sleep(0.1)


def _sweep_events(text: str, event: str) -> list[dict]:
    found = []
    for line in text.splitlines():
        if line.startswith("{") and f'"event": "{event}"' in line:
            found.append(json.loads(line))
    return found


def test_the_stacks_scheduler_sweeps_expired_models_and_orphans(stack):
    expired, alive, ttl_gone = _train(stack, 3, "?ttl_hours=1")
    assert all(len(_keys(stack, m)) == 3 for m in (expired, alive, ttl_gone))
    _expire(stack, expired)
    # What AWS's TTL does (moto's never does): the item goes, the objects stay.
    stack.dynamodb_client.delete_item(TableName=stack.table.name,
                                      Key={"model_id": {"S": ttl_gone}})
    seconds = _wait_until_gone(stack, [expired, ttl_gone])
    assert len(_keys(stack, alive)) == 3 and _item(stack, alive) is not None
    assert stack.http.get(f"{stack.api}/check_model_status/{alive}").status_code == 200
    assert stack.http.delete(f"{stack.api}/models/{expired}").status_code == 404
    assert not _sweep_events(stack.output_path.read_text(), "sweep.failed")
    record(AREA, "Sweep on the local stack",
           "devstack.run with its scheduler sweeping every 1 s (orphan grace 2 s): one model "
           "expired (item kept, as moto does), one whose item was deleted (as AWS's TTL "
           "does), one alive", 2,
           f"both gone, objects and items, {seconds:.1f} s after; the alive model kept its "
           "3 objects and answers 200; no sweep.failed in the log")


def test_sweeps_race_each_other_and_deletes_without_harm(stack, tmp_path):
    ids = _train(stack, 8, "?ttl_hours=1")
    [alive] = _train(stack, 1)
    # A second EventBridge on the same emulator, sweeping every 0.2 s.
    log_path = tmp_path / "scheduler.log"
    env = clean_environment({"AWS_ENDPOINT_URL": stack.endpoint, "SCHEDULE_INTERVAL_SECONDS":
                             "0.2", "ORPHAN_GRACE_SECONDS": str(GRACE)})
    with open(log_path, "wb") as output:
        second = subprocess.Popen([sys.executable, "-m", "devstack.scheduler"], cwd=REPO,
                                  env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        # Both schedulers are sweeping (the second has started and swept twice:
        # how long its start takes depends on the machine's load, not on us).
        _wait_for_sweeps(log_path, 2)
        for model_id in ids:
            _expire(stack, model_id)
        with ThreadPoolExecutor(4) as pool:  # DELETEs of half of them, meanwhile
            deletes = list(pool.map(
                lambda m: stack.http.delete(f"{stack.api}/models/{m}", timeout=30).status_code,
                ids[::2]))
        seconds = _wait_until_gone(stack, ids)
        # a few more sweeps by the second, with nothing left to do
        _wait_for_sweeps(log_path, len(_sweep_events(log_path.read_text(), "sweep.done")) + 3)
    finally:
        stop_process(second)
    assert second.returncode == 0, tail(log_path)
    assert set(deletes) <= {204, 404}, deletes
    assert len(_keys(stack, alive)) == 3 and _item(stack, alive) is not None
    logs = stack.output_path.read_text() + log_path.read_text()
    assert not _sweep_events(logs, "sweep.failed")
    assert not _sweep_events(logs, "scheduler.handler_failed")
    sweeps = len(_sweep_events(log_path.read_text(), "sweep.done"))
    assert sweeps >= 5
    removed = [e["model_id"] for e in _sweep_events(logs, "sweep.removed") if e["model_id"] in ids]
    record(AREA, "Sweeps racing DELETEs",
           f"{len(ids)} models expired at once while two schedulers swept the same emulator "
           "(every 1 s and every 0.2 s) and 4 threads sent DELETE for half of them", len(ids),
           f"all gone {seconds:.1f} s after, objects and items; DELETE answers "
           f"{sorted(deletes)}; {len(removed)} removals logged by the sweeps (a model may be "
           f"removed by more than one, harmlessly); the second scheduler swept {sweeps} times; "
           "no failure logged; the alive model untouched")
