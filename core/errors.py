"""Errors a user can act on: the CLI and the handlers print these as one clear line."""


class EchoRagError(Exception):
    """Base for expected, explainable failures (bad input, a locked store, a missing setting)."""


class ConfigError(EchoRagError):
    """A setting is missing or invalid."""


class StoreError(EchoRagError):
    """The blob store failed after retries (S3 or the local directory)."""


class QueueError(EchoRagError):
    """The job queue failed after retries (SQS or the local SQLite queue)."""
