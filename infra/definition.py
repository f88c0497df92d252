"""The one definition of ml-api's stateful resources (infra/resources.json)
and how it is rendered for a stage.

resources.json is a CloudFormation fragment (Resources and Outputs). Names are
placeholders, {{MODELS_BUCKET}} and the like, filled from the stage's settings,
i.e. from the environment variables .chalice/config.json gives the Lambda
functions: the stack creates exactly what the code will look for. Rendered, it
is the template `chalice package --merge-template` merges (infra.package), and
what devstack.bootstrap creates with boto3 (emulators, `chalice deploy`).
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

from chalicelib import batches, storage
from chalicelib.config import Settings

DEFINITION_PATH = Path(__file__).resolve().with_name("resources.json")
_PLACEHOLDER = re.compile(r"\{\{([A-Z0-9_]+)\}\}")


class DefinitionError(ValueError):
    pass


def variables(settings: Settings) -> dict[str, Any]:
    """What the placeholders stand for: the names and numbers the code reads."""
    return {
        "MODELS_BUCKET": settings.bucket,
        "MODELS_TABLE": settings.table,
        "TRAINING_QUEUE": settings.queue,
        "TRAINING_DLQ": settings.dead_letter_queue,
        # SQS dead-letters a message on this receive; the trainer marks the
        # model failed on the same one, so the two must agree.
        "TRAINING_MAX_RECEIVES": settings.max_receives,
        # The lifecycle rule for abandoned uploads, in chalicelib.storage's terms.
        "UPLOADS_PREFIX": storage.UPLOADS_PREFIX,
        "UPLOAD_STATE_TAG": storage.UPLOAD_STATE_TAG,
        "UPLOAD_UNCLAIMED": storage.UNCLAIMED,
        "UNCLAIMED_UPLOAD_DAYS": storage.UNCLAIMED_UPLOAD_DAYS,
        "UPLOAD_ORIGINS": list(settings.upload_origins),
        # Batch predictions (chalicelib.batches).
        "BATCHES_TABLE": settings.batches_table,
        "BATCHES_BY_MODEL_INDEX": batches.BY_MODEL_INDEX,
        "BATCH_QUEUE": settings.batch_queue,
        "BATCH_DLQ": settings.batch_dead_letter_queue,
        "BATCHES_PREFIX": storage.BATCHES_PREFIX,
        "BATCH_RETENTION_DAYS": storage.BATCH_RETENTION_DAYS,
    }


def load(path: Path = DEFINITION_PATH) -> dict:
    definition = json.loads(path.read_text())
    unknown = set(definition) - {"Resources", "Outputs"}
    if unknown or not isinstance(definition.get("Resources"), dict):
        raise DefinitionError(f"{path.name} must hold Resources (and Outputs) only; "
                              f"found {sorted(definition)}")
    return definition


def fill(value: Any, names: dict[str, Any], where: str) -> Any:
    if isinstance(value, dict):
        return {key: fill(item, names, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, list):
        return [fill(item, names, f"{where}[{i}]") for i, item in enumerate(value)]
    if not isinstance(value, str) or "{{" not in value:
        return value

    def lookup(name: str) -> Any:
        if name not in names:
            raise DefinitionError(f"{where}: unknown placeholder {{{{{name}}}}}; "
                                  f"known: {', '.join(sorted(names))}")
        return names[name]

    whole = _PLACEHOLDER.fullmatch(value)
    if whole:  # keeps the type: a number stays a number
        return lookup(whole.group(1))
    return _PLACEHOLDER.sub(lambda match: str(lookup(match.group(1))), value)


def render(settings: Settings, path: Path = DEFINITION_PATH,
           upload_origins: list | None = None) -> dict:
    """The definition with the placeholders filled from `settings`.

    The bucket's CORS rule lets browsers on `upload_origins` (else the stage's
    UPLOAD_ORIGINS) send upload forms. With neither, the rule is left out:
    only the caller knows the API's own origin (infra.package refers to the
    stack's API, infra.deploy sets it once the API exists, devstack.run
    passes the local API's)."""
    names = variables(settings)
    if upload_origins is not None:
        names["UPLOAD_ORIGINS"] = list(upload_origins)
    rendered = fill(copy.deepcopy(load(path)), names, path.name)
    if not names["UPLOAD_ORIGINS"]:
        for resource in rendered["Resources"].values():
            if resource.get("Type") == "AWS::S3::Bucket":
                resource.get("Properties", {}).pop("CorsConfiguration", None)
    return rendered
