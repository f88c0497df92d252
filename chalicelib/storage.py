"""S3 artifacts: the one place that knows the key layout."""
from __future__ import annotations

import calendar
import hashlib
from typing import Iterator

from botocore.exceptions import ClientError

from chalicelib.security import SIGNATURE_METADATA, ArtifactSigner

# The fitted scikit-learn pipeline, pickled: for download and for scikit-learn users.
PIPELINE_ARTIFACT = "model.pkl"
# The arrays the numpy-only predict path needs (numpy .npz, no pickle).
SERVING_ARTIFACT = "serving.npz"
# The full metrics, when their per-class figures are too large for the status item.
METRICS_ARTIFACT = "metrics.json"


DATASETS_PREFIX = "datasets/"
MODELS_PREFIX = "models/"
UPLOADS_PREFIX = "uploads/"
# Every upload arrives tagged unclaimed (the POST form requires the tag), and
# the bucket's lifecycle rule (infra/resources.json) deletes unclaimed uploads
# after UNCLAIMED_UPLOAD_DAYS. POST /models {"upload_id"} claims one: it
# becomes that model's dataset and stays until the model is deleted.
UPLOAD_STATE_TAG = "ml-api-upload"
UNCLAIMED, CLAIMED = "unclaimed", "claimed"
UNCLAIMED_UPLOAD_DAYS = 1
UPLOAD_CONTENT_TYPE = "text/csv"
# Batch predictions: a posted input and the results, under one prefix that
# the bucket's lifecycle rule empties after BATCH_RETENTION_DAYS (and where it
# aborts multipart uploads left unfinished for a day).
BATCHES_PREFIX = "batches/"
BATCH_RETENTION_DAYS = 7


def dataset_key(model_id: str) -> str:
    return f"{DATASETS_PREFIX}{model_id}.csv"


def upload_key(upload_id: str) -> str:
    return f"{UPLOADS_PREFIX}{upload_id}.csv"


def _tagging(value: str) -> str:
    """S3's XML form of the one tag, as a POST form's tagging field takes it."""
    return (f"<Tagging><TagSet><Tag><Key>{UPLOAD_STATE_TAG}</Key><Value>{value}</Value>"
            "</Tag></TagSet></Tagging>")
def batch_input_key(batch_id: str) -> str:
    return f"{BATCHES_PREFIX}{batch_id}/input.csv"


def batch_result_key(batch_id: str) -> str:
    return f"{BATCHES_PREFIX}{batch_id}/results.csv"


def upload_id_of(key: str) -> str | None:
    """The upload id an uploads/ key was made from (None for other keys)."""
    if not (key.startswith(UPLOADS_PREFIX) and key.endswith(".csv")):
        return None
    return key[len(UPLOADS_PREFIX):-len(".csv")]


def artifact_key(model_id: str, name: str) -> str:
    return f"{MODELS_PREFIX}{model_id}/{name}"


def model_id_of(key: str) -> str | None:
    """The model a dataset or artifact key belongs to; None for other keys
    (uploads carry an upload id, not a model's)."""
    if key.startswith(DATASETS_PREFIX) and key.endswith(".csv"):
        return key[len(DATASETS_PREFIX):-len(".csv")] or None
    if key.startswith(MODELS_PREFIX) and "/" in key[len(MODELS_PREFIX):]:
        return key[len(MODELS_PREFIX):].split("/", 1)[0] or None
    return None


