"""Creates the bucket, table and queues defined in infra/resources.json, with
boto3: against an emulator (AWS_ENDPOINT_URL: moto's server, LocalStack) or
AWS itself before `chalice deploy`. The CloudFormation path (`make package`)
merges the same definition into its template instead.

Idempotent: a second run changes nothing, and a run after the definition
changed brings existing resources in line (queue attributes, TTL, bucket
settings). Every property in the definition must be one this module applies,
so the two paths cannot drift apart silently.

    python -m devstack.bootstrap [--stage dev] [--visibility-timeout N]
    python -m devstack.bootstrap --stage dev --delete [--including-data]
"""
from __future__ import annotations

import argparse
import json
import os
import re
from typing import Any, Callable

import boto3
from botocore.exceptions import ClientError

from chalicelib.config import Settings
from devstack import stage
from infra import definition
from infra.definition import DefinitionError

# The queue whose visibility timeout a local run may shorten (see bootstrap()).
TRAINING_QUEUE = "TrainingQueue"
BATCH_QUEUE = "BatchQueue"
# Against an emulator a failed training comes back after this long, not after
# the definition's 6 x 900 s.
LOCAL_VISIBILITY_TIMEOUT = 60

Attributes = dict[str, str]  # what Ref and Fn::GetAtt resolve to, per resource


def _code(error: ClientError) -> str:
    return error.response["Error"]["Code"]


def _only(logical: str, kind: str, properties: dict, supported: set[str],
          required: set[str]) -> None:
    unknown = set(properties) - supported
    if unknown:
        raise DefinitionError(
            f"{definition.DEFINITION_PATH.name}: {logical} ({kind}) sets "
            f"{', '.join(sorted(unknown))}, which devstack.bootstrap does not apply; "
            "teach devstack/bootstrap.py to apply it (and test it) or remove it")
    missing = required - set(properties)
    if missing:
        raise DefinitionError(f"{definition.DEFINITION_PATH.name}: {logical} ({kind}) "
                              f"needs {', '.join(sorted(missing))}")


# --- one function per resource type -----------------------------------------------

def ensure_bucket(session, logical: str, props: dict) -> Attributes:
    _only(logical, "AWS::S3::Bucket", props,
          {"BucketName", "BucketEncryption", "PublicAccessBlockConfiguration",
           "OwnershipControls", "CorsConfiguration", "LifecycleConfiguration"}, {"BucketName"})
    s3 = session.client("s3")
    name, region = props["BucketName"], session.region_name or "us-east-1"
    kwargs = {} if region == "us-east-1" else {
        "CreateBucketConfiguration": {"LocationConstraint": region}}
    try:
        s3.create_bucket(Bucket=name, **kwargs)
    except ClientError as error:
        if _code(error) == "BucketAlreadyExists":
            raise SystemExit(f"bucket {name} belongs to another AWS account (bucket names "
                             "are global): choose another MODELS_BUCKET in "
                             ".chalice/config.json and in the policy file") from None
        if _code(error) != "BucketAlreadyOwnedByYou":
            raise
    if "OwnershipControls" in props:
        s3.put_bucket_ownership_controls(Bucket=name, OwnershipControls=props["OwnershipControls"])
    if "PublicAccessBlockConfiguration" in props:
        s3.put_public_access_block(
            Bucket=name, PublicAccessBlockConfiguration=props["PublicAccessBlockConfiguration"])
    if "BucketEncryption" in props:
        # CloudFormation's ServerSideEncryptionByDefault is the API's
        # ApplyServerSideEncryptionByDefault.
        rules = []
        for rule in props["BucketEncryption"]["ServerSideEncryptionConfiguration"]:
            rule = dict(rule)
            rule["ApplyServerSideEncryptionByDefault"] = rule.pop("ServerSideEncryptionByDefault")
            rules.append(rule)
        s3.put_bucket_encryption(Bucket=name,
                                 ServerSideEncryptionConfiguration={"Rules": rules})
    # Without a CorsConfiguration (no browser origin known yet, see
    # infra.definition.render) a rule set earlier, e.g. by `make deploy`, stays.
    if "CorsConfiguration" in props:
        s3.put_bucket_cors(Bucket=name, CORSConfiguration={"CORSRules": [
            _cors_rule(rule) for rule in props["CorsConfiguration"]["CorsRules"]]})
    if "LifecycleConfiguration" in props:
        s3.put_bucket_lifecycle_configuration(Bucket=name, LifecycleConfiguration={"Rules": [
            _lifecycle_rule(rule) for rule in props["LifecycleConfiguration"]["Rules"]]})
    partition = session.get_partition_for_region(region)
    return {"Ref": name, "Arn": f"arn:{partition}:s3:::{name}"}


