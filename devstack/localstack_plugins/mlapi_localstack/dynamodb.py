"""DynamoDB inside LocalStack served by the moto that ships with LocalStack,
instead of LocalStack's default provider (DynamoDB Local, a Java jar under its
vendor's terms that LocalStack downloads at run time; we do not use it).

Every operation falls through to moto's DynamoDB backend in this process
(LocalStack's MotoFallbackDispatcher). DynamoDB applies writes to an item one
at a time, so of two conditional updates at once exactly one sees the
other's result; moto's backend takes no lock and LocalStack serves requests
on many threads, so two duplicate training deliveries could both pass a lease
condition. As devstack/moto_server.py does for moto's own server, every
DynamoDB call here runs under one lock.
"""
from __future__ import annotations

import threading

from localstack.aws.api.dynamodb import DynamodbApi
from localstack.aws.skeleton import DispatchTable
from localstack.services.moto import MotoFallbackDispatcher
from localstack.services.plugins import ServiceLifecycleHook


class MotoDynamoDBProvider(DynamodbApi, ServiceLifecycleHook):
    """Implements no operation itself (each raises NotImplementedError), so
    the dispatcher sends every one to moto."""


def serialized_moto_dispatcher(provider: DynamodbApi) -> DispatchTable:
    """Every operation to moto, one at a time."""
    lock = threading.Lock()
    table = MotoFallbackDispatcher(provider)
    return {operation: _serialized(handler, lock) for operation, handler in table.items()}


def _serialized(handler, lock: threading.Lock):
    def call(context, request):
        with lock:
            return handler(context, request)

    return call
