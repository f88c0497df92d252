"""`make bench`: runs every benchmark, writes BENCHMARKS.md and prints it.

Sets up moto's server and an iris model first.

    python -m bench [--quick] [--only cold,warm,bulk,http,load,speed,memory,latency,batch]
                    [--batch-rows N] [--output PATH]

Exits 0 when every benchmark ran (whether or not it met its target), 1 when
one could not be measured (its row says ERROR and why). Logs of the processes
it starts are in .devstack/bench/.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

from bench.report import Row, Target, render_report
from bench.stack import REPO, Processes, progress

BENCHMARKS = ("cold", "warm", "bulk", "http", "load", "speed", "memory", "latency", "batch")

METHOD = """\
Setup: moto's server on a free 127.0.0.1 port (`devstack.emulator.start_moto`), the dev
stage's bucket, table and queues (`devstack.bootstrap`), and one model trained on
iris.csv in the harness's own process through the app: `POST /models`, then the
app's `train_model` SQS handler on the queued message (as Lambda's event source
mapping would call it). Every process (servers, children) gets AWS_ENDPOINT_URL,
test credentials, us-east-1 and the dev stage's variables.

- **Cold start**: `python -c` children, timed by the parent from spawn until
  the answer line arrives. Ours: `import app`, `chalice.test.Client`, the first
  `GET /models/{id}` with `6.9,3.1,5.1,2.3` (so it loads the model from the
  emulator). Baseline: `import boto3`, download `models/{id}/model.pkl`,
  unpickle the scikit-learn pipeline, `predict` + `predict_proba`. One untimed
  run of each first, then alternating runs; medians.
- **Warm 1-row predict**: in one process, `chalice.test.Client.http.get` on the
  predict route after a warm-up, alternating call by call with the baseline,
  bare `pipeline.predict(x)` + `pipeline.predict_proba(x)` on the unpickled
  pipeline; p50 and p99 of each call. The notes give the floor: the same client
  on a one-route Chalice app that answers a constant.