# CloudFormation's CORS rule names, and the S3 API's.
_CORS_NAMES = {"Id": "ID", "AllowedMethods": "AllowedMethods", "AllowedOrigins": "AllowedOrigins",
               "AllowedHeaders": "AllowedHeaders", "ExposedHeaders": "ExposeHeaders",
               "MaxAge": "MaxAgeSeconds"}


def _cors_rule(rule: dict) -> dict:
    unknown = set(rule) - set(_CORS_NAMES)
    if unknown:
        raise DefinitionError(f"{definition.DEFINITION_PATH.name}: a CORS rule sets "
                              f"{', '.join(sorted(unknown))}, which devstack.bootstrap does not apply")
    return {_CORS_NAMES[name]: value for name, value in rule.items()}


_LIFECYCLE_NAMES = {"Id", "Status", "Prefix", "TagFilters", "ExpirationInDays",
                    "AbortIncompleteMultipartUpload"}


def _lifecycle_rule(rule: dict) -> dict:
    """A CloudFormation lifecycle rule as the S3 API takes it (a Filter of the
    prefix and the tags, And-ed)."""
    unknown = set(rule) - _LIFECYCLE_NAMES
    if unknown:
        raise DefinitionError(f"{definition.DEFINITION_PATH.name}: a lifecycle rule sets "
                              f"{', '.join(sorted(unknown))}, which devstack.bootstrap does "
                              "not apply")
    conditions = {}
    if "Prefix" in rule:
        conditions["Prefix"] = rule["Prefix"]
    if rule.get("TagFilters"):
        conditions["Tags"] = [{"Key": tag["Key"], "Value": tag["Value"]}
                              for tag in rule["TagFilters"]]
    if len(conditions) > 1:
        selection = {"And": conditions}
    elif "Tags" in conditions:
        selection = {"Tag": conditions["Tags"][0]}
    else:
        selection = {"Prefix": conditions.get("Prefix", "")}
    converted = {"ID": rule["Id"], "Status": rule["Status"], "Filter": selection}
    if "ExpirationInDays" in rule:
        converted["Expiration"] = {"Days": int(rule["ExpirationInDays"])}
    if "AbortIncompleteMultipartUpload" in rule:
        converted["AbortIncompleteMultipartUpload"] = {
            "DaysAfterInitiation": int(rule["AbortIncompleteMultipartUpload"]
                                       ["DaysAfterInitiation"])}
    return converted


def ensure_bucket_policy(session, logical: str, props: dict) -> Attributes:
    _only(logical, "AWS::S3::BucketPolicy", props, {"Bucket", "PolicyDocument"},
          {"Bucket", "PolicyDocument"})
    session.client("s3").put_bucket_policy(Bucket=props["Bucket"],
                                           Policy=json.dumps(props["PolicyDocument"]))
    return {"Ref": props["Bucket"]}


def _key_schema(schema: list[dict]) -> list[tuple[str, str]]:
    return sorted((key["AttributeName"], key["KeyType"]) for key in schema)


def ensure_table(session, logical: str, props: dict) -> Attributes:
    _only(logical, "AWS::DynamoDB::Table", props,
          {"TableName", "BillingMode", "AttributeDefinitions", "KeySchema",
           "GlobalSecondaryIndexes", "TimeToLiveSpecification"},
          {"TableName", "BillingMode", "AttributeDefinitions", "KeySchema"})
    dynamodb = session.client("dynamodb")
    name = props["TableName"]
    try:
        indexes = ({"GlobalSecondaryIndexes": props["GlobalSecondaryIndexes"]}
                   if props.get("GlobalSecondaryIndexes") else {})
        dynamodb.create_table(TableName=name, KeySchema=props["KeySchema"],
                              AttributeDefinitions=props["AttributeDefinitions"],
                              BillingMode=props["BillingMode"], **indexes)
    except ClientError as error:
        if _code(error) != "ResourceInUseException":
            raise
    dynamodb.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1})
    table = dynamodb.describe_table(TableName=name)["Table"]
    if _key_schema(table["KeySchema"]) != _key_schema(props["KeySchema"]):
        raise SystemExit(f"table {name} exists with key {table['KeySchema']}, but the "
                         f"definition wants {props['KeySchema']}; a key cannot be changed "
                         "in place (delete the table or choose another MODELS_TABLE)")
    billing = table.get("BillingModeSummary", {}).get("BillingMode", "PROVISIONED")
    if billing != props["BillingMode"]:
        dynamodb.update_table(TableName=name, BillingMode=props["BillingMode"])
        dynamodb.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1})
    _ensure_indexes(dynamodb, table, props)
    if "TimeToLiveSpecification" in props:
        _ensure_ttl(dynamodb, name, props["TimeToLiveSpecification"])
    return {"Ref": name, "Arn": table["TableArn"]}


