"""S3 artifacts: the one place that knows the key layout."""
from __future__ import annotations

from botocore.exceptions import ClientError

from chalicelib.security import SIGNATURE_METADATA, ArtifactSigner

# The fitted scikit-learn pipeline, pickled: for download and for scikit-learn users.
PIPELINE_ARTIFACT = "model.pkl"
# The arrays the numpy-only predict path needs (numpy .npz, no pickle).
SERVING_ARTIFACT = "serving.npz"
# The full metrics, when their per-class figures are too large for the status item.
METRICS_ARTIFACT = "metrics.json"


def dataset_key(model_id: str) -> str:
    return f"datasets/{model_id}.csv"


UPLOADS_PREFIX = "uploads/"


def upload_key(upload_id: str) -> str:
    return f"{UPLOADS_PREFIX}{upload_id}.csv"


def upload_id_of(key: str) -> str | None:
    """The upload id an uploads/ key was made from (None for other keys)."""
    if not (key.startswith(UPLOADS_PREFIX) and key.endswith(".csv")):
        return None
    return key[len(UPLOADS_PREFIX):-len(".csv")]


def artifact_key(model_id: str, name: str) -> str:
    return f"models/{model_id}/{name}"


class ArtifactStore:
    def __init__(self, s3, bucket: str, signer: ArtifactSigner):
        self._s3 = s3  # a boto3 S3 client
        self._bucket = bucket
        self._signer = signer

    def put_dataset(self, model_id: str, body: bytes) -> str:
        key = dataset_key(model_id)
        self._s3.put_object(Bucket=self._bucket, Key=key, Body=body, ContentType="text/csv")
        return key

    def get_dataset(self, key: str) -> bytes:
        return self._s3.get_object(Bucket=self._bucket, Key=key)["Body"].read()

    def open_dataset(self, key: str):
        """(a stream of the dataset's bytes, its size): nothing is read yet, so
        a caller can refuse a size before reading it. Close the stream."""
        response = self._s3.get_object(Bucket=self._bucket, Key=key)
        return response["Body"], response["ContentLength"]

    def delete_dataset(self, key: str) -> None:
        self._s3.delete_object(Bucket=self._bucket, Key=key)

    def upload_url(self, upload_id: str, expires_in: int) -> str:
        """A presigned PUT for a dataset too large for API Gateway's 10 MB."""
        return self._s3.generate_presigned_url(
            "put_object", Params={"Bucket": self._bucket, "Key": upload_key(upload_id),
                                  "ContentType": "text/csv"}, ExpiresIn=expires_in)

    def sign(self, model_id: str, name: str, blob: bytes) -> str:
        return self._signer.sign(artifact_key(model_id, name), blob)

    def verify(self, model_id: str, name: str, blob: bytes, signature: str | None) -> bytes:
        return self._signer.verify(artifact_key(model_id, name), blob, signature)

    def delete_artifacts(self, model_id: str) -> None:
        for name in (PIPELINE_ARTIFACT, SERVING_ARTIFACT, METRICS_ARTIFACT):
            self._s3.delete_object(Bucket=self._bucket, Key=artifact_key(model_id, name))

    def artifact_url(self, model_id: str, name: str, expires_in: int) -> str:
        """A presigned GET for the artifact; its signature comes back in the
        x-amz-meta-hmac-sha256 header of the download."""
        return self._s3.generate_presigned_url(
            "get_object", Params={"Bucket": self._bucket, "Key": artifact_key(model_id, name)},
            ExpiresIn=expires_in)

    def put_artifact(self, model_id: str, name: str, blob: bytes) -> None:
        # A single PUT is atomic in S3: readers see the whole object or none,
        # and the signature arrives with the bytes it signs.
        self._s3.put_object(Bucket=self._bucket, Key=artifact_key(model_id, name), Body=blob,
                            ContentType="application/octet-stream",
                            Metadata={SIGNATURE_METADATA: self.sign(model_id, name, blob)})

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
