"""Local-only tooling: the emulator launcher, resource bootstrap, the SQS
event-source runner and the local API server. Never shipped to Lambda."""