def _ensure_indexes(dynamodb, table: dict, props: dict) -> None:
    """Adds the global secondary indexes a table made before them lacks."""
    have = {index["IndexName"] for index in table.get("GlobalSecondaryIndexes", [])}
    for index in props.get("GlobalSecondaryIndexes", []):
        if index["IndexName"] in have:
            continue
        dynamodb.update_table(TableName=table["TableName"],
                              AttributeDefinitions=props["AttributeDefinitions"],
                              GlobalSecondaryIndexUpdates=[{"Create": index}])
        dynamodb.get_waiter("table_exists").wait(TableName=table["TableName"],
                                                 WaiterConfig={"Delay": 1})


def _ensure_ttl(dynamodb, table: str, wanted: dict) -> None:
    current = dynamodb.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
    enabled = current.get("TimeToLiveStatus") in ("ENABLED", "ENABLING")
    if wanted["Enabled"]:
        if enabled and current.get("AttributeName") == wanted["AttributeName"]:
            return
        if enabled:
            raise SystemExit(f"table {table} has TTL on {current.get('AttributeName')!r}, the "
                             f"definition wants {wanted['AttributeName']!r}: disable TTL first "
                             "(DynamoDB then allows the change only after about an hour)")
    elif not enabled:
        return
    dynamodb.update_time_to_live(TableName=table, TimeToLiveSpecification={
        "Enabled": wanted["Enabled"],
        "AttributeName": wanted.get("AttributeName") or current.get("AttributeName")})


_QUEUE_ATTRIBUTES = {"VisibilityTimeout", "MessageRetentionPeriod", "SqsManagedSseEnabled",
                     "RedrivePolicy", "DelaySeconds", "MaximumMessageSize",
                     "ReceiveMessageWaitTimeSeconds"}


