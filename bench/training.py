"""Training benchmarks: speed, memory, capacity and latency (issue #12).

- speed: parse + train_and_evaluate on 100,000 rows x 20 features (17 MB)
  against pandas.read_csv + a bare scikit-learn pipeline fit, in one child
  process, alternating, medians.
- memory and capacity: the trainer's own path (Trainer._read: the size check,
  the CSV streamed in pieces as from S3's body, the memory budget; then
  train_and_evaluate, the pickled pipeline and the serving arrays) in a fresh
  child per size, watched by the parent, which kills it the moment its peak
  resident memory (the kernel's VmHWM) passes the trainer Lambda's 3,008 MB:
  what Lambda does to a function over its memory. The figure is the peak above
  the child's own after its imports, as a multiple of the CSV's size.
- latency: iris from POST /models to "Ready to Use" on `python -m devstack.run`
  (the API server and the SQS runner, as `make run`), polled every 5 ms;
  baseline: the bare fit of iris. The AWS calls one training makes are counted
  in process (botocore's before-call event) through the same code.
"""
from __future__ import annotations

import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.report import Row, Target
from bench.stack import (CSV_HEADERS, HOST, IRIS_PATH, REPO, Processes, child_environment,
                         free_ports, progress, wait_for_port)

LAMBDA_MEMORY_MB = 3008
# The machine is shared by several sessions: BLAS and OpenMP threads spinning
# against each other's make timings meaningless, so every timed child (ours
# and the baselines alike) computes on one thread.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

_SPEED_CHILD = r"""
import io, json, sys, time
import numpy as np, pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from chalicelib.csvdata import parse_training
from chalicelib.training import TrainingOptions, train_and_evaluate

body = open(sys.argv[1], "rb").read()
repeats = int(sys.argv[2])

def ours():
    data = parse_training(body)
    return train_and_evaluate(data, TrainingOptions())[1]

def baseline():
    frame = pd.read_csv(io.BytesIO(body), header=None)
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(
        frame.iloc[:, :-1].to_numpy(), frame.iloc[:, -1].to_numpy())

def parse(): parse_training(body)
def loadtxt(): np.loadtxt(io.BytesIO(body), delimiter=",", usecols=range(20))
def pandas(): pd.read_csv(io.BytesIO(body), header=None)
frame = pd.read_csv(io.BytesIO(body), header=None)
x, y = frame.iloc[:, :-1].to_numpy(), frame.iloc[:, -1].to_numpy()
def bare_fit(): make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, y)
def train():
    data = parse_training(body)
    started = time.perf_counter()
    train_and_evaluate(data, TrainingOptions())
    return time.perf_counter() - started

steps = {"ours": ours, "baseline": baseline, "parse": parse, "loadtxt": loadtxt,
         "pandas": pandas, "bare_fit": bare_fit}
for step in steps.values():
    step()  # untimed: imports, caches
times = {name: [] for name in [*steps, "train"]}
for _ in range(repeats):
    for name, step in steps.items():
        started = time.perf_counter()
        step()
        times[name].append(time.perf_counter() - started)
    times["train"].append(train())
metrics = ours()
print(json.dumps({"times": times, "iterations": metrics["iterations"],
                  "holdout_iterations": metrics["holdout_iterations"],
                  "baseline_iterations": int(baseline()[-1].n_iter_.max())}))
"""