- **Bulk CSV predict**: iris-like rows (each class's means and spreads from
  iris.csv, normal noise, fixed seed, 4-5 decimals) sent through the same
  route; baseline `pandas.read_csv` + `pipeline.predict_proba` + `json.dumps`
  of `{"predictions", "prediction_probability"}`. An untimed first round checks
  our answer against the baseline's when ours is a 202; medians of alternating
  runs. The 50k row is informational (its answer fits Lambda's 6 MB limit).
- **HTTP keep-alive**: ours is `python -m devstack.server` (what `make run`
  serves, TCP_NODELAY) and the baseline `chalice local --no-autoreload --stage dev`,
  both on free ports against the same emulator. Each client is its own process
  (`bench.loadclient`: one raw keep-alive socket, one prebuilt request, only the
  status line and Content-Length parsed) sending single-row predicts back to
  back; the rate is the sum of the clients' rates of 202 answers. Rounds
  alternate ours/baseline; medians. The clients share the 2 cores with the
  server and the emulator, so the 4-client figure is bounded by the machine.
- **Load**: `python -m devstack.run` (API server and SQS runner, one worker per
  core) on the same emulator; 8 client threads on keep-alive connections share
  50 `POST /models` (iris.csv) and 5,000 single-row predicts, interleaved.
  Any transport error or unexpected status counts as an error (there must be
  none), and every model must reach "Ready to Use" (polled after the last
  request, bounded at 300 s).
- **Training speed**: a 100,000 rows x 20 features CSV (17 MB, 5 decimals, 3
  text classes); in one child on one BLAS/OpenMP thread (the machine is shared),
  after an untimed round, alternating runs of ours (`parse_training` +
  `train_and_evaluate`: holdout fit, final fit warm-started from it, metrics)
  and the baseline (`pandas.read_csv` + `make_pipeline(StandardScaler(),
  LogisticRegression(max_iter=1000)).fit`); medians. Target: ours within 1.5x
  the baseline.
- **Trainer memory**: 3,000,000 rows x 4 features with 5 decimals and 3 classes
  (100 MB), and that file repeated to 1 GB; a fresh child runs the trainer's
  path (`Trainer._read`: size check, the CSV streamed in 8 MB pieces as from
  S3's body, the memory budget; `train_and_evaluate`; the pickled pipeline and
  serving arrays). Ours: its peak RSS (VmHWM) above its RSS after its imports;
  baseline: the same for a child that only reads the CSV's bytes. Target: at
  most 3x the CSV's size.
- **Trainer capacity**: the trainer's path on 1 and 1.5 GB prefixes of
  the repeated file, each in a fresh child that the harness kills as soon as
  its peak RSS passes 3,008 MB (the trainer Lambda's memory), plus a sparse
  file 10% over the upload limit (refused before it is read). Reported: the
  largest that trains, and what each size ended with; an out-of-memory kill is
  an error.
- **Latency**: `python -m devstack.run` (the API server and the SQS runner, as
  `make run`) on the harness's emulator; iris posted 11 times, the first
  untimed, each polled every 5 ms with `GET /check_model_status` until "Ready
  to Use"; median. Baseline: the bare fit of iris (`make_pipeline(...)`),
  median of 10. The AWS calls of one training are counted in process with
  botocore's `before-call` event, through the route, the runner's
  `poll_once` and the trainer, on warm containers.
- **Batch predictions** (bench/batches.py): `python -m devstack.run` (one worker
  per runner) on the harness's emulator; a file of N x 4 iris-like rows (4
  decimals; N = 10,000,000 is about 300 MB; `--batch-rows`) predicted with the
  iris model by the CLI in a child process: `ml-api predict --batch` (upload
  form, batch, polling, download) and, as the baseline, `ml-api predict` (the
  file split into sync requests under Lambda's 6 MB), each timed end to end;
  the outputs compared row for row. Peak memory: the largest `max_memory_mb`
  of the batch runner's REPORT lines (VmHWM of run_batch's worker). Target: at
  most 512 MB, the function's memory.
"""


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _command(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "?"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _load_average() -> str:
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "?"


def environment() -> dict[str, str]:
    changed = _command(["git", "status", "--porcelain", "--", "app.py", "chalicelib"])
    changed_files = [line[3:] for line in changed.splitlines() if line[3:].strip()]
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "python": f"{platform.python_version()} ({sys.executable})",
        "numpy": _version("numpy"),
        "scikit-learn": _version("scikit-learn"),
        "pandas (baseline only)": _version("pandas"),
        "orjson": _version("orjson"),
        "chalice / boto3 / moto": " / ".join(_version(p) for p in ("chalice", "boto3", "moto")),
        "nproc": _command(["nproc"]).strip() or str(os.cpu_count()),
        "CPU": _cpu_model(),
        "git": (_command(["git", "rev-parse", "--short", "HEAD"]).strip()
                + (f", uncommitted changes in {', '.join(changed_files)}" if changed_files
                   else ", app.py and chalicelib/ as committed")),
        "load average (1/5/15 min) at start": _load_average(),
    }


def _failed(title: str, unit: str, error: BaseException, log_dir: Path, name: str) -> Row:
    log = log_dir / f"{name}-error.txt"
    log.write_text("".join(traceback.format_exception(error)))
    message = " ".join(f"{type(error).__name__}: {error}".split())[:300]
    return Row(title, unit, error=f"could not measure: {message} (traceback: {log.relative_to(REPO)})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer repetitions (a rough check of the harness, not figures)")
    parser.add_argument("--only", default=",".join(BENCHMARKS),
                        help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    parser.add_argument("--output", default=str(REPO / "BENCHMARKS.md"))
    parser.add_argument("--batch-rows", type=int, default=10_000_000,
                        help="rows of the batch benchmark's file (default 10,000,000, "
                             "about 300 MB; --quick: 200,000)")
    args = parser.parse_args(argv)
    selected = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(selected) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")

    # SIGTERM (make killed, CI timeout) unwinds like Ctrl-C so every process is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    quick = args.quick
    log_dir = REPO / ".devstack" / "bench"
    log_dir.mkdir(parents=True, exist_ok=True)
    env_facts = environment()
    started = time.monotonic()
    rows: list[Row] = []

    from bench import batches, coldstart, httpload, inprocess, load, stack, training

    with Processes(log_dir) as processes:
        try:
            progress("starting moto's server and training iris")
            endpoint = stack.start_emulator(processes)
            model_id = stack.train_iris()
            pipeline = stack.load_pipeline(model_id)
            progress(f"model {model_id} ready on {endpoint}")
        except Exception as error:
            rows.append(_failed("Setup: emulator, resources, iris model", "s", error, log_dir,
                                "setup"))
            selected = []

        plan = {
            "cold": ("Cold start", "s", lambda: coldstart.run(
                endpoint, model_id, repeats=2 if quick else 5)),
            "warm": ("Warm 1-row predict", "ms", lambda: inprocess.warm(
                model_id, pipeline, calls=300 if quick else 2000, max_seconds=60)),
            "bulk": ("Bulk CSV predict", "s", lambda: [
                inprocess.bulk(model_id, pipeline, rows=150_000, repeats=2 if quick else 5,
                               max_seconds=120, target=Target(min_speedup=4)),
                inprocess.bulk(model_id, pipeline, rows=50_000, repeats=2 if quick else 5,
                               max_seconds=60, target=None)]),
            "http": ("HTTP keep-alive predicts", "req/s", lambda: httpload.run(
                endpoint, model_id, processes, rounds=1 if quick else 3,
                seconds=2.0 if quick else 4.0)),
            "load": ("Load test", "req/s", lambda: load.run(endpoint, model_id, processes)),
            "speed": ("Training speed", "s", lambda: training.speed(
                repeats=2 if quick else 5)),
            "memory": ("Trainer memory and capacity", "MB", lambda: training.memory_and_capacity(
                quick=quick)),
            "latency": ("Training latency", "ms", lambda: training.latency(
                endpoint, processes, runs=3 if quick else 10)),
            "batch": ("Batch predictions", "rows/s", lambda: batches.run(
                endpoint, model_id, processes,
                rows=200_000 if quick and args.batch_rows == 10_000_000 else args.batch_rows)),
        }
        for name in BENCHMARKS:
            if name not in selected:
                continue
            title, unit, measure = plan[name]
            progress(f"{title} ...")
            try:
                rows.extend(measure())
            except Exception as error:
                progress(f"{title} failed: {type(error).__name__}: {error}")
                rows.append(_failed(title, unit, error, log_dir, name))

    env_facts["load average (1/5/15 min) at end"] = _load_average()
    env_facts["duration"] = f"{time.monotonic() - started:.0f} s" + (" (--quick)" if quick else "")
    report = render_report(rows, env_facts, METHOD)
    Path(args.output).write_text(report, encoding="utf-8")
    print(report, flush=True)
    progress(f"wrote {args.output}")
    return 1 if any(row.error for row in rows) else 0