class ArtifactStore:
    def __init__(self, s3, bucket: str, signer: ArtifactSigner):
        self._s3 = s3  # a boto3 S3 client
        self._bucket = bucket
        self._signer = signer

    def put_dataset(self, model_id: str, body: bytes) -> str:
        key = dataset_key(model_id)
        self._s3.put_object(Bucket=self._bucket, Key=key, Body=body, ContentType="text/csv")
        return key

    def open_dataset(self, key: str):
        """(a stream of the dataset's bytes, its size): nothing is read yet, so
        a caller can refuse a size before reading it. Close the stream."""
        response = self._s3.get_object(Bucket=self._bucket, Key=key)
        return response["Body"], response["ContentLength"]

    def delete_dataset(self, key: str) -> None:
        self.delete(key)

    def delete(self, key: str) -> None:
        """Removes an object; nothing happens if there is none (S3's DELETE is idempotent)."""
        self._s3.delete_object(Bucket=self._bucket, Key=key)

    def objects(self, prefix: str) -> Iterator[tuple[str, float]]:
        """(key, last modified in epoch seconds) of every object under `prefix`."""
        request = {"Bucket": self._bucket, "Prefix": prefix}
        while True:
            page = self._s3.list_objects_v2(**request)
            for entry in page.get("Contents", []):
                yield entry["Key"], calendar.timegm(entry["LastModified"].utctimetuple())
            if not page.get("IsTruncated"):
                return
            request["ContinuationToken"] = page["NextContinuationToken"]

    def upload_form(self, upload_id: str, expires_in: int, max_bytes: int) -> dict:
        """A presigned POST ({"url", "fields"}) for a dataset too large to post
        to the API. S3 checks the signed policy: at most `max_bytes` (a
        presigned PUT cannot bound the size), text/csv, tagged unclaimed,
        to this key only, within `expires_in` seconds. The form's fields go
        first and the file last."""
        fields = {"Content-Type": UPLOAD_CONTENT_TYPE, "tagging": _tagging(UNCLAIMED)}
        conditions = [{name: value} for name, value in fields.items()]
        conditions.append(["content-length-range", 1, max_bytes])
        return self._s3.generate_presigned_post(
            Bucket=self._bucket, Key=upload_key(upload_id), Fields=fields,
            Conditions=conditions, ExpiresIn=expires_in)

    def claim_upload(self, upload_id: str) -> bool:
        """Exempts an upload from the lifecycle rule that deletes unclaimed ones.
        False when there is no such upload (never sent, or already deleted)."""
        try:
            self._s3.put_object_tagging(
                Bucket=self._bucket, Key=upload_key(upload_id),
                Tagging={"TagSet": [{"Key": UPLOAD_STATE_TAG, "Value": CLAIMED}]})
        except ClientError as error:
            if error.response["Error"]["Code"] in ("NoSuchKey", "404"):
                return False
            raise
        return True

    # --- batch predictions -------------------------------------------------------

    def put_batch_input(self, batch_id: str, body: bytes) -> str:
        key = batch_input_key(batch_id)
        self._s3.put_object(Bucket=self._bucket, Key=key, Body=body, ContentType="text/csv")
        return key

    def object_size(self, key: str) -> int | None:
        """The object's size in bytes; None when there is no such object."""
        try:
            return self._s3.head_object(Bucket=self._bucket, Key=key)["ContentLength"]
        except ClientError as error:
            if error.response["Error"]["Code"] in ("NoSuchKey", "404"):
                return None
            raise

    def open_from(self, key: str, offset: int):
        """A stream of the object's bytes from `offset` on (close it)."""
        request = {"Bucket": self._bucket, "Key": key}
        if offset:
            request["Range"] = f"bytes={offset}-"
        return self._s3.get_object(**request)["Body"]

    def start_multipart(self, key: str) -> str:
        return self._s3.create_multipart_upload(Bucket=self._bucket, Key=key,
                                                ContentType="text/csv")["UploadId"]

    def put_part(self, key: str, upload_id: str, number: int, body: bytes) -> str:
        """Stores part `number` (1-based); returns its ETag. Uploading a number
        again replaces that part."""
        return self._s3.upload_part(Bucket=self._bucket, Key=key, UploadId=upload_id,
                                    PartNumber=number, Body=body)["ETag"]

    def complete_multipart(self, key: str, upload_id: str, etags: list[str]) -> None:
        self._s3.complete_multipart_upload(
            Bucket=self._bucket, Key=key, UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": number, "ETag": etag}
                                       for number, etag in enumerate(etags, start=1)]})

    def abort_multipart(self, key: str, upload_id: str) -> None:
        """Drops an unfinished multipart upload's parts; nothing if it is gone."""
        try:
            self._s3.abort_multipart_upload(Bucket=self._bucket, Key=key, UploadId=upload_id)
        except ClientError as error:
            if error.response["Error"]["Code"] not in ("NoSuchUpload", "404"):
                raise

    def object_url(self, key: str, expires_in: int) -> str:
        """A presigned GET (SigV4) for an object under batches/."""
        return self._s3.generate_presigned_url(
            "get_object", Params={"Bucket": self._bucket, "Key": key}, ExpiresIn=expires_in)

    def sign(self, model_id: str, name: str, blob: bytes) -> str:
        return self._signer.sign(artifact_key(model_id, name), blob)

    def verify(self, model_id: str, name: str, blob: bytes, signature: str | None) -> bytes:
        return self._signer.verify(artifact_key(model_id, name), blob, signature)

    def delete_artifacts(self, model_id: str) -> None:
        for name in (PIPELINE_ARTIFACT, SERVING_ARTIFACT, METRICS_ARTIFACT):
            self.delete(artifact_key(model_id, name))

    def artifact_url(self, model_id: str, name: str, expires_in: int) -> str:
        """A presigned GET for the artifact. Clients check the download against
        its SHA-256 (put_artifact's answer), which needs no secret."""
        return self._s3.generate_presigned_url(
            "get_object", Params={"Bucket": self._bucket, "Key": artifact_key(model_id, name)},
            ExpiresIn=expires_in)

    def put_artifact(self, model_id: str, name: str, blob: bytes) -> str:
        """Stores the artifact, signed; returns its SHA-256 (hex), for the
        registry to hand to clients, who check downloads without the key."""
        # A single PUT is atomic in S3: readers see the whole object or none,
        # and the signature arrives with the bytes it signs.
        self._s3.put_object(Bucket=self._bucket, Key=artifact_key(model_id, name), Body=blob,
                            ContentType="application/octet-stream",
                            Metadata={SIGNATURE_METADATA: self.sign(model_id, name, blob)})
        return hashlib.sha256(blob).hexdigest()

    def artifact_sha256(self, model_id: str, name: str) -> str | None:
        """The SHA-256 of the stored artifact once its signature checks out
        (TamperedArtifact if not); None if there is none. For models whose
        registry item predates the stored digest."""
        blob = self.get_artifact(model_id, name)
        return None if blob is None else hashlib.sha256(blob).hexdigest()

    def get_artifact(self, model_id: str, name: str) -> bytes | None:
        """The artifact's bytes once their signature checks out (TamperedArtifact
        if not), or None if there is no such artifact."""
        key = artifact_key(model_id, name)
        try:
            response = self._s3.get_object(Bucket=self._bucket, Key=key)
        except ClientError as error:
            if error.response["Error"]["Code"] in ("NoSuchKey", "404"):
                return None
            raise
        return self.verify(model_id, name, response["Body"].read(),
                           response.get("Metadata", {}).get(SIGNATURE_METADATA))
