"""Structured log lines: one JSON object each, carrying model_id/task_id."""
from __future__ import annotations

import json
import logging
import sys

# Not "ml-api": Chalice owns the logger named after the app and sets it to ERROR.
_logger = logging.getLogger("ml_api.events")
if not _logger.handlers:
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(logging.Formatter("%(message)s"))
    _logger.addHandler(_handler)
    _logger.setLevel(logging.INFO)
    _logger.propagate = False


def log(event: str, level: int = logging.INFO, **fields) -> None:
    _logger.log(level, json.dumps({"event": event, **fields}, default=str))
