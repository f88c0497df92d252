"""Infrastructure as code and deployment tooling. Local only: never shipped to
Lambda (Chalice bundles app.py, chalicelib/ and requirements.txt, nothing else).

- resources.json   the bucket, table and queues, defined once (a CloudFormation
                   fragment with {{NAME}} placeholders for the stage's names)
- definition       loads and renders it for a stage
- iam              the IAM actions the shipped code needs, found by reading it
- layer            builds the scientific-stack layer zip and publishes it via S3
- secrets          the stage's SSM SecureStrings (model-signing key, API keys)
- deploy           pre-flight checks, then `chalice deploy`
- package          `chalice package --merge-template` + cfn-lint (CloudFormation)
"""
