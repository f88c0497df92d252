"""ml-api's LocalStack plugins (see devstack/localstack_plugins/pyproject.toml)."""
