"""Creates the bucket, table and queues the app uses. Idempotent: running it
twice changes nothing. Works against an emulator (AWS_ENDPOINT_URL) or AWS.

    python -m devstack.bootstrap [--stage dev]
"""
from __future__ import annotations

import argparse
import json

import boto3
from botocore.exceptions import ClientError

from chalicelib.config import Settings
from devstack import stage


def ensure_bucket(s3, name: str, region: str) -> None:
    kwargs = {} if region == "us-east-1" else {
        "CreateBucketConfiguration": {"LocationConstraint": region}}
    try:
        s3.create_bucket(Bucket=name, **kwargs)
    except ClientError as error:
        if error.response["Error"]["Code"] != "BucketAlreadyOwnedByYou":
            raise
    s3.put_public_access_block(Bucket=name, PublicAccessBlockConfiguration={
        "BlockPublicAcls": True, "IgnorePublicAcls": True,
        "BlockPublicPolicy": True, "RestrictPublicBuckets": True})


def ensure_table(dynamodb, name: str) -> None:
    try:
        dynamodb.create_table(
            TableName=name,
            KeySchema=[{"AttributeName": "model_id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "model_id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
    except ClientError as error:
        if error.response["Error"]["Code"] != "ResourceInUseException":
            raise
    dynamodb.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1})


def _ensure_queue(sqs, name: str, attributes: dict[str, str]) -> str:
    try:
        url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    except ClientError as error:
        if error.response["Error"]["Code"] not in ("QueueAlreadyExists", "QueueNameExists"):
            raise
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
        sqs.set_queue_attributes(QueueUrl=url, Attributes=attributes)
    return url


def ensure_queues(sqs, settings: Settings, visibility_timeout: int) -> str:
    dlq_url = _ensure_queue(sqs, settings.dead_letter_queue,
                            {"MessageRetentionPeriod": str(14 * 24 * 3600)})
    dlq_arn = sqs.get_queue_attributes(
        QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return _ensure_queue(sqs, settings.queue, {
        "VisibilityTimeout": str(visibility_timeout),
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn,
                                     "maxReceiveCount": str(settings.max_receives)}),
    })


def bootstrap(session: boto3.session.Session, settings: Settings,
              visibility_timeout: int = 60) -> None:
    ensure_bucket(session.client("s3"), settings.bucket, session.region_name or "us-east-1")
    ensure_table(session.client("dynamodb"), settings.table)
    ensure_queues(session.client("sqs"), settings, visibility_timeout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", default="dev")
    parser.add_argument("--visibility-timeout", type=int, default=60,
                        help="seconds before an unfinished training message is redelivered")
    args = parser.parse_args()
    stage.apply(args.stage)
    settings = Settings.from_env()
    bootstrap(boto3.session.Session(), settings, args.visibility_timeout)
    print(f"ready: bucket {settings.bucket}, table {settings.table}, "
          f"queue {settings.queue} (dead letters: {settings.dead_letter_queue})")


if __name__ == "__main__":
    main()
