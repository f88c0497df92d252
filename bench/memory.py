"""The trainer's peak memory on a 100 MB CSV (the presigned-upload path).

A fresh process reads the CSV (the bytes S3 would hand the trainer), then does what Trainer.handle does between its S3 read and its S3 writes:
parse and validate, holdout fit, final fit, serving arrays. Peak RSS is the
process's ru_maxrss; the baseline row is the same process stopping after it
holds the body, so the difference is what training adds.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.report import Row
from bench.stack import REPO

_CHILD = r"""
import json, sys, time
from pathlib import Path
body, train = Path(sys.argv[1]).read_bytes(), sys.argv[2] == "train"
started = time.perf_counter()
if train:
    from chalicelib.csvdata import parse_training
    from chalicelib.serving import ServingModel
    from chalicelib.training import TrainingOptions, train_and_evaluate
    data = parse_training(body)
    pipeline, metrics = train_and_evaluate(data, TrainingOptions())
    ServingModel.from_pipeline(pipeline).to_bytes()
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across exec.
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status")
               if line.startswith("VmHWM:"))
print(json.dumps({"bytes": len(body), "peak_mb": peak_kb / 1024,
                  "seconds": time.perf_counter() - started}))
"""


def _csv(path: Path, rows: int) -> None:
    import numpy as np

    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, rows)
    features = rng.normal(0, 1, (rows, 4)) + labels[:, None]
    path.write_text("\n".join(f"{a:.5f},{b:.5f},{c:.5f},{d:.5f},{k}" for (a, b, c, d), k
                              in zip(features.tolist(), labels.tolist())) + "\n")


def _measure(path: Path, train: bool) -> dict:
    result = subprocess.run([sys.executable, "-c", _CHILD, str(path), "train" if train else "hold"],
                            cwd=REPO, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def run(rows: int = 3_000_000) -> list[Row]:
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "dataset.csv"
        _csv(path, rows)
        holding, training = _measure(path, train=False), _measure(path, train=True)
    return [Row(f"Trainer peak memory, {training['bytes'] / 1e6:.0f} MB CSV ({rows:,} rows x 4)",
                "MB", round(training["peak_mb"]), None,
                notes=(f"peak RSS of a fresh process parsing, validating and training (holdout fit, "
                       f"final fit) in {training['seconds']:.1f} s; the same process holding "
                       f"only the body peaks at {holding['peak_mb']:.0f} MB; the trainer Lambda "
                       "has 3,008 MB"))]