def _attribute(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def ensure_queue(session, logical: str, props: dict) -> Attributes:
    _only(logical, "AWS::SQS::Queue", props, {"QueueName"} | _QUEUE_ATTRIBUTES, {"QueueName"})
    sqs = session.client("sqs")
    name = props["QueueName"]
    attributes = {key: _attribute(value) for key, value in props.items() if key != "QueueName"}
    try:
        url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    except ClientError as error:
        if _code(error) == "AWS.SimpleQueueService.QueueDeletedRecently":
            raise SystemExit(f"queue {name} was deleted less than 60 s ago; SQS refuses the "
                             "name until then: run this again in a minute") from None
        if _code(error) not in ("QueueAlreadyExists", "QueueNameExists"):
            raise
        # Same name, other attributes: bring them in line.
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
        sqs.set_queue_attributes(QueueUrl=url, Attributes=attributes)
    arn = sqs.get_queue_attributes(QueueUrl=url,
                                   AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return {"Ref": url, "Arn": arn, "QueueName": name}


HANDLERS: dict[str, Callable[[Any, str, dict], Attributes]] = {
    "AWS::S3::Bucket": ensure_bucket,
    "AWS::S3::BucketPolicy": ensure_bucket_policy,
    "AWS::DynamoDB::Table": ensure_table,
    "AWS::SQS::Queue": ensure_queue,
}

# What an emulator does not get, and why (docs/security.md).
LEFT_OUT_ON_EMULATORS = {
    "AWS::S3::BucketPolicy": (
        "the TLS-only bucket policy: moto cannot evaluate aws:SecureTransport and, "
        "with the policy in place, refuses every object request, over HTTP and "
        "HTTPS alike (the local endpoint is plain HTTP anyway)"),
}


# --- CloudFormation's intrinsic functions, as far as the definition uses them ------

# ${Logical}, ${Logical.Attribute} or ${AWS::Pseudo} in an Fn::Sub string.
_SUB_VARIABLE = re.compile(r"\$\{([A-Za-z0-9:]+)(?:\.([A-Za-z0-9]+))?\}")


def _references(value: Any) -> set[str]:
    """The logical ids a value refers to (Ref, Fn::GetAtt, Fn::Sub)."""
    if isinstance(value, list):
        return set().union(*(_references(item) for item in value))
    if not isinstance(value, dict):
        return set()
    if set(value) == {"Ref"}:
        return set() if value["Ref"].startswith("AWS::") else {value["Ref"]}
    if set(value) == {"Fn::GetAtt"}:
        return {value["Fn::GetAtt"][0]}
    if set(value) == {"Fn::Sub"} and isinstance(value["Fn::Sub"], str):
        return {match.group(1) for match in _SUB_VARIABLE.finditer(value["Fn::Sub"])
                if not match.group(1).startswith("AWS::")}
    return set().union(*(_references(item) for item in value.values()))


def _resolve(value: Any, done: dict[str, Attributes], pseudo: dict[str, str]) -> Any:
    if isinstance(value, list):
        return [_resolve(item, done, pseudo) for item in value]
    if not isinstance(value, dict):
        return value

    def attribute(logical: str, name: str) -> str:
        if logical in pseudo and name == "Ref":
            return pseudo[logical]
        try:
            return done[logical][name]
        except KeyError:
            raise DefinitionError(f"cannot resolve {logical}.{name}: bootstrap knows "
                                  f"{sorted(done.get(logical, {}))} of {logical}") from None

    if set(value) == {"Ref"}:
        return attribute(value["Ref"], "Ref")
    if set(value) == {"Fn::GetAtt"}:
        logical, name = value["Fn::GetAtt"]
        return attribute(logical, name)
    if set(value) == {"Fn::Sub"} and isinstance(value["Fn::Sub"], str):
        return _SUB_VARIABLE.sub(lambda match: attribute(match.group(1),
                                                         match.group(2) or "Ref"),
                                 value["Fn::Sub"])
    intrinsic = [key for key in value if key.startswith("Fn::")]
    if intrinsic:
        raise DefinitionError(f"devstack.bootstrap does not evaluate {intrinsic[0]}; "
                              "use Ref, Fn::GetAtt or Fn::Sub (a string) in "
                              "infra/resources.json")
    return {key: _resolve(item, done, pseudo) for key, item in value.items()}


def apply(session: boto3.session.Session, resources: dict[str, dict],
          leave_out: frozenset[str] = frozenset()) -> dict[str, Attributes]:
    """Creates or updates every resource, each after those it refers to;
    resources of a type in `leave_out` are skipped."""
    region = session.region_name or "us-east-1"
    pseudo = {"AWS::Region": region, "AWS::Partition": session.get_partition_for_region(region)}
    resources = {logical: resource for logical, resource in resources.items()
                 if resource.get("Type") not in leave_out}
    for logical, resource in resources.items():
        if resource.get("Type") not in HANDLERS:
            raise DefinitionError(f"{definition.DEFINITION_PATH.name}: {logical} has type "
                                  f"{resource.get('Type')!r}; devstack.bootstrap creates "
                                  f"{', '.join(sorted(HANDLERS))}")
    done: dict[str, Attributes] = {}
    pending = dict(resources)
    while pending:
        ready = [logical for logical, resource in pending.items()
                 if _references(resource.get("Properties", {})) <= done.keys()]
        if not ready:
            raise DefinitionError(f"unresolvable references among {sorted(pending)}")
        for logical in ready:
            resource = pending.pop(logical)
            properties = _resolve(resource.get("Properties", {}), done, pseudo)
            done[logical] = HANDLERS[resource["Type"]](session, logical, properties)
    return done


def is_emulator() -> bool:
    """Whether boto3 is pointed at an emulator rather than AWS."""
    return bool(os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3"))


def bootstrap(session: boto3.session.Session, settings: Settings,
              visibility_timeout: int | None = None, *, upload_origins: list | None = None,
              for_aws: bool = False) -> dict[str, Attributes]:
    """Creates what infra/resources.json defines, named after `settings`.

    `visibility_timeout` overrides the training queue's (6 x the trainer's
    Lambda timeout in the definition): locally a failed training should come
    back within seconds or a minute, not 90 minutes. `upload_origins` are the
    browser origins allowed to send upload forms (see definition.render).
    Resources of LEFT_OUT_ON_EMULATORS' types are created only `for_aws`,
    which the command line sets when AWS_ENDPOINT_URL is not (the local stack
    and the tests call this function, on emulators).
    """
    resources = definition.render(settings, upload_origins=upload_origins)["Resources"]
    if visibility_timeout is not None:
        for queue in (TRAINING_QUEUE, BATCH_QUEUE):
            resources[queue]["Properties"]["VisibilityTimeout"] = visibility_timeout
    return apply(session, resources,
                 frozenset() if for_aws else frozenset(LEFT_OUT_ON_EMULATORS))


# --- teardown ----------------------------------------------------------------------

def _gone(error: ClientError) -> bool:
    return _code(error) in ("NoSuchBucket", "ResourceNotFoundException",
                            "AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist")


def _empty_bucket(s3, bucket: str) -> None:
    paginator = s3.get_paginator("list_object_versions")
    for page in paginator.paginate(Bucket=bucket):
        objects = [{"Key": o["Key"], "VersionId": o["VersionId"]}
                   for o in page.get("Versions", []) + page.get("DeleteMarkers", [])]
        if objects:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": objects, "Quiet": True})


def teardown(session: boto3.session.Session, settings: Settings,
             including_data: bool = False) -> list[str]:
    """Deletes what bootstrap created, in reverse order. Resources whose
    DeletionPolicy is Retain (the bucket and the table: the models) stay unless
    `including_data`. Returns what was deleted; missing resources are skipped."""
    resources = definition.render(settings)["Resources"]
    deleted = []
    for logical, resource in reversed(list(resources.items())):
        if resource.get("DeletionPolicy") == "Retain" and not including_data:
            continue
        props, kind = resource["Properties"], resource["Type"]
        try:
            if kind == "AWS::SQS::Queue":
                sqs = session.client("sqs")
                sqs.delete_queue(QueueUrl=sqs.get_queue_url(QueueName=props["QueueName"])["QueueUrl"])
            elif kind == "AWS::DynamoDB::Table":
                session.client("dynamodb").delete_table(TableName=props["TableName"])
            elif kind == "AWS::S3::Bucket":
                s3 = session.client("s3")
                _empty_bucket(s3, props["BucketName"])
                s3.delete_bucket(Bucket=props["BucketName"])
            elif kind == "AWS::S3::BucketPolicy":
                continue  # goes with its bucket (both Retain)
            else:
                raise DefinitionError(f"teardown does not know how to delete {kind} ({logical})")
        except ClientError as error:
            if _gone(error):
                continue
            raise
        deleted.append(logical)
    return deleted


def _default_visibility_timeout() -> int | None:
    if os.environ.get("TRAINING_VISIBILITY_TIMEOUT"):
        return int(os.environ["TRAINING_VISIBILITY_TIMEOUT"])
    return LOCAL_VISIBILITY_TIMEOUT if os.environ.get("AWS_ENDPOINT_URL") else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", default="dev")
    parser.add_argument("--visibility-timeout", type=int,
                        help="seconds before an unfinished training message is redelivered "
                             "(default: TRAINING_VISIBILITY_TIMEOUT, else "
                             f"{LOCAL_VISIBILITY_TIMEOUT} against an emulator, else the "
                             "definition's 6 x the trainer's timeout)")
    parser.add_argument("--delete", action="store_true",
                        help="delete the queues instead (and with --including-data the "
                             "bucket, emptied, and the table)")
    parser.add_argument("--including-data", action="store_true")
    parser.add_argument("--upload-origin", action="append", dest="upload_origins",
                        metavar="ORIGIN",
                        help="a browser origin allowed to send upload forms to the bucket "
                             "(repeatable; default: the stage's UPLOAD_ORIGINS; `make deploy` "
                             "sets the API's own)")
    args = parser.parse_args()
    stage.apply(args.stage)
    settings = Settings.from_env()
    session = boto3.session.Session()
    where = os.environ.get("AWS_ENDPOINT_URL") or f"AWS ({session.region_name})"
    if args.delete:
        deleted = teardown(session, settings, args.including_data)
        print(f"deleted from {where}: {', '.join(deleted) or 'nothing (already gone)'}")
        if not args.including_data:
            print(f"kept (DeletionPolicy Retain): bucket {settings.bucket}, table "
                  f"{settings.table}; add --including-data to delete them and every model")
        return
    visibility = (args.visibility_timeout if args.visibility_timeout is not None
                  else _default_visibility_timeout())
    done = bootstrap(session, settings, visibility, upload_origins=args.upload_origins,
                     for_aws=not is_emulator())
    if is_emulator():
        for reason in LEFT_OUT_ON_EMULATORS.values():
            print(f"left out on an emulator: {reason}")
    attributes = session.client("sqs").get_queue_attributes(
        QueueUrl=done[TRAINING_QUEUE]["Ref"], AttributeNames=["VisibilityTimeout"])["Attributes"]
    print(f"ready in {where}: bucket {settings.bucket}, table {settings.table}, "
          f"queue {settings.queue} (visibility timeout {attributes['VisibilityTimeout']} s; "
          f"dead letters: {settings.dead_letter_queue})")


if __name__ == "__main__":
    main()
