"""The SAM template, validated offline: cfn-lint, the SAM transform, and the wiring that matters.

The transform is run with aws-sam-translator (no AWS calls: a region, a stub managed-policy loader
and an ImageUri stand in for what `sam deploy` would supply); assertions read the expanded
CloudFormation, i.e. what AWS would actually create.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "template.yaml"
FAKE_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/echorag:test"
# Lambda code must never load these (they live in requirements-train.txt for the GPU host).
TRAINING_MODULES = ("torch", "transformers", "peft", "sentence_transformers", "accelerate")
# AWS-managed policies SAM attaches: logs, X-Ray (its actions support no resource scoping) and the
# SQS poller policy for SQS event sources.
ALLOWED_MANAGED_POLICIES = {
    "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole",
    "arn:aws:iam::aws:policy/AWSXrayWriteOnlyAccess",
    "arn:aws:iam::aws:policy/service-role/AWSLambdaSQSQueueExecutionRole",
}
EXPECTED_FUNCTIONS = {
    "SlackEventsFunction": "handlers.slack_events.handler",
    "DiscordInteractionsFunction": "handlers.discord_interactions.handler",
    "DiscordWorkerFunction": "handlers.discord_worker.handler",
    "IngestFunction": "handlers.ingest_s3.handler",
}


class _StubPolicyLoader:
    """Stands in for the IAM call the translator makes to resolve managed policy names."""

    def load(self) -> dict[str, str]:
        return {name.rsplit("/", 1)[-1]: name for name in ALLOWED_MANAGED_POLICIES}


@pytest.fixture(scope="module")
def source() -> dict[str, Any]:
    from samtranslator.yaml_helper import yaml_parse

    return yaml_parse(TEMPLATE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def resources(source: dict[str, Any]) -> dict[str, Any]:
    """The template after the SAM transform: plain CloudFormation resources."""
    import copy

    from samtranslator.translator.transform import transform

    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    template = copy.deepcopy(source)
    for resource in template["Resources"].values():
        if resource["Type"] == "AWS::Serverless::Function":
            resource["Properties"]["ImageUri"] = FAKE_IMAGE  # what `sam deploy` fills in after the push
    return transform(template, {}, _StubPolicyLoader())["Resources"]


def _of_type(resources: dict[str, Any], kind: str) -> dict[str, Any]:
    return {name: res for name, res in resources.items() if res["Type"] == kind}


def _ref(value: Any) -> str | None:
    """The logical id a {"Ref": X} or {"Fn::GetAtt": [X, …]} points at."""
    if isinstance(value, dict):
        if "Ref" in value:
            return value["Ref"]
        if "Fn::GetAtt" in value:
            return value["Fn::GetAtt"][0]
    return None


def _statements(resources: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every inline IAM statement in roles and managed policies, with its owner's logical id."""
    found: list[tuple[str, dict[str, Any]]] = []
    for name, res in resources.items():
        props = res["Properties"]
        if res["Type"] == "AWS::IAM::Role":
            documents = [policy["PolicyDocument"] for policy in props.get("Policies", [])]
        elif res["Type"] == "AWS::IAM::ManagedPolicy":
            documents = [props["PolicyDocument"]]
        else:
            continue
        for document in documents:
            found.extend((name, statement) for statement in document["Statement"])
    return found


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _role_actions(resources: dict[str, Any], function: str) -> list[tuple[str, Any]]:
    """(action, resource) pairs granted to a function's role."""
    role = _ref(resources[function]["Properties"]["Role"])
    pairs = []
    for owner, statement in _statements(resources):
        if owner != role or statement.get("Effect") != "Allow":
            continue
        for action in _as_list(statement["Action"]):
            pairs.extend((action, target) for target in _as_list(statement["Resource"]))
    return pairs


# ------------------------------------------------------------------------------ validation ----