_TRAINER_CHILD = r"""
import json, os, pickle, sys, time
from chalicelib.csvdata import CsvError
from chalicelib.serving import ServingModel
from chalicelib.training import MemoryBudget, Trainer, TrainingOptions, train_and_evaluate
import scipy.optimize, sklearn.linear_model, sklearn.metrics, sklearn.pipeline  # imported by training

def status(field):
    return next(int(line.split()[1]) for line in open("/proc/self/status")
                if line.startswith(field + ":")) / 1024

class Prefix:
    # The first `size` bytes of a file, read as S3's StreamingBody is.
    def __init__(self, path, size):
        self._file, self._left = open(path, "rb"), size
    def read(self, n=-1):
        n = self._left if n < 0 else min(n, self._left)
        data = self._file.read(n)
        self._left -= len(data)
        return data
    def close(self):
        self._file.close()

class Store:
    def __init__(self, path, size):
        self.path, self.size = path, size
    def open_dataset(self, key):
        return Prefix(self.path, self.size), self.size

path, size, hold = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "hold"
baseline_mb = status("VmRSS")
started = time.perf_counter()
outcome = "trained"
if hold:
    stream = Prefix(path, size)
    body = stream.read()
    outcome = "held"
else:
    trainer = Trainer(None, Store(path, size), 3, 900, MemoryBudget(int(sys.argv[4])))
    try:
        data = trainer._read("datasets/bench.csv", False)
        trainer._budget.check_fit(data)
        shape = (data.n_rows, data.n_features)
        pipeline, metrics = train_and_evaluate(data, TrainingOptions())
        del data
        pickle.dumps(pipeline)
        ServingModel.from_pipeline(pipeline).to_bytes()
    except CsvError as error:  # what marks the model "Training Failed"
        outcome = "Training Failed: " + str(error)
print(json.dumps({"outcome": outcome, "baseline_mb": baseline_mb, "peak_mb": status("VmHWM"),
                  "seconds": time.perf_counter() - started}), flush=True)
"""


def _write_iris_like_rows(path: Path, rows: int, seed: int = 5) -> None:
    """The memory benchmark's shape: 4 features with 5 decimals, 3 classes."""
    import numpy as np

    rng = np.random.default_rng(seed)
    with open(path, "w") as out:
        for start in range(0, rows, 500_000):
            n = min(500_000, rows - start)
            labels = rng.integers(0, 3, n)
            features = rng.normal(0, 1, (n, 4)) + labels[:, None]
            out.write("\n".join(f"{a:.5f},{b:.5f},{c:.5f},{d:.5f},{k}" for (a, b, c, d), k
                                in zip(features.tolist(), labels.tolist())) + "\n")


