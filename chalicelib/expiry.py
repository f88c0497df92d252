"""Removing models: a DELETE, and the scheduled sweep of expired ones.

A model submitted with ?ttl_hours is hidden from every route once it expires
(chalicelib.registry). DynamoDB's TTL removes its item eventually (within days
on AWS, never on moto) and nothing else: the dataset and the artifacts would
stay in S3. The sweep (app.py's `sweep_expired`, run by EventBridge on a
schedule, locally by devstack.scheduler) removes them:

1. Every item is read from the by_created index (it holds them all). An
   expired one, or one a DELETE hid and did not finish, is removed like a
   DELETE removes a model: hidden first, with a condition that it is expired
   (or already hidden), so a model that is alive is never touched; then its
   artifacts and dataset; its item last, so a removal cut short is found and
   finished by the next sweep.
2. Objects named after a model that has no item (DynamoDB's TTL removed it
   before the sweep came, or a trainer finished after the model was gone) are
   removed once they are older than `orphan_grace_seconds`: a submission
   stores its dataset a moment before its item, and that moment must pass.
   Each one's item is read again (consistently) before anything is removed.
3. Uploads (`uploads/`) carry an upload id, not a model's. An expired model's
   upload goes with it, as with DELETE, unless a model that has not expired
   trains or was trained on the same upload: the last one using it takes it.
   An upload that no item names (never submitted, or its model's item was
   removed by DynamoDB's TTL first) is removed `upload_retention_seconds`
   after it was uploaded.

Every step is idempotent, so sweeps may overlap each other and DELETEs: the
worst is an object removed twice (S3's DELETE of a missing key succeeds).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

from chalicelib.logs import log
from chalicelib.registry import ModelRegistry, StoredModel
from chalicelib.storage import (DATASETS_PREFIX, MODELS_PREFIX, UPLOADS_PREFIX, ArtifactStore,
                                model_id_of)


def remove_model(registry: ModelRegistry, store: ArtifactStore, model_id: str, dataset_key: str,
                 *, keep_dataset: bool = False, expired_by: float | None = None,
                 batches=None) -> bool:
    """Hides the model, removes its batches (chalicelib.batches.BatchService),
    artifacts and dataset, then its item. With `expired_by`, only if it had
    expired by then (or was already hidden): False and nothing removed when it
    is alive."""
    if not registry.mark_deleting(model_id, expired_by) and expired_by is not None \
            and registry.get(model_id, include_deleting=True, include_expired=True) is not None:
        return False  # alive (the condition failed, and the item is there)
    if batches is not None:
        batches.remove_for_model(model_id)
    # No item any more: another remover is at work or done. What is left of it
    # is the expired model's, and removing it again is harmless.
    store.delete_artifacts(model_id)
    if not keep_dataset:
        store.delete_dataset(dataset_key)
    registry.delete(model_id)
    return True


@dataclass
class SweepReport:
    expired: list[str] = field(default_factory=list)
    finished_deletes: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)  # object keys
    uploads: list[str] = field(default_factory=list)  # object keys
    failures: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {name: len(value) for name, value in vars(self).items()}


class ExpirySweeper:
    def __init__(self, registry: ModelRegistry, store: ArtifactStore, *,
                 orphan_grace_seconds: float, upload_retention_seconds: float,
                 clock: Callable[[], float] = time.time, batches=None):
        self._registry = registry
        self._batches = batches
        self._store = store
        self._orphan_grace = orphan_grace_seconds
        self._upload_retention = upload_retention_seconds
        self._clock = clock

    def sweep(self) -> SweepReport:
        now = self._clock()
        report = SweepReport()
        models = list(self._registry.every_model())
        self._remove_expired(models, now, report)
        known = {model.model_id for model in models}
        named = {model.dataset_key for model in models}
        for prefix in (DATASETS_PREFIX, MODELS_PREFIX):
            for key, modified in self._store.objects(prefix):
                model_id = model_id_of(key)
                if model_id is None or model_id in known or modified > now - self._orphan_grace:
                    continue
                self._attempt(report, key, lambda: self._remove_orphan(key, model_id, report))
        for key, modified in self._store.objects(UPLOADS_PREFIX):
            if key not in named and modified <= now - self._upload_retention:
                self._attempt(report, key, lambda: self._remove(key, report.uploads))
        log("sweep.done", level=logging.WARNING if report.failures else logging.INFO,
            **report.counts())
        return report

    def _remove_expired(self, models: list[StoredModel], now: float, report: SweepReport) -> None:
        def unfinished_delete(model: StoredModel) -> bool:
            since = model.deleting_since(now)
            return since is not None and since > self._orphan_grace

        removable = [m for m in models if m.expired(now) or unfinished_delete(m)]
        gone = {m.model_id for m in removable}
        in_use = {m.dataset_key for m in models if m.model_id not in gone}
        for model in removable:
            def remove(model=model) -> None:
                # The item's expiry is checked again, consistently, as it is hidden.
                if remove_model(self._registry, self._store, model.model_id, model.dataset_key,
                                keep_dataset=model.dataset_key in in_use, expired_by=now,
                                batches=self._batches):
                    (report.expired if model.expired(now)
                     else report.finished_deletes).append(model.model_id)
                    log("sweep.removed", model_id=model.model_id,
                        reason="expired" if model.expired(now) else "unfinished DELETE",
                        kept_dataset=model.dataset_key in in_use)
            self._attempt(report, model.model_id, remove)

    def _remove_orphan(self, key: str, model_id: str, report: SweepReport) -> None:
        # The index lags: read the item itself before deciding it is gone.
        if self._registry.get(model_id, include_deleting=True, include_expired=True) is None:
            self._remove(key, report.orphans)

    def _remove(self, key: str, removed: list[str]) -> None:
        self._store.delete(key)
        removed.append(key)
        log("sweep.removed_object", key=key)

    def _attempt(self, report: SweepReport, what: str, action: Callable[[], None]) -> None:
        """One model or object at a time: a failure is logged and the sweep goes
        on; the next sweep tries it again."""
        try:
            action()
        except Exception as error:
            report.failures.append(what)
            log("sweep.failed", level=logging.ERROR, what=what,
                error=f"{type(error).__name__}: {error}")
