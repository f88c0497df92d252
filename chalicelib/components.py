"""Builds each component once per Lambda container from the stage's settings."""
from __future__ import annotations

import functools

from chalicelib import aws
from chalicelib.batches import BatchQueue, BatchRunner, BatchService, BatchTable
from chalicelib.config import Settings
from chalicelib.expiry import ExpirySweeper
from chalicelib.queue import TrainingQueue
from chalicelib.registry import ModelRegistry
from chalicelib.security import ApiKeys, ArtifactSigner
from chalicelib.serving import Predictor
from chalicelib.service import ModelService
from chalicelib.storage import ArtifactStore
from chalicelib.training import MemoryBudget, Trainer


@functools.cache
def settings() -> Settings:
    return Settings.from_env()


@functools.cache
def registry() -> ModelRegistry:
    return ModelRegistry(aws.client("dynamodb"), settings().table, settings().max_receives)


@functools.cache
def store() -> ArtifactStore:
    return ArtifactStore(aws.client("s3"), settings().bucket,
                         ArtifactSigner.from_env(lambda: aws.client("ssm")))


@functools.cache
def api_keys() -> ApiKeys:
    return ApiKeys.from_env(lambda: aws.client("ssm"))


@functools.cache
def service() -> ModelService:
    return ModelService(
        registry=registry(),
        store=store(),
        queue=TrainingQueue(aws.client("sqs"), settings().queue),
        predictor=Predictor(store(), settings().model_cache_size,
                            settings().model_recheck_seconds),
        max_upload_bytes=settings().max_upload_bytes,
        batches=batches(),
    )


@functools.cache
def batch_table() -> BatchTable:
    return BatchTable(aws.client("dynamodb"), settings().batches_table, settings().max_receives)


@functools.cache
def batches() -> BatchService:
    return BatchService(batch_table(), store(),
                        BatchQueue(aws.client("sqs"), settings().batch_queue))


@functools.cache
def batch_runner() -> BatchRunner:
    # Its own S3 client: completing the results' multipart upload may take minutes.
    batch_store = ArtifactStore(aws.slow_client("s3"), settings().bucket,
                                ArtifactSigner.from_env(lambda: aws.client("ssm")))
    return BatchRunner(batch_table(), batch_store, registry(),
                       Predictor(batch_store, 4, settings().model_recheck_seconds),
                       BatchQueue(aws.client("sqs"), settings().batch_queue),
                       settings().batch_lease_seconds, settings().max_receives)


@functools.cache
def trainer() -> Trainer:
    return Trainer(registry(), store(), settings().max_receives,
                   settings().training_lease_seconds,
                   MemoryBudget(settings().trainer_memory_mb, settings().max_dataset_bytes))


@functools.cache
def sweeper() -> ExpirySweeper:
    return ExpirySweeper(registry(), store(), batches=batches(),
                         orphan_grace_seconds=settings().orphan_grace_seconds,
                         upload_retention_seconds=settings().upload_retention_seconds)


def reset() -> None:
    """Forgets every built component (tests switch endpoints between cases)."""
    for getter in (settings, registry, store, api_keys, service, trainer, sweeper,
                   batch_table, batches, batch_runner,
                   aws.client, aws.slow_client, aws._session):
        getter.cache_clear()