def _repeat_to(piece: Path, path: Path, size: int) -> None:
    """`path`, at least `size` bytes, made of copies of `piece` (whole lines)."""
    block = piece.read_bytes()
    with open(path, "wb") as out:
        for _ in range(-(-size // len(block))):
            out.write(block)


def _prefix_size(path: Path, size: int) -> int:
    """The largest whole-line prefix of `path` of at most `size` bytes."""
    with open(path, "rb") as source:
        source.seek(max(0, size - 4096))
        tail = source.read(4096)
    return max(0, size - 4096) + tail.rfind(b"\n") + 1


def _run_watched(argv: list[str], limit_mb: float | None, timeout: float = 1800) -> dict:
    """Runs a child; kills it as soon as its peak resident memory passes limit_mb."""
    env = {**os.environ, **ONE_THREAD}
    child = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    killed_at = []

    def watch() -> None:
        while child.poll() is None:
            try:
                with open(f"/proc/{child.pid}/status") as status:
                    peak = next(int(line.split()[1]) for line in status
                                if line.startswith("VmHWM:")) / 1024
            except (OSError, StopIteration):
                return
            if limit_mb is not None and peak > limit_mb:
                child.kill()
                killed_at.append(peak)
                return
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        out, err = child.communicate(timeout=timeout)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    watcher.join(timeout=5)
    if killed_at:
        return {"outcome": f"killed: peak {killed_at[0]:,.0f} MB passed {limit_mb:,.0f} MB",
                "peak_mb": killed_at[0]}
    if child.returncode != 0:
        raise RuntimeError(f"exit {child.returncode}: {err[-1500:]}")
    return json.loads(out.strip().splitlines()[-1])


def _trainer(path: Path, size: int, limit_mb: float | None = LAMBDA_MEMORY_MB) -> dict:
    return _run_watched([sys.executable, "-c", _TRAINER_CHILD, str(path), str(size), "train",
                         str(LAMBDA_MEMORY_MB)], limit_mb)


def _holding(path: Path, size: int) -> dict:
    return _run_watched([sys.executable, "-c", _TRAINER_CHILD, str(path), str(size), "hold"],
                        None)


def speed(repeats: int = 5) -> list[Row]:
    import numpy as np

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "100k_x_20.csv"
        rng = np.random.default_rng(0)
        labels = rng.integers(0, 3, 100_000)
        x = rng.normal(0, 1, (100_000, 20)) + labels[:, None] * 0.3
        names = np.array(["setosa", "versicolor", "virginica"])
        path.write_text("\n".join(",".join(f"{v:.5f}" for v in row) + "," + names[k]
                                  for row, k in zip(x.tolist(), labels.tolist())) + "\n")
        size_mb = path.stat().st_size / 1e6
        result = _run_watched([sys.executable, "-c", _SPEED_CHILD, str(path), str(repeats)],
                              None)
    median = {name: statistics.median(values) for name, values in result["times"].items()}
    baseline = median["baseline"]
    ratio = median["ours"] / baseline
    notes = (f"{size_mb:.1f} MB CSV, 3 string classes; medians of {repeats} alternating runs "
             f"in one child on 1 BLAS/OpenMP thread (the machine is shared); ours / baseline "
             f"= {ratio:.2f}x (target <= 1.5x; issue #12 measured 5.3x). Steps: our parse "
             f"{median['parse']:.3f} s, numpy.loadtxt {median['loadtxt']:.3f} s, pandas.read_csv "
             f"{median['pandas']:.3f} s; our train_and_evaluate (holdout fit "
             f"{result['holdout_iterations']} iterations, final fit warm-started "
             f"{result['iterations']}, metrics) {median['train']:.3f} s, the bare fit "
             f"{median['bare_fit']:.3f} s ({result['baseline_iterations']} iterations)")
    return [Row("Training speed: parse + train 100k rows x 20 features (ours) vs "
                "pandas.read_csv + bare pipeline fit", "s", median["ours"], baseline,
                target=Target(min_speedup=round(1 / 1.5, 3)), notes=notes)]


CAPACITY_SIZES_GB = (1.0, 1.5)


def memory_and_capacity(quick: bool = False) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(dir=REPO / ".devstack") as scratch:
        piece = Path(scratch) / "piece.csv"
        piece_rows = 300_000 if quick else 3_000_000
        _write_iris_like_rows(piece, piece_rows)
        piece_size = piece.stat().st_size
        big = Path(scratch) / "big.csv"
        capacity: list[tuple[int, dict]] = []
        if not quick:
            sizes = [int(gb * 1e9) for gb in CAPACITY_SIZES_GB]
            _repeat_to(piece, big, max(sizes))
            for size in sizes:
                size = _prefix_size(big, size)
                progress(f"capacity: {size / 1e9:.2f} GB within {LAMBDA_MEMORY_MB} MB")
                capacity.append((size, _trainer(big, size)))
            # Over the upload limit: refused before a byte is read.
            over = int(MemoryBudgetFacts.max_dataset_bytes() * 1.1)
            sparse = Path(scratch) / "over.csv"
            with open(sparse, "wb") as out:
                out.truncate(over)
            capacity.append((over, _trainer(sparse, over)))
        memory = [(piece, piece_size, _trainer(piece, piece_size, limit_mb=None))]
        if capacity:
            memory.append((big, capacity[0][0], capacity[0][1]))
        for path, size, trained in memory:
            progress(f"memory: {size / 1e6:,.0f} MB")
            held = _holding(path, size)
            if trained["outcome"] != "trained":
                raise RuntimeError(f"the {size:,}-byte CSV did not train: {trained['outcome']}")
            size_mb = size / 2**20
            ours = trained["peak_mb"] - trained["baseline_mb"]
            ratio = ours / size_mb
            n_rows = round(size / piece_size * piece_rows)
            rows.append(Row(
                f"Trainer peak memory, {size / 1e6:,.0f} MB CSV ({n_rows:,} rows x 4, 3 "
                "classes), above the process after its imports", "MB", round(ours),
                round(held["peak_mb"] - held["baseline_mb"]), target=Target(at_most=3 * size_mb),
                notes=f"{ratio:.2f}x the CSV (target <= 3x; issue #12 measured 12.6x). Streamed "
                      f"in pieces as from S3, size and memory budget checked, holdout and "
                      f"final fit, artifacts built, in {trained['seconds']:.0f} s; the "
                      f"matrix alone is {n_rows * 32 / 2**20:,.0f} MB (8 bytes a value: "
                      f"4 values of ~8 characters a row), then 4 bytes a row of class codes, "
                      f"a piece of CSV being read, and the holdout's row indices for a moment. "
                      f"Baseline: the same process only reading the CSV's bytes (what .read() "
                      f"of the S3 body costs); the speed-up column is that / ours"))
        if capacity:
            trained = [size for size, outcome in capacity if outcome["outcome"] == "trained"]
            largest = max(trained) if trained else None
            killed = [size for size, outcome in capacity if outcome["outcome"].startswith("killed")]
            described = "; ".join(
                f"{size / 1e9:.2f} GB: {outcome['outcome'][:200]}"
                + (f" (peak {outcome['peak_mb']:,.0f} MB, {outcome.get('seconds', 0):.0f} s)"
                   if outcome["outcome"] == "trained" else "")
                for size, outcome in capacity)
            rows.append(Row(
                f"Trainer capacity within {LAMBDA_MEMORY_MB:,} MB: largest CSV that trains "
                "(4 features, 3 classes)", "GB", None if largest is None else round(largest / 1e9, 2),
                None, target=Target(at_least=1.0),
                notes=f"each size in a fresh child killed as soon as its peak RSS (VmHWM) passes "
                      f"{LAMBDA_MEMORY_MB} MB, as Lambda would; out-of-memory kills: "
                      f"{len(killed)} (there must be none: a larger CSV must end 'Training "
                      f"Failed' naming its size). The memory budget lets "
                      f"{MemoryBudgetFacts.max_rows(5):,} rows of 4 features through (about "
                      f"{MemoryBudgetFacts.max_rows(5) * piece_size / piece_rows / 1e9:.2f} GB of "
                      f"this CSV); more stop while being read, with the reason. {described}",
                error=None if not killed else "killed for memory instead of failing cleanly"))
    return rows


class MemoryBudgetFacts:
    @staticmethod
    def max_dataset_bytes() -> int:
        from chalicelib.training import MemoryBudget

        return MemoryBudget(LAMBDA_MEMORY_MB).max_dataset_bytes

    @staticmethod
    def max_rows(width: int) -> int:
        from chalicelib.training import MemoryBudget

        return MemoryBudget(LAMBDA_MEMORY_MB).max_rows(width)


def count_aws_calls() -> list[str]:
    """The AWS calls of one iris training, in order: POST /models (the route),
    the runner's receive, the trainer, the runner's delete. In process, on the
    emulator the harness started, through the same code."""
    from chalicelib import aws, components
    from devstack.sqs_runner import InProcess, SqsEventSourceRunner
    from bench.stack import test_client

    import app

    components.reset()
    calls: list[str] = []

    def count(model, **_) -> None:
        calls.append(f"{model.service_model.service_name}.{model.name}")

    aws._session().register("before-call", count)
    with test_client() as client:
        client.http.post("/models", headers=dict(CSV_HEADERS), body=IRIS_PATH.read_bytes())
    sqs = aws.client("sqs")
    queue_url = sqs.get_queue_url(QueueName=components.settings().queue)["QueueUrl"]
    runner = SqsEventSourceRunner(sqs, queue_url, InProcess(app.train_model))
    while runner.poll_once():  # the first training: clients built, imports done
        pass
    calls.clear()  # what warm containers make: from the POST on
    with test_client() as client:
        answer = client.http.post("/models", headers=dict(CSV_HEADERS),
                                  body=IRIS_PATH.read_bytes())
        model_id = answer.json_body["model_id"]
    if runner.poll_once() != 1:
        raise RuntimeError("the runner did not receive the training message")
    made = list(calls)
    aws._session().unregister("before-call", count)
    components.reset()
    status = components.registry().get(model_id).status
    if str(status) != "READY":
        raise RuntimeError(f"the counted training ended {status}")
    return made


def latency(endpoint: str, processes: Processes, runs: int = 10) -> list[Row]:
    calls = count_aws_calls()
    env = {**child_environment(endpoint), **ONE_THREAD}
    [port] = free_ports(1)
    emulator_port = endpoint.rsplit(":", 1)[1]
    stack = processes.start("latency-stack", [
        sys.executable, "-m", "devstack.run", "--port", str(port), "--emulator-port",
        emulator_port, "--log-dir", str(processes.log_dir / "latency-stack")], env)
    iris = IRIS_PATH.read_bytes()
    times, posts = [], []
    try:
        wait_for_port(port, stack, "the latency stack's API", processes.log_path("latency-stack"))
        connection = http.client.HTTPConnection(HOST, port, timeout=30)
        for run in range(runs + 1):  # the first, untimed, warms the runner's imports
            started = time.perf_counter()
            connection.request("POST", "/models", body=iris, headers=dict(CSV_HEADERS))
            answer = connection.getresponse()
            model_id = json.loads(answer.read())["model_id"]
            posted = time.perf_counter()
            while True:
                connection.request("GET", f"/check_model_status/{model_id}")
                status = json.loads(connection.getresponse().read())["status"]
                if status != "Model is Training":
                    break
                if time.perf_counter() - started > 60:
                    raise RuntimeError(f"iris still training after 60 s ({model_id})")
                time.sleep(0.005)
            if status != "Ready to Use":
                raise RuntimeError(f"iris ended {status!r}")
            if run:
                times.append(time.perf_counter() - started)
                posts.append(posted - started)
        connection.close()
    finally:
        processes.stop(stack)
    bare = _bare_iris_fit(runs)
    ours = statistics.median(times)
    return [Row("Latency: iris POST /models -> 'Ready to Use' on the local stack (devstack.run), "
                "vs the bare fit of iris", "ms", ours * 1000, bare * 1000,
                target=Target(at_most=100.0),
                notes=f"median of {runs} after one untimed, status polled every 5 ms, stack "
                      f"and baseline on 1 BLAS/OpenMP thread; the POST "
                      f"alone {statistics.median(posts) * 1000:.1f} ms; runs (ms): "
                      + ", ".join(f"{t * 1000:.0f}" for t in times)
                      + f". AWS calls for one training (warm containers): {len(calls)}: "
                      + ", ".join(calls)
                      + " (issue #12: 143 ms; the trainer read the item before its conditional "
                        "write, 12 calls)")]


def _bare_iris_fit(runs: int) -> float:
    code = ("import time, statistics, numpy as np\n"
            "from sklearn.linear_model import LogisticRegression\n"
            "from sklearn.pipeline import make_pipeline\n"
            "from sklearn.preprocessing import StandardScaler\n"
            f"rows = [l.split(',') for l in open({str(IRIS_PATH)!r}).read().split()]\n"
            "x = np.array([[float(v) for v in r[:4]] for r in rows]); y = np.array([r[4] for r in rows])\n"
            "make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, y)\n"
            "times = []\n"
            f"for _ in range({runs}):\n"
            "    s = time.perf_counter()\n"
            "    make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, y)\n"
            "    times.append(time.perf_counter() - s)\n"
            "print(statistics.median(times))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=300, env={**os.environ, **ONE_THREAD})
    if result.returncode:
        raise RuntimeError(result.stderr[-1500:])
    return float(result.stdout.strip().splitlines()[-1])
