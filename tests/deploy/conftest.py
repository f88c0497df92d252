"""Deployment tests: infrastructure definition, IAM policy, packaging."""


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "package: builds the real Lambda layer and `chalice package` output (downloads "
        "wheels from PyPI once, cached in dist/cache/; skipped with a message when "
        "PyPI is unreachable). Deselect with -m 'not package'.")
