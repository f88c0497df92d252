"""Service providers for LocalStack, registered like LocalStack's own in
localstack.services.providers: a thin factory marked @aws_provider, named
"<api>:<name>" in the namespace localstack.aws.provider.

    PROVIDER_OVERRIDE_DYNAMODB=mlapi_moto   selects dynamodb_mlapi_moto
"""
from localstack.services.plugins import Service, aws_provider


@aws_provider(api="dynamodb", name="mlapi_moto")
def dynamodb_mlapi_moto() -> Service:
    from mlapi_localstack.dynamodb import MotoDynamoDBProvider, serialized_moto_dispatcher

    return Service.for_provider(MotoDynamoDBProvider(),
                                dispatch_table_factory=serialized_moto_dispatcher)