def test_cfn_lint_is_clean() -> None:
    cfn_lint = Path(sys.executable).with_name("cfn-lint")
    command = [str(cfn_lint)] if cfn_lint.exists() else [sys.executable, "-m", "cfnlint"]
    result = subprocess.run([*command, str(TEMPLATE)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, f"cfn-lint found problems:\n{result.stdout}{result.stderr}"


def test_sam_transform_expands_every_function(resources: dict[str, Any]) -> None:
    functions = _of_type(resources, "AWS::Lambda::Function")
    assert set(functions) == set(EXPECTED_FUNCTIONS)
    for name, handler in EXPECTED_FUNCTIONS.items():
        props = functions[name]["Properties"]
        assert props["PackageType"] == "Image"
        assert props["ImageConfig"]["Command"] == [handler]
        assert props["Code"] == {"ImageUri": FAKE_IMAGE}


# ------------------------------------------------------------------------------ handlers ------

_IMPORT_PROBE = """
import importlib, importlib.abc, importlib.metadata, json, re, sys
module_name, attribute, blocked, allowed = sys.argv[1], sys.argv[2], set(sys.argv[3].split(",")), set(json.loads(sys.argv[4]))
owners = {
    top: {re.sub(r"[-_.]+", "-", d).lower() for d in dists}
    for top, dists in importlib.metadata.packages_distributions().items()
}

def absent(top):
    # Training deps, and any installed package the Lambda image would not contain.
    return top in blocked or (top in owners and not owners[top] & allowed and top not in sys.stdlib_module_names)

class LambdaImage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if absent(top):
            raise ModuleNotFoundError(f"No module named {name!r} (not in the Lambda image)", name=name)
        return None

sys.meta_path.insert(0, LambdaImage())
module = importlib.import_module(module_name)
entry = getattr(module, attribute)
assert callable(entry), f"{module_name}.{attribute} is not callable"
loaded = sorted(name for name in sys.modules if absent(name.split(".")[0]))
assert not loaded, f"modules that are not in the Lambda image were imported: {loaded}"
print("ok")
"""


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lambda_distributions() -> set[str]:
    """requirements.txt and everything it pulls in (extras included): what the image contains."""
    from importlib import metadata

    from packaging.requirements import Requirement

    todo: list[tuple[str, frozenset[str]]] = []
    for line in (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            req = Requirement(line)
            todo.append((req.name, frozenset(req.extras)))
    seen: set[tuple[str, frozenset[str]]] = set()
    names: set[str] = set()
    while todo:
        name, extras = todo.pop()
        if (_normalize(name), extras) in seen:
            continue
        seen.add((_normalize(name), extras))
        names.add(_normalize(name))
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for spec in requires:
            req = Requirement(spec)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in (extras or {""})):
                todo.append((req.name, frozenset(req.extras)))
    return names | {"echorag", "pip", "setuptools"}  # our own package; the base image's installers


@pytest.mark.parametrize("function", sorted(EXPECTED_FUNCTIONS))
def test_handler_exists_and_imports_without_training_deps(
    function: str, resources: dict[str, Any], tmp_path: Path
) -> None:
    (command,) = resources[function]["Properties"]["ImageConfig"]["Command"]
    module, attribute = command.rsplit(".", 1)
    path = ROOT / Path(*module.split(".")).with_suffix(".py")
    assert path.is_file(), f"{function}: handler module {path.relative_to(ROOT)} does not exist"
    # Roughly the Lambda environment: settings from env, writable /tmp only, nothing reachable.
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT),
        "HOME": str(tmp_path),
        "DATA_DIR": str(tmp_path / "data"),
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_METRICS_NAMESPACE": "EchoRAG",
        "POWERTOOLS_SERVICE_NAME": function,
    }
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_PROBE, module, attribute, ",".join(TRAINING_MODULES),
         json.dumps(sorted(lambda_distributions()))],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), (
        f"{command} failed to import without training deps:\n{result.stderr[-3000:]}"
    )


