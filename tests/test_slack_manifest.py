"""The Slack app manifest against Slack's own manifest schema (a copy in tests/fixtures, see its
README: slackapi/manifest-schema, v1 schema, unamended), so a key Slack would refuse on paste
fails here first."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "tests/fixtures/slack-manifest.schema.json"
SCHEMA_SHA256 = "f2adf9f9800230e2fe44bab0762796492871edaab817e9160fdcdf0eb4642e58"  # as the README records


def _manifest() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "infra/slack/manifest.yaml").read_text("utf-8"))


def _schema() -> dict[str, Any]:
    return json.loads(SCHEMA.read_text("utf-8"))


def _errors(manifest: dict[str, Any]) -> list[str]:
    schema = _schema()
    validator = jsonschema.Draft7Validator(schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
    found = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(manifest)]
    # The upstream schema states the colour's pattern under "regex", which JSON Schema ignores.
    display = schema["definitions"]["app-manifests.v1.display_information.schema"]
    pattern = display["properties"]["background_color"].get("regex")
    colour = manifest.get("display_information", {}).get("background_color")
    if pattern and colour is not None and not re.fullmatch(pattern, str(colour)):
        found.append(f"display_information/background_color: {colour!r} does not match {pattern}")
    return found


def test_the_schema_copy_is_the_recorded_one() -> None:
    assert hashlib.sha256(SCHEMA.read_bytes()).hexdigest() == SCHEMA_SHA256  # an edit belongs in the README


def test_the_manifest_validates_against_slacks_schema() -> None:
    manifest = _manifest()
    assert "_metadata" not in manifest or manifest["_metadata"].get("major_version", 1) == 1  # the v1 schema applies
    assert _errors(manifest) == []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("display_information", "name"), 5),
        (("features", "assistant_view"), {"suggested_prompts": []}),
        (("settings", "event_subscriptions", "bot_events"), "app_mention"),
        (("display_information", "background_color"), "blue"),
        (("not_a_section",), {}),
    ],
    ids=["name-not-a-string", "assistant-view-without-description", "events-not-a-list", "colour-not-hex", "unknown-key"],
)
def test_what_slack_would_refuse_fails_validation(path: tuple[str, ...], value: Any) -> None:
    manifest = copy.deepcopy(_manifest())
    target = manifest
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    assert _errors(manifest), f"the schema accepted {path} = {value!r}"
