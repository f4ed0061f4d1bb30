"""Errors split by what the caller does next, not by where they came from.

Every adapter makes the same three decisions about a failure, so there is one class for each:

| class            | what the caller does                                                          |
|------------------|-------------------------------------------------------------------------------|
| `UserError`      | show the message to the person who asked and finish: the same request fails the same way |
| `TransientError` | let the platform retry (Lambda async retry, SQS redelivery); tell the user only "still working / try again", never the message, which names buckets, keys and hosts |
| `PermanentError` | finish without retrying and log it for the operator; the user gets a plain apology |

The CLI prints any `EchoRagError` as one line. Subclasses say where the failure came from
(`StoreError`, `QueueError`, `ConfigError`, the LLM and Discord ones next to their clients).
"""


class EchoRagError(Exception):
    """Base for expected, explainable failures; `str(exc)` is one clear line for who can act on it."""


class UserError(EchoRagError):
    """The request itself is wrong (an empty or too-long question, a bad command or argument)."""


class TransientError(EchoRagError):
    """A dependency failed for now (store, queue, LLM, chat platform 5xx/429, network): retry."""


class PermanentError(EchoRagError):
    """A retry cannot help (a missing setting, a platform refusal such as not_in_channel)."""


class ConfigError(PermanentError):
    """A setting is missing or invalid."""


class StoreError(TransientError):
    """The blob store failed after retries (S3 or the local directory)."""


class QueueError(TransientError):
    """The job queue failed after retries (SQS or the local SQLite queue)."""
