"""JSON secrets in Secrets Manager, read through Powertools' cached provider.

One reader for every secret the stack creates (Slack, Discord, the service API keys), so each is
cached the same way: 5 minutes, after which a rotated value applies without a redeploy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.errors import ConfigError

if TYPE_CHECKING:
    from core.settings import Settings

SECRET_MAX_AGE_S = 300

# API_KEYS_SECRET_ARN's JSON keys are the settings they fill.
API_KEY_FIELDS = ("qdrant_api_key", "llm_api_key", "embedding_api_key")


def read_json_secret(arn: str, *, expect: str) -> dict[str, str]:
    """The secret's non-empty string values. Raises Powertools' GetParameterError when it cannot
    be read (the callers answer that as "not configured", not as a crash) and ConfigError when it is
    not a JSON object; `expect` names its keys for that message."""
    from aws_lambda_powertools.utilities import parameters

    secret = parameters.get_secret(arn, transform="json", max_age=SECRET_MAX_AGE_S)
    if not isinstance(secret, dict):
        raise ConfigError(f"secret {arn} must be JSON with {expect}")
    return {str(key): str(value) for key, value in secret.items() if value not in (None, "")}


def with_api_keys(settings: Settings) -> Settings:
    """The settings with the Qdrant, LLM and embedding API keys from API_KEYS_SECRET_ARN (a value
    set in the environment wins). Read once per process, with the settings: a rotated key reaches a
    Lambda at its next cold start (docs/production.md says how to force one)."""
    arn = settings.api_keys_secret_arn
    if not arn:
        return settings
    from aws_lambda_powertools.utilities.parameters.exceptions import (
        GetParameterError,
        TransformParameterError,
    )

    try:
        secret = read_json_secret(arn, expect=", ".join(API_KEY_FIELDS))
    except (GetParameterError, TransformParameterError) as exc:
        raise ConfigError(f"cannot read the API keys secret {arn}: {exc}") from exc
    update = {field: secret[field] for field in API_KEY_FIELDS if field in secret and not getattr(settings, field)}
    return settings.model_copy(update=update)
