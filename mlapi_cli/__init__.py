"""ml-api's command-line client (`ml-api`). Local tooling only: never shipped to Lambda."""