def test_lambda_requirements_exclude_training_deps() -> None:
    names = set()
    for line in (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names.add(re.split(r"[\[<>=!~; ]", line, maxsplit=1)[0].lower().replace("_", "-"))
    leaked = names & {"torch", "transformers", "peft", "sentence-transformers", "accelerate"}
    assert not leaked, f"requirements.txt (the Lambda image) must not pull training deps: {leaked}"
    dockerfile = (ROOT / "infra/lambda/Dockerfile").read_text(encoding="utf-8")
    assert "pip install -r /tmp/requirements.txt" in dockerfile
    assert "requirements-train" not in dockerfile and "requirements-dev" not in dockerfile
    stages = [line for line in dockerfile.splitlines() if line.startswith("FROM")]
    assert stages == ["FROM public.ecr.aws/lambda/python:3.11"]


def test_environment_variables_are_real_settings(resources: dict[str, Any]) -> None:
    """A typo in an env var name would silently fall back to a default: every name must be a field."""
    fields = {name.upper() for name in Settings.model_fields}
    extra: set[str] = set()
    for name, res in _of_type(resources, "AWS::Lambda::Function").items():
        variables = res["Properties"]["Environment"]["Variables"]
        unknown = {v for v in variables if v not in fields and v not in extra and not v.startswith("POWERTOOLS_")}
        assert not unknown, f"{name}: environment variables that no setting reads: {sorted(unknown)}"
        assert variables["DATA_DIR"].startswith("/tmp/"), "Lambda can only write under /tmp"
        assert "QDRANT_URL" in variables


# ------------------------------------------------------------------------------ HTTP API ------


def test_routes_reach_their_functions(resources: dict[str, Any]) -> None:
    (api,) = _of_type(resources, "AWS::ApiGatewayV2::Api").values()
    paths = api["Properties"]["Body"]["paths"]
    assert set(paths) == {"/slack/events", "/discord/interactions"}
    for path, function in (("/slack/events", "SlackEventsFunction"), ("/discord/interactions", "DiscordInteractionsFunction")):
        assert set(paths[path]) == {"post"}, f"{path} must accept POST only"
        integration = paths[path]["post"]["x-amazon-apigateway-integration"]
        assert integration["payloadFormatVersion"] == "2.0"  # the HTTP API v2 event the handlers parse
        assert f"${{{function}Alias" in integration["uri"]["Fn::Sub"]
    permissions = _of_type(resources, "AWS::Lambda::Permission")
    invoked = {_ref(p["Properties"]["FunctionName"]) for p in permissions.values()}
    assert {"SlackEventsFunctionAliaslive", "DiscordInteractionsFunctionAliaslive"} <= invoked


def test_outputs_give_the_urls_to_paste(source: dict[str, Any]) -> None:
    outputs = source["Outputs"]
    assert outputs["SlackEventsUrl"]["Value"]["Fn::Sub"].endswith("/slack/events")
    assert outputs["DiscordInteractionsUrl"]["Value"]["Fn::Sub"].endswith("/discord/interactions")
    for key in ("FeedbackBucketName", "DocsBucketName", "TrainingQueueUrl", "AskQueueUrl", "GpuHostPolicyArn"):
        assert key in outputs


# ------------------------------------------------------------------------------ Slack lazy ----


def test_slack_function_may_invoke_itself(resources: dict[str, Any]) -> None:
    """Bolt's lazy listeners re-invoke the same function (context.invoked_function_arn, an alias ARN)."""
    name = resources["SlackEventsFunction"]["Properties"]["FunctionName"]["Fn::Sub"]
    grants = [target for action, target in _role_actions(resources, "SlackEventsFunction") if action == "lambda:InvokeFunction"]
    assert len(grants) == 1
    pattern, variables = grants[0]["Fn::Sub"]
    assert pattern.endswith(":function:${functionName}*")  # the trailing * covers the :live alias
    assert variables["functionName"]["Fn::Sub"] == name
    for other in ("DiscordInteractionsFunction", "DiscordWorkerFunction", "IngestFunction"):
        assert not [a for a, _ in _role_actions(resources, other) if a.startswith("lambda:")]


# ------------------------------------------------------------------------------ queues --------


def test_training_queue_is_fifo_with_dlq_and_fits_the_worker(resources: dict[str, Any]) -> None:
    settings = Settings(_env_file=None)
    queue = resources["TrainingQueue"]["Properties"]
    assert queue["FifoQueue"] is True
    assert queue["ContentBasedDeduplication"] is False  # dedup by job id, never by body
    assert queue["VisibilityTimeout"] == settings.queue_visibility_s
    assert queue["RedrivePolicy"]["maxReceiveCount"] == settings.queue_max_receives
    dlq = _ref(queue["RedrivePolicy"]["deadLetterTargetArn"])
    assert resources[dlq]["Properties"]["FifoQueue"] is True  # a FIFO queue needs a FIFO DLQ
    assert resources[dlq]["Properties"]["MessageRetentionPeriod"] >= queue["MessageRetentionPeriod"]


@pytest.mark.parametrize(
    ("function", "queue", "dlq"),
    [("DiscordWorkerFunction", "AskQueue", "AskDLQ"), ("IngestFunction", "DocsEventsQueue", "DocsEventsDLQ")],
)
def test_sqs_consumers_report_partial_failures_and_have_a_dlq(
    resources: dict[str, Any], function: str, queue: str, dlq: str
) -> None:
    mappings = [
        m["Properties"]
        for m in _of_type(resources, "AWS::Lambda::EventSourceMapping").values()
        if _ref(m["Properties"]["FunctionName"]) == function
    ]
    assert len(mappings) == 1
    mapping = mappings[0]
    assert _ref(mapping["EventSourceArn"]) == queue
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["BatchSize"] <= 10
    props = resources[queue]["Properties"]
    assert _ref(props["RedrivePolicy"]["deadLetterTargetArn"]) == dlq
    assert props["RedrivePolicy"]["maxReceiveCount"] >= 2
    # A message must stay hidden for longer than one invocation can run, or it is processed twice.
    assert props["VisibilityTimeout"] > resources[function]["Properties"]["Timeout"]


def test_ask_retries_fit_the_interaction_token(resources: dict[str, Any]) -> None:
    """Every attempt at a Discord /ask must start while its 15-minute interaction token is valid,
    and the worker must know which attempt is the last (it then tells the user it failed)."""
    queue = resources["AskQueue"]["Properties"]
    worker = resources["DiscordWorkerFunction"]["Properties"]
    receives = queue["RedrivePolicy"]["maxReceiveCount"]
    assert (receives - 1) * queue["VisibilityTimeout"] + worker["Timeout"] <= 15 * 60
    assert int(worker["Environment"]["Variables"]["QUEUE_MAX_RECEIVES"]) == receives


def test_answering_functions_outlast_their_llm_requests(source: dict[str, Any], resources: dict[str, Any]) -> None:
    """An answer may make four LLM requests (condense + generate, one client retry each)."""
    parameter = source["Parameters"]["LlmTimeoutSeconds"]
    for function in ("SlackEventsFunction", "DiscordWorkerFunction"):
        props = resources[function]["Properties"]
        assert props["Environment"]["Variables"]["LLM_TIMEOUT_S"] == {"Ref": "LlmTimeoutSeconds"}
        assert 4 * parameter["MaxValue"] < props["Timeout"], function
    assert parameter["MinValue"] <= parameter["Default"] <= parameter["MaxValue"]


def test_ingest_queue_follows_aws_visibility_guidance(resources: dict[str, Any]) -> None:
    """AWS's guidance for SQS event sources: visibility >= 6x the function timeout."""
    timeout = resources["IngestFunction"]["Properties"]["Timeout"]
    assert resources["DocsEventsQueue"]["Properties"]["VisibilityTimeout"] >= 6 * timeout


def test_each_dlq_and_function_has_an_alarm(resources: dict[str, Any]) -> None:
    alarms = [a["Properties"] for a in _of_type(resources, "AWS::CloudWatch::Alarm").values()]
    watched_queues = {
        _ref(a["Dimensions"][0]["Value"])
        for a in alarms
        if a["MetricName"] == "ApproximateNumberOfMessagesVisible"
    }
    assert {"TrainingDLQ", "AskDLQ", "DocsEventsDLQ"} <= watched_queues
    errors = {_ref(a["Dimensions"][0]["Value"]) for a in alarms if a["MetricName"] == "Errors"}
    assert errors == set(EXPECTED_FUNCTIONS)
    p95 = [a for a in alarms if a.get("ExtendedStatistic") == "p95"]
    assert any(a["Namespace"] == "AWS/ApiGateway" and a["MetricName"] == "Latency" for a in p95)
    assert all(a["AlarmActions"] for a in alarms)
    # CloudWatch cannot publish to a topic encrypted with the AWS-managed SNS key.
    assert resources["AlarmTopic"]["Properties"].get("KmsMasterKeyId") != "alias/aws/sns"


# ------------------------------------------------------------------------------ storage -------


def test_feedback_bucket_is_private_encrypted_versioned_with_lifecycle(resources: dict[str, Any]) -> None:
    for name in ("FeedbackBucket", "DocsBucket"):
        props = resources[name]["Properties"]
        block = props["PublicAccessBlockConfiguration"]
        assert all(block[key] is True for key in ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"))
        assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
        assert props["VersioningConfiguration"] == {"Status": "Enabled"}
        rules = props["LifecycleConfiguration"]["Rules"]
        assert any("NoncurrentVersionExpiration" in rule for rule in rules)
        assert resources[name]["DeletionPolicy"] == "Retain"


def test_docs_notifications_cannot_loop(resources: dict[str, Any]) -> None:
    """Ingestion fires only under docs/, and no function may write to the docs bucket."""
    notifications = resources["DocsBucket"]["Properties"]["NotificationConfiguration"]["QueueConfigurations"]
    assert {n["Event"] for n in notifications} == {"s3:ObjectCreated:*", "s3:ObjectRemoved:*"}
    for notification in notifications:
        assert _ref(notification["Queue"]) == "DocsEventsQueue"
        assert notification["Filter"]["S3Key"]["Rules"] == [{"Name": "prefix", "Value": "docs/"}]
    assert "NotificationConfiguration" not in resources["FeedbackBucket"]["Properties"]
    for owner, statement in _statements(resources):
        text = json.dumps(statement["Resource"])
        writes = [a for a in _as_list(statement["Action"]) if a in ("s3:PutObject", "s3:DeleteObject", "s3:*")]
        assert not (writes and "DocsBucket" in text), f"{owner} may write to the docs bucket: a notification loop"
    # The queue policy must name exactly the bucket the notification comes from.
    bucket_name = resources["DocsBucket"]["Properties"]["BucketName"]
    (policy,) = resources["DocsEventsQueuePolicy"]["Properties"]["PolicyDocument"]["Statement"]
    source_arn = policy["Condition"]["ArnEquals"]["aws:SourceArn"]
    assert source_arn["Fn::Sub"][0].endswith(bucket_name["Fn::Sub"][0])
    assert source_arn["Fn::Sub"][1] == bucket_name["Fn::Sub"][1]
    assert resources["DocsBucket"]["DependsOn"] == "DocsEventsQueuePolicy"


# ------------------------------------------------------------------------------ IAM -----------


def test_no_wildcard_resources_and_only_known_managed_policies(resources: dict[str, Any]) -> None:
    for owner, statement in _statements(resources):
        if statement.get("Effect") != "Allow":
            continue
        for target in _as_list(statement["Resource"]):
            assert target != "*", f"{owner}: {statement.get('Action')} on Resource '*'"
        assert not any(action in ("*", "s3:*", "sqs:*") for action in _as_list(statement["Action"])), owner
    for name, role in _of_type(resources, "AWS::IAM::Role").items():
        managed = set(role["Properties"].get("ManagedPolicyArns", []))
        assert managed <= ALLOWED_MANAGED_POLICIES, f"{name}: unexpected managed policies {managed - ALLOWED_MANAGED_POLICIES}"


def test_secrets_are_scoped_to_the_functions_that_need_them(resources: dict[str, Any]) -> None:
    expected = {
        "SlackEventsFunction": ("SLACK_SECRET_ARN", "SlackSecret"),
        "DiscordInteractionsFunction": ("DISCORD_SECRET_ARN", "DiscordSecret"),
        "DiscordWorkerFunction": ("DISCORD_SECRET_ARN", "DiscordSecret"),
    }
    for function in EXPECTED_FUNCTIONS:
        variables = resources[function]["Properties"]["Environment"]["Variables"]
        readable = {
            _ref(target["Fn::Sub"][1]["secretArn"]) if isinstance(target, dict) and "Fn::Sub" in target else _ref(target)
            for action, target in _role_actions(resources, function)
            if action == "secretsmanager:GetSecretValue"
        }
        if function in expected:
            env_name, secret = expected[function]
            assert _ref(variables[env_name]) == secret
            assert readable == {secret}
        else:
            assert readable == set()
        for token in ("SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "DISCORD_BOT_TOKEN", "DISCORD_PUBLIC_KEY"):
            assert token not in variables, f"{function}: {token} belongs in Secrets Manager"


def test_every_secret_the_template_passes_is_read_by_the_code(resources: dict[str, Any]) -> None:
    """A secret ARN that no code reads leaves the function without its credentials (401 on every
    request): each *_SECRET_ARN must be a setting that the chat code resolves."""
    sources = "\n".join(
        path.read_text(encoding="utf-8") for folder in ("handlers", "bots") for path in (ROOT / folder).glob("*.py")
    )
    for function in EXPECTED_FUNCTIONS:
        for name in resources[function]["Properties"]["Environment"]["Variables"]:
            if not name.endswith("_SECRET_ARN"):
                continue
            field = name.lower()
            assert field in Settings.model_fields, f"{function}: {name} is not a setting (core/settings.py)"
            assert f".{field}" in sources, f"{function}: nothing in handlers/ or bots/ reads settings.{field}"


def test_queue_senders_are_least_privilege(resources: dict[str, Any]) -> None:
    def queues_sent_to(function: str) -> set[str | None]:
        return {
            _ref(target["Fn::Sub"][1]["queueName"])
            for action, target in _role_actions(resources, function)
            if action.startswith("sqs:SendMessage")
        }

    assert queues_sent_to("SlackEventsFunction") == {"TrainingQueue"}
    assert queues_sent_to("DiscordInteractionsFunction") == {"AskQueue", "TrainingQueue"}
    assert queues_sent_to("DiscordWorkerFunction") == set()
    assert queues_sent_to("IngestFunction") == set()
    ingest = _role_actions(resources, "IngestFunction")
    assert {action for action, _ in ingest} == {"s3:GetObject", "s3:ListBucket"}


# ------------------------------------------------------------------------------ local servers -


def test_compose_runs_qdrant_and_vllm_with_lora() -> None:
    text = (ROOT / "infra/compose.yaml").read_text(encoding="utf-8")
    # Resolve `${VAR:-default}` the way `docker compose` does with nothing set.
    compose = yaml.safe_load(re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", text))
    services = compose["services"]
    assert services["qdrant"]["image"].startswith("qdrant/qdrant:v")
    vllm = services["vllm"]
    command = " ".join(vllm["command"]) if isinstance(vllm["command"], list) else vllm["command"]
    assert "--enable-lora" in command
    assert vllm["image"].startswith("vllm/vllm-openai:v")
    assert vllm["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"  # the worker's hot-load
    for service in services.values():  # nothing unauthenticated listens beyond this machine
        assert all(str(port).startswith("127.0.0.1:") for port in service.get("ports", []))
