"""Settings read from the environment that `.chalice/config.json` sets per stage.

Every name here has a default so that the app imports with no environment at
all (chalice package/deploy import app.py to find its handlers).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

DEFAULT_BUCKET = "ml-api-dev-models"
DEFAULT_TABLE = "ml-api-dev-models"
DEFAULT_QUEUE = "ml-api-dev-training"
DEFAULT_BATCHES_TABLE = "ml-api-dev-batches"
DEFAULT_BATCH_QUEUE = "ml-api-dev-batches"
# The largest dataset POST /uploads accepts (S3 enforces it). 1 GiB: the most
# the trainer (3,008 MB, 900 s) is sized to read and fit; see docs/security.md.
DEFAULT_MAX_UPLOAD_BYTES = 1024 ** 3

# Read at import time because @app.on_sqs_message needs the queue name when
# Chalice builds the deployment; keep it equal to the stage's TRAINING_QUEUE.
TRAINING_QUEUE_NAME = os.environ.get("TRAINING_QUEUE", DEFAULT_QUEUE)
# The event source mapping's maximum concurrency, equal to the trainer's
# reserved concurrency: receives that Lambda would throttle still count
# towards the dead-letter queue's limit, so SQS must not hand out more.
TRAINER_MAX_CONCURRENCY = int(os.environ.get("TRAINER_MAX_CONCURRENCY", "5"))
# The same for the batch queue and its function (app.py's run_batch).
BATCH_QUEUE_NAME = os.environ.get("BATCH_QUEUE", DEFAULT_BATCH_QUEUE)
BATCH_MAX_CONCURRENCY = int(os.environ.get("BATCH_MAX_CONCURRENCY", "5"))
# How often EventBridge runs the sweep of expired models (app.py's sweep_expired):
# an expired model's data is gone at most this long after it expired (and
# hidden from every route at once).
SWEEP_RATE_MINUTES = 10
# Routes get API Gateway's X-Api-Key authorizer (set in the prod stage).
API_GATEWAY_AUTHORIZER = os.environ.get("API_GATEWAY_AUTHORIZER", "false") == "true"


@dataclass(frozen=True)
class Settings:
    bucket: str
    table: str
    queue: str
    dead_letter_queue: str
    # SQS moves a message to the dead-letter queue after this many receives;
    # the trainer marks the model failed on the last one.
    max_receives: int
    model_cache_size: int
    # How long a warm container trusts that a cached model still exists
    # before reading its status again (a deleted model answers until then).
    model_recheck_seconds: float
    # A trainer holds a model for this long (the trainer Lambda's timeout):
    # a second delivery of its message meanwhile does not train it again,
    # and after a crash the next delivery takes over once the lease ends.
    training_lease_seconds: float
    # The size limit in the signed policy of every presigned upload form.
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    # Browser origins allowed to upload to the bucket (its CORS rule); empty
    # means the stage's own API (the dashboard's origin), which the deploy
    # fills in. Read by infra, not by the functions.
    upload_origins: tuple[str, ...] = ()
    # The sweep removes objects named after a model with no item only once they
    # are this old (a submission stores its dataset just before its item), and
    # uploads that no model names this long after they were uploaded.
    orphan_grace_seconds: float = 3600.0
    upload_retention_seconds: float = 86400.0
    # The trainer's memory: Lambda sets AWS_LAMBDA_FUNCTION_MEMORY_SIZE in the
    # function's environment (3008 MB in .chalice/config.json).
    trainer_memory_mb: int = 3008
    # Uploads larger than this are refused before they are read (None: derived
    # from the trainer's memory, see training.MemoryBudget).
    max_dataset_bytes: int | None = None
    # Batch predictions (chalicelib.batches): their table and queue, and how
    # long a run_batch invocation holds a batch (its Lambda timeout).
    batches_table: str = DEFAULT_BATCHES_TABLE
    batch_queue: str = DEFAULT_BATCH_QUEUE
    batch_dead_letter_queue: str = DEFAULT_BATCH_QUEUE + "-dlq"
    batch_lease_seconds: float = 900.0

    @classmethod
    def from_env(cls) -> "Settings":
        queue = os.environ.get("TRAINING_QUEUE", DEFAULT_QUEUE)
        batch_queue = os.environ.get("BATCH_QUEUE", DEFAULT_BATCH_QUEUE)
        return cls(
            bucket=os.environ.get("MODELS_BUCKET", DEFAULT_BUCKET),
            table=os.environ.get("MODELS_TABLE", DEFAULT_TABLE),
            queue=queue,
            dead_letter_queue=os.environ.get("TRAINING_DLQ", queue + "-dlq"),
            max_receives=int(os.environ.get("TRAINING_MAX_RECEIVES", "3")),
            model_cache_size=int(os.environ.get("MODEL_CACHE_SIZE", "32")),
            model_recheck_seconds=float(os.environ.get("MODEL_RECHECK_SECONDS", "60")),
            training_lease_seconds=float(os.environ.get("TRAINING_LEASE_SECONDS", "900")),
            max_upload_bytes=int(os.environ.get("MAX_UPLOAD_BYTES", DEFAULT_MAX_UPLOAD_BYTES)),
            upload_origins=tuple(origin.strip() for origin in
                                 os.environ.get("UPLOAD_ORIGINS", "").split(",")
                                 if origin.strip()),
            orphan_grace_seconds=float(os.environ.get("ORPHAN_GRACE_SECONDS", "3600")),
            upload_retention_seconds=float(os.environ.get("UPLOAD_RETENTION_SECONDS", "86400")),
            trainer_memory_mb=int(os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "3008")),
            max_dataset_bytes=(int(os.environ["MAX_DATASET_BYTES"])
                               if os.environ.get("MAX_DATASET_BYTES") else None),
            batches_table=os.environ.get("BATCHES_TABLE", DEFAULT_BATCHES_TABLE),
            batch_queue=batch_queue,
            batch_dead_letter_queue=os.environ.get("BATCH_DLQ", batch_queue + "-dlq"),
            batch_lease_seconds=float(os.environ.get("BATCH_LEASE_SECONDS", "900")),
        )
