"""The SAM template, validated offline: cfn-lint, the SAM transform, and the wiring that matters.

The transform is run with aws-sam-translator (no AWS calls: a region, a stub managed-policy loader
and an ImageUri stand in for what `sam deploy` would supply); assertions read the expanded
CloudFormation, i.e. what AWS would actually create.

One suite (~730 lines): the template is transformed once per module and every wiring check reads
the same expanded resources.
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
# AWS-managed policies SAM attaches: logs, X-Ray (its actions support no resource scoping), the
# SQS poller policy for SQS event sources, and the ENI policy for VpcConfig (attached even while
# NetworkMode is public, because SAM cannot see through the !If).
ALLOWED_MANAGED_POLICIES = {
    "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole",
    "arn:aws:iam::aws:policy/AWSXrayWriteOnlyAccess",
    "arn:aws:iam::aws:policy/service-role/AWSLambdaSQSQueueExecutionRole",
    "arn:aws:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole",
}
# The roles ECS and Batch need for the gateway task and the GPU instances (AWS's own, by service).
SERVICE_MANAGED_POLICIES = {
    "GatewayExecutionRole": "service-role/AmazonECSTaskExecutionRolePolicy",
    "TrainingInstanceRole": "service-role/AmazonEC2ContainerServiceforEC2Role",
}
EXPECTED_FUNCTIONS = {
    "SlackEventsFunction": "handlers.slack_events.handler",
    "DiscordInteractionsFunction": "handlers.discord_interactions.handler",
    "DiscordWorkerFunction": "handlers.discord_worker.handler",
    "IngestFunction": "handlers.ingest_s3.handler",
    "TrainingTriggerFunction": "handlers.training_trigger.handler",
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
    pairs: list[tuple[str, Any]] = []
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
    assert stages == ["FROM public.ecr.aws/lambda/python:3.12"]  # Amazon Linux 2023


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


def test_parameters_reach_every_function(resources: dict[str, Any]) -> None:
    """Qdrant, the LLM endpoint and model, and the adapter name are stack parameters that every
    function receives (optional ones only when set, so an empty value never overrides a default);
    the API keys reach them only as the secret's ARN."""
    for name, res in _of_type(resources, "AWS::Lambda::Function").items():
        variables = res["Properties"]["Environment"]["Variables"]
        for env, parameter in (("QDRANT_URL", "QdrantUrl"), ("QDRANT_COLLECTION", "QdrantCollection"),
                               ("ADAPTER_NAME", "AdapterName"), ("LLM_TIMEOUT_S", "LlmTimeoutSeconds")):
            assert variables[env] == {"Ref": parameter}, f"{name}: {env}"
        for env, parameter in (("LLM_BASE_URL", "LlmBaseUrl"), ("LLM_MODEL", "LlmModel")):
            _, value, otherwise = variables[env]["Fn::If"]
            assert (value, otherwise) == ({"Ref": parameter}, {"Ref": "AWS::NoValue"}), f"{name}: {env}"
        # the trigger talks to SQS and Batch only: it gets no key, and no right to read them
        keys = "" if name == "TrainingTriggerFunction" else {"Ref": "ServiceKeysSecret"}
        assert variables["API_KEYS_SECRET_ARN"] == keys, name
        assert not [env for env in variables if env.endswith("_API_KEY")], f"{name}: API keys belong in Secrets Manager"


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
    assert dlq is not None
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
    from bots.discord.runtime import ASK_VISIBILITY_S

    assert queue["VisibilityTimeout"] == ASK_VISIBILITY_S  # the embedded default's ask queue behaves alike


def _evaluate(expression: Any, parameters: dict[str, str]) -> Any:
    """Ref / Fn::Equals / Fn::Not / Fn::And / Fn::Or, as CloudFormation evaluates a rule."""
    if isinstance(expression, dict):
        (function, argument), = expression.items()
        if function == "Ref":
            return parameters[argument]
        values = [_evaluate(item, parameters) for item in argument]
        return {"Fn::Equals": lambda: values[0] == values[1], "Fn::Not": lambda: not values[0],
                "Fn::And": lambda: all(values), "Fn::Or": lambda: any(values)}[function]()
    return expression


def _deployable(source: dict[str, Any], parameters: dict[str, str]) -> bool:
    """Whether CloudFormation's Rules accept these parameters (the rest at their defaults)."""
    values = {name: str(spec.get("Default", "")) for name, spec in source["Parameters"].items()} | parameters
    return all(
        not _evaluate(rule.get("RuleCondition", True), values)
        or all(_evaluate(a["Assert"], values) for a in rule["Assertions"])
        for rule in source["Rules"].values()
    )


@pytest.mark.parametrize(
    ("parameters", "deployable"),
    [
        ({"QdrantApiKey": ""}, False),  # public Qdrant without a key: open to the internet
        ({"QdrantApiKey": "qk", "LlmBaseUrl": "https://llm.example/v1", "LlmModel": "m"}, False),  # LLM without key
        ({"QdrantApiKey": "qk", "LlmBaseUrl": "https://llm.example/v1", "LlmModel": "m", "LlmApiKey": "lk"}, True),
        ({"NetworkMode": "vpc"}, False),  # a VPC needs its id and subnets
        ({"NetworkMode": "vpc", "VpcId": "vpc-0123abcd", "LlmBaseUrl": "http://10.0.1.5:8000/v1", "LlmModel": "m"}, True),
        ({"QdrantApiKey": "qk", "DiscordGateway": "fargate", "VpcId": "vpc-0123abcd"}, False),  # no image yet
        ({"QdrantApiKey": "qk", "DiscordGateway": "fargate", "VpcId": "vpc-0123abcd", "GatewayImageUri": "img"}, True),
        ({"QdrantApiKey": "qk", "TrainingMode": "batch", "TrainingImageUri": "img"}, False),  # no subnets
        ({"QdrantApiKey": "qk", "TrainingMode": "batch", "TrainingImageUri": "img", "VpcId": "vpc-0123abcd"}, True),
    ],
)
def test_deploy_refuses_unsafe_or_incomplete_network_choices(
    source: dict[str, Any], parameters: dict[str, str], deployable: bool
) -> None:
    """Over the internet every endpoint needs its key; each optional service needs what it runs on."""
    assert _deployable(source, parameters) is deployable


@pytest.mark.parametrize(
    ("base_url", "model", "deployable"),
    [("", "", True), ("http://vllm:8000/v1", "echorag", True), ("http://vllm:8000/v1", "", False)],
)
def test_deploy_refuses_an_llm_endpoint_without_a_model(
    source: dict[str, Any], tmp_path: Path, base_url: str, model: str, deployable: bool
) -> None:
    """What the code would refuse on every answer, CloudFormation refuses at deploy time."""
    from core.errors import ConfigError
    from rag.llm import llm_from_settings

    parameters = {"LlmBaseUrl": base_url, "LlmModel": model, "LlmApiKey": "lk", "QdrantApiKey": "qk"}
    assert _deployable(source, parameters) is deployable
    settings = Settings(_env_file=None, data_dir=tmp_path, llm_base_url=base_url or None, llm_model=model or None)
    if deployable:
        llm_from_settings(settings)
    else:
        with pytest.raises(ConfigError, match="LLM_MODEL"):
            llm_from_settings(settings)


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
            # batch:ListJobs has no resource-level permissions (Batch's service authorization table)
            if statement.get("Action") != "batch:ListJobs":
                assert target != "*", f"{owner}: {statement.get('Action')} on Resource '*'"
        assert not any(action in ("*", "s3:*", "sqs:*") for action in _as_list(statement["Action"])), owner
    for name, role in _of_type(resources, "AWS::IAM::Role").items():
        managed = role["Properties"].get("ManagedPolicyArns", [])
        if name in SERVICE_MANAGED_POLICIES:
            assert managed == [{"Fn::Sub": f"arn:${{AWS::Partition}}:iam::aws:policy/{SERVICE_MANAGED_POLICIES[name]}"}]
        elif name == "TrainingJobRole":
            assert managed == [{"Ref": "GpuHostPolicy"}]  # the Batch job may do what the GPU host may
        else:
            assert set(managed) <= ALLOWED_MANAGED_POLICIES, f"{name}: unexpected managed policies {managed}"


def test_secrets_are_scoped_to_the_functions_that_need_them(resources: dict[str, Any]) -> None:
    expected = {
        "SlackEventsFunction": ("SLACK_SECRET_ARN", "SlackSecret"),
        "DiscordInteractionsFunction": ("DISCORD_SECRET_ARN", "DiscordSecret"),
        "DiscordWorkerFunction": ("DISCORD_SECRET_ARN", "DiscordSecret"),
    }
    reads_api_keys = {"SlackEventsFunction", "DiscordInteractionsFunction", "DiscordWorkerFunction", "IngestFunction"}
    for function in EXPECTED_FUNCTIONS:
        variables = resources[function]["Properties"]["Environment"]["Variables"]
        readable = {
            _ref(target["Fn::Sub"][1]["secretArn"]) if isinstance(target, dict) and "Fn::Sub" in target else _ref(target)
            for action, target in _role_actions(resources, function)
            if action == "secretsmanager:GetSecretValue"
        }
        keys = {"ServiceKeysSecret"} if function in reads_api_keys else set()
        if function in expected:
            env_name, secret = expected[function]
            assert _ref(variables[env_name]) == secret
            assert readable == {secret} | keys
        else:
            assert readable == keys
        for token in ("SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "DISCORD_BOT_TOKEN", "DISCORD_PUBLIC_KEY"):
            assert token not in variables, f"{function}: {token} belongs in Secrets Manager"


def test_every_secret_the_template_passes_is_read_by_the_code(resources: dict[str, Any]) -> None:
    """A secret ARN that no code reads leaves the function without its credentials (401 on every
    request): each *_SECRET_ARN must be a setting that the chat code resolves."""
    sources = "\n".join(
        path.read_text(encoding="utf-8") for folder in ("handlers", "bots", "core") for path in (ROOT / folder).glob("*.py")
    )
    for function in EXPECTED_FUNCTIONS:
        for name in resources[function]["Properties"]["Environment"]["Variables"]:
            if not name.endswith("_SECRET_ARN"):
                continue
            field = name.lower()
            assert field in Settings.model_fields, f"{function}: {name} is not a setting (core/settings.py)"
            assert f".{field}" in sources, f"{function}: nothing in handlers/, bots/ or core/ reads settings.{field}"


def test_secrets_the_stack_creates_have_the_shape_the_code_reads(
    source: dict[str, Any], moto_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each secret, as the stack writes it from the values `sam deploy --guided` asks for, is read
    by the code that uses it: the Slack function, the Discord functions and the GPU host's
    announcements (a key spelt differently would leave a function without its credentials)."""
    import uuid

    import boto3

    from bots.discord.runtime import resolve_settings as resolve_discord
    from bots.notify import bot_token
    from core.settings import get_settings
    from handlers.slack_events import resolve_settings as resolve_slack

    values = {"SlackSigningSecret": "sign-1", "SlackBotToken": "xoxb-1", "DiscordPublicKey": "ab" * 32,
              "DiscordBotToken": "bot-1", "DiscordApplicationId": "42", "QdrantApiKey": "qk-1", "LlmApiKey": "lk-1",
              "EmbeddingApiKey": ""}

    def create(logical_id: str) -> str:
        template = source["Resources"][logical_id]["Properties"]["SecretString"]["Fn::Sub"]
        secret = re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], template)
        client = boto3.client("secretsmanager")
        return client.create_secret(Name=f"{logical_id}-{uuid.uuid4().hex}", SecretString=secret)["ARN"]

    slack_arn, discord_arn = create("SlackSecret"), create("DiscordSecret")
    monkeypatch.chdir(tmp_path)  # no developer .env
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SLACK_SECRET_ARN", slack_arn)  # as the Slack function's environment
    monkeypatch.setenv("API_KEYS_SECRET_ARN", create("ServiceKeysSecret"))
    get_settings.cache_clear()
    try:
        slack = resolve_slack()
    finally:
        get_settings.cache_clear()
    assert (slack.slack_signing_secret, slack.slack_bot_token) == ("sign-1", "xoxb-1")
    # an empty key (no embedding endpoint) stays unset rather than becoming ""
    assert (slack.qdrant_api_key, slack.llm_api_key, slack.embedding_api_key) == ("qk-1", "lk-1", None)
    discord = resolve_discord(Settings(_env_file=None, data_dir=tmp_path, discord_secret_arn=discord_arn))
    assert (discord.discord_public_key, discord.discord_bot_token, discord.discord_application_id) == (
        "ab" * 32, "bot-1", "42"
    )
    gpu_host = Settings(_env_file=None, data_dir=tmp_path, slack_secret_arn=slack_arn, discord_secret_arn=discord_arn)
    assert (bot_token(gpu_host, "slack"), bot_token(gpu_host, "discord")) == ("xoxb-1", "bot-1")


def test_queue_senders_are_least_privilege(resources: dict[str, Any]) -> None:
    def queues_sent_to(function: str) -> set[str | None]:
        return {
            _ref(target["Fn::Sub"][1]["queueName"]) if "Fn::Sub" in target else _ref(target)
            for action, target in _role_actions(resources, function)
            if action.startswith("sqs:SendMessage")
        }

    # the lazy-failure destination is written by Lambda itself, with the function's role
    assert queues_sent_to("SlackEventsFunction") == {"TrainingQueue", "LazyFailuresQueue"}
    assert queues_sent_to("DiscordInteractionsFunction") == {"AskQueue", "TrainingQueue"}
    assert queues_sent_to("DiscordWorkerFunction") == set()
    assert queues_sent_to("IngestFunction") == set()
    ingest = _role_actions(resources, "IngestFunction")
    assert {action for action, _ in ingest} == {"s3:GetObject", "s3:ListBucket", "secretsmanager:GetSecretValue"}


# ------------------------------------------------------------------------------ AWS calls ----

# The IAM action each S3/SQS operation our code makes needs (HeadObject is authorised by GetObject,
# ListObjectsV2 by ListBucket). An operation missing here fails the tests below: map it, grant it.
IAM_ACTION = {
    "PutObject": "s3:PutObject",
    "GetObject": "s3:GetObject",
    "HeadObject": "s3:GetObject",
    "DeleteObject": "s3:DeleteObject",
    "ListObjectsV2": "s3:ListBucket",
    "SendMessage": "sqs:SendMessage",
    "ReceiveMessage": "sqs:ReceiveMessage",
    "DeleteMessage": "sqs:DeleteMessage",
    "ChangeMessageVisibility": "sqs:ChangeMessageVisibility",
    "GetQueueAttributes": "sqs:GetQueueAttributes",
    "GetQueueUrl": "sqs:GetQueueUrl",
}


def _target(resource: Any) -> str | None:
    """The logical id an IAM Resource points at: Ref/GetAtt, "${X.Arn}/*", or a SAM policy
    template's Fn::Sub [pattern, {var: Ref/GetAtt X}]."""
    if isinstance(resource, dict) and "Fn::Sub" in resource:
        sub = resource["Fn::Sub"]
        if isinstance(sub, str):
            found = re.search(r"\$\{(\w+)\.", sub)
            return found.group(1) if found else None
        return next((_ref(value) for value in sub[1].values() if _ref(value)), None)
    return _ref(resource)


def _grants(resources: dict[str, Any], owner: str) -> set[tuple[str, str | None]]:
    """(action pattern, logical id) pairs a role or managed policy allows."""
    if resources[owner]["Type"] == "AWS::Lambda::Function":
        owner = _ref(resources[owner]["Properties"]["Role"]) or owner
    return {
        (action, _target(resource))
        for name, statement in _statements(resources)
        if name == owner and statement.get("Effect") == "Allow"
        for action in _as_list(statement["Action"])
        for resource in _as_list(statement["Resource"])
    }


def _allowed(grants: set[tuple[str, str | None]], action: str, target: str) -> bool:
    from fnmatch import fnmatchcase

    return any(fnmatchcase(action, pattern) and granted == target for pattern, granted in grants)


def _client_operations(path: Path) -> set[str]:
    """The AWS operations a module calls on its boto3 client (`client.put_object(` -> PutObject)."""
    text = path.read_text(encoding="utf-8")
    names = re.findall(r"client\.(\w+)\(", text) + re.findall(r"get_paginator\(\"(\w+)\"\)", text)
    return {"".join(part.capitalize() for part in name.split("_")) for name in names} - {"GetPaginator"}


def test_gpu_host_policy_covers_every_call_the_store_and_queue_make(resources: dict[str, Any]) -> None:
    """The GPU host runs the worker and `echorag status|adapters|retrain`: every S3 operation of
    S3BlobStore on the feedback bucket, every SQS operation of SqsQueue on the training queue, and
    the dead-letter peek (GetQueueUrl, ReceiveMessage) on its DLQ."""
    s3_ops, sqs_ops = _client_operations(ROOT / "core/store.py"), _client_operations(ROOT / "core/queue/sqs.py")
    unmapped = (s3_ops | sqs_ops) - set(IAM_ACTION)
    assert not unmapped, f"map these operations to their IAM actions in IAM_ACTION: {sorted(unmapped)}"
    assert {"PutObject", "ListObjectsV2", "ReceiveMessage", "ChangeMessageVisibility"} <= s3_ops | sqs_ops
    grants = _grants(resources, "GpuHostPolicy")
    needed = {(IAM_ACTION[op], "FeedbackBucket") for op in s3_ops}
    needed |= {(IAM_ACTION[op], "TrainingQueue") for op in sqs_ops - {"GetQueueUrl"}}  # its URL is configured
    needed |= {("sqs:GetQueueUrl", "TrainingDLQ"), ("sqs:ReceiveMessage", "TrainingDLQ")}  # the DLQ peek
    missing = {pair for pair in needed if not _allowed(grants, *pair)}
    assert not missing, f"GpuHostPolicy lacks {sorted(missing)}"


def test_gpu_host_policy_file_matches_the_stack_policy(resources: dict[str, Any]) -> None:
    """infra/gpu-host/iam-policy.json is the same policy for hosts set up without the stack."""
    def actions(statements: list[dict[str, Any]]) -> dict[str, set[str]]:
        return {st["Sid"]: set(_as_list(st["Action"])) for st in statements if st.get("Effect") == "Allow"}

    stack = resources["GpuHostPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    file = json.loads((ROOT / "infra/gpu-host/iam-policy.json").read_text(encoding="utf-8"))["Statement"]
    assert actions(file) == actions(stack)


@pytest.mark.parametrize("function", ["SlackEventsFunction", "DiscordInteractionsFunction"])
def test_retrain_requests_make_only_calls_the_chat_functions_may_make(
    function: str, resources: dict[str, Any], aws_settings: Settings
) -> None:
    """`/retrain` (and the threshold reaction) through the real code on moto: refused for want of new
    ratings, forced, then again while a job has held the slot for an hour: every S3/SQS call it
    makes is granted to the function."""
    from datetime import timedelta
    from functools import partial

    from core import jobs
    from core.contracts import utcnow
    from core.queue import open_queue
    from core.retrain import request_retrain
    from core.store import open_store

    store, queue = open_store(aws_settings), open_queue(aws_settings)
    made: set[tuple[str, str]] = set()
    targets = {aws_settings.feedback_bucket: "FeedbackBucket", aws_settings.training_queue_url: "TrainingQueue"}

    def record(model: Any, params: dict[str, Any], **_: Any) -> None:
        made.add((model.name, targets[params.get("Bucket") or params.get("QueueUrl")]))

    for client in (store.client, queue.client):  # type: ignore[attr-defined]
        client.meta.events.register("before-parameter-build.*.*", record)
    ask = partial(request_retrain, requested_by="slack:U1", is_admin=True, notify_targets=[], reason="test",
                  settings=aws_settings, store=store, queue=queue)
    assert ask().status == "nothing_new"  # counted under the slot, then gave it back
    first = ask(force=True)
    assert first.status == "queued" and first.job_id is not None
    jobs.update_job_status(store, first.job_id, state="running")  # the worker took it …
    an_hour_ago = (utcnow() - timedelta(hours=1)).isoformat()  # … an hour ago, and is still training
    store.put(jobs.ACTIVE_JOB_KEY, json.dumps({"job_id": first.job_id, "acquired_at": an_hour_ago}).encode())
    assert ask().status == "already_queued"

    assert ("GetQueueAttributes", "TrainingQueue") in made  # the long-held slot was checked
    grants = _grants(resources, function)
    missing = {(op, target) for op, target in made if not _allowed(grants, IAM_ACTION[op], target)}
    assert not missing, f"{function} would get AccessDenied for {sorted(missing)}"


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


# ------------------------------------------------------------------------------ network -------


def test_functions_join_the_vpc_only_in_vpc_mode(source: dict[str, Any], resources: dict[str, Any]) -> None:
    """NetworkMode vpc puts every function in SubnetIds; public leaves them out of any VPC."""
    for name in EXPECTED_FUNCTIONS:
        condition, inside, outside = resources[name]["Properties"]["VpcConfig"]["Fn::If"]
        assert condition == "InVpc" and outside == {"Ref": "AWS::NoValue"}
        assert inside == {"SubnetIds": {"Ref": "SubnetIds"}, "SecurityGroupIds": [{"Ref": "FunctionSecurityGroup"}]}
    assert source["Conditions"]["InVpc"] == {"Fn::Equals": [{"Ref": "NetworkMode"}, "vpc"]}


def test_serving_hosts_admit_only_the_functions(resources: dict[str, Any]) -> None:
    """vLLM's and Qdrant's ports open to EchoRAG's security group, never to an address range."""
    ingress = resources["ServingSecurityGroup"]["Properties"]["SecurityGroupIngress"]
    assert {(rule["FromPort"], rule["ToPort"]) for rule in ingress} == {(8000, 8000), (6333, 6333)}
    assert all(rule["SourceSecurityGroupId"] == {"Ref": "FunctionSecurityGroup"} and "CidrIp" not in rule for rule in ingress)
    endpoint_ingress = resources["EndpointSecurityGroup"]["Properties"]["SecurityGroupIngress"]
    assert [(rule["FromPort"], _ref(rule["SourceSecurityGroupId"])) for rule in endpoint_ingress] == [(443, "FunctionSecurityGroup")]


def test_vpc_endpoints_cover_every_aws_service_the_functions_call(resources: dict[str, Any]) -> None:
    """S3 (gateway, free), SQS, Secrets Manager and Lambda (Bolt's lazy self-invoke): with them the
    functions make no AWS call through the NAT."""
    endpoints = _of_type(resources, "AWS::EC2::VPCEndpoint")
    services = {
        res["Properties"]["ServiceName"]["Fn::Sub"].rsplit(".", 1)[-1]: res["Properties"]["VpcEndpointType"]
        for res in endpoints.values()
    }
    assert services == {"s3": "Gateway", "sqs": "Interface", "secretsmanager": "Interface", "lambda": "Interface"}
    for name, res in endpoints.items():
        assert res["Condition"] in ("HasS3GatewayEndpoint", "HasInterfaceEndpoints"), name
        if res["Properties"]["VpcEndpointType"] == "Interface":
            assert res["Properties"]["PrivateDnsEnabled"] is True  # the SDKs' default hostnames resolve to it


# ------------------------------------------------------------------------------ limits --------


def test_slack_function_concurrency_is_capped_and_failed_lazy_work_is_kept(resources: dict[str, Any]) -> None:
    props = resources["SlackEventsFunction"]["Properties"]
    condition, value, otherwise = props["ReservedConcurrentExecutions"]["Fn::If"]
    assert (condition, value, otherwise) == ("HasSlackReservedConcurrency", {"Ref": "SlackReservedConcurrency"},
                                             {"Ref": "AWS::NoValue"})
    (config,) = _of_type(resources, "AWS::Lambda::EventInvokeConfig").values()
    assert _ref(config["Properties"]["FunctionName"]) == "SlackEventsFunction"
    assert _ref(config["Properties"]["DestinationConfig"]["OnFailure"]["Destination"]) == "LazyFailuresQueue"
    assert resources["TrainingTriggerFunction"]["Properties"]["ReservedConcurrentExecutions"] == 1


def test_retry_state_expires_only_after_every_retry_window(source: dict[str, Any], resources: dict[str, Any]) -> None:
    """A once-only claim that expired while its event could still be redelivered would let the
    redelivery run twice. The longest window is a training job's: its queue's retention, then its
    DLQ's (FIFO dead letters keep their own clock), then a redrive; every other queue and platform
    retry (Slack's 5 minutes, the ask queue's hour) is shorter."""
    rules = {rule["Id"]: rule for rule in resources["FeedbackBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]}
    for rule_id, prefix in (("expire-once-only-claims", "idempotency/"), ("expire-answer-placeholders", "slack/placeholders/")):
        assert rules[rule_id]["Prefix"] == prefix and rules[rule_id]["ExpirationInDays"] == {"Ref": "RetryStateExpiryDays"}
    for rule_id, prefix in (
        ("expire-thread-memory", "slack/threads/"),
        ("expire-assistant-threads", "slack/assistant/"),
        ("expire-discord-conversations", "discord/conversations/"),
    ):
        assert rules[rule_id]["Prefix"] == prefix and rules[rule_id]["ExpirationInDays"] == {"Ref": "ThreadMemoryDays"}
    from core.idempotency import PREFIX

    assert PREFIX == "idempotency/"
    queues = _of_type(resources, "AWS::SQS::Queue")
    windows_s = [
        queues[name]["Properties"]["MessageRetentionPeriod"] + queues[dlq]["Properties"]["MessageRetentionPeriod"]
        for name, dlq in (("TrainingQueue", "TrainingDLQ"), ("AskQueue", "AskDLQ"), ("DocsEventsQueue", "DocsEventsDLQ"))
    ]
    shortest_expiry_s = source["Parameters"]["RetryStateExpiryDays"]["MinValue"] * 86400
    assert shortest_expiry_s > max(windows_s)


# ------------------------------------------------------------------------------ services ------


def test_discord_gateway_runs_as_one_healthy_fargate_task(resources: dict[str, Any]) -> None:
    service = resources["GatewayService"]
    assert service["Condition"] == "RunGateway"
    props = service["Properties"]
    assert props["LaunchType"] == "FARGATE" and props["DesiredCount"] == 1
    assert props["DeploymentConfiguration"]["MaximumPercent"] == 100  # never two sessions at once
    (container,) = resources["GatewayTaskDefinition"]["Properties"]["ContainerDefinitions"]
    assert container["EntryPoint"] + container["Command"] == ["python", "-m", "handlers.cli", "serve", "discord"]
    assert container["HealthCheck"]["Command"] == ["CMD", "python", "-m", "bots.discord.heartbeat", "--check"]
    assert container["RestartPolicy"]["Enabled"] is True
    names = {pair["Name"] for pair in container["Environment"]}
    assert {"DISCORD_SECRET_ARN", "API_KEYS_SECRET_ARN", "FEEDBACK_BUCKET", "TRAINING_QUEUE_URL", "QDRANT_URL"} <= names
    assert {name.lower() for name in names} <= set(Settings.model_fields)
    assert not [name for name in names if name.endswith(("_API_KEY", "_TOKEN"))]


def test_batch_training_scales_to_zero_and_runs_the_draining_worker(resources: dict[str, Any]) -> None:
    compute = resources["TrainingComputeEnvironment"]["Properties"]["ComputeResources"]
    assert compute["MinvCpus"] == 0
    container = resources["TrainingJobDefinition"]["Properties"]["ContainerProperties"]
    dockerfile = (ROOT / "infra/gpu-host/Dockerfile").read_text(encoding="utf-8")
    assert 'ENTRYPOINT ["echorag", "worker"' in dockerfile and container["Command"][0] == "--drain"
    assert {"Type": "GPU", "Value": "1"} in container["ResourceRequirements"]
    # SQS owns the retries (visibility, maxReceiveCount, DLQ): Batch must not run a job twice.
    assert resources["TrainingJobDefinition"]["Properties"]["RetryStrategy"] == {"Attempts": 1}
    names = {pair["Name"].lower() for pair in container["Environment"]}
    assert names <= set(Settings.model_fields)
    trigger = resources["TrainingTriggerFunction"]["Properties"]["Environment"]["Variables"]
    assert _ref(trigger["BATCH_JOB_QUEUE"]) == "TrainingJobQueue"
    assert _ref(trigger["BATCH_JOB_DEFINITION"]) == "TrainingJobDefinition"


def test_every_command_line_the_infrastructure_runs_parses(resources: dict[str, Any]) -> None:
    """The Batch job, the gateway task and the serving host's follower run `echorag` command lines
    that no test would otherwise execute: each must parse with the CLI's own parser."""
    from handlers.cli import build_parser

    parser = build_parser()
    job = resources["TrainingJobDefinition"]["Properties"]["ContainerProperties"]["Command"]
    assert parser.parse_args(["worker", "--no-progress", *job]).drain is True  # after the image's entry point
    (gateway,) = resources["GatewayTaskDefinition"]["Properties"]["ContainerDefinitions"]
    assert parser.parse_args(gateway["Command"]).platform == "discord"
    compose = yaml.safe_load((ROOT / "infra/gpu-host/compose.yaml").read_text(encoding="utf-8"))
    follow = compose["services"]["follow"]
    assert follow["profiles"] == ["batch-training"]  # not started beside the worker by a plain `up`
    assert follow["entrypoint"][0] == "echorag"
    assert parser.parse_args(follow["entrypoint"][1:]).func.__name__ == "_adapters_follow"


# ------------------------------------------------------------------------------ dashboard -----


def _emitted_metrics() -> set[str]:
    """Every EchoRAG metric name the handlers can emit, read from the code that emits them."""
    from typing import get_args, get_type_hints

    from bots.discord.ask_worker import AskOutcome
    from bots.discord.interactions import Action
    from handlers.discord_interactions import _metric_name
    from handlers.ingest_s3 import METRIC_FOR

    names = set(re.findall(r'add_metric\(\s*name="(\w+)"', "\n".join(
        path.read_text(encoding="utf-8") for path in (ROOT / "handlers").glob("*.py")
    )))
    names |= {"FeedbackPositive", "FeedbackNegative"}  # handlers/slack_events.py picks one by label
    names |= {_metric_name(action) for action in get_args(Action)}
    names |= {f"Ask{status.capitalize()}" for status in get_args(get_type_hints(AskOutcome)["status"])}
    return names | set(METRIC_FOR.values())


def test_dashboard_shows_metrics_the_code_emits(resources: dict[str, Any]) -> None:
    body = resources["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    widgets = json.loads(body)["widgets"]
    shown = {metric[1] for widget in widgets for metric in widget["properties"]["metrics"] if metric[0] == "EchoRAG"}
    emitted = _emitted_metrics()
    assert shown <= emitted, f"dashboard metrics no code emits: {sorted(shown - emitted)}"
    for headline in ("Answers", "AnswerLatency", "Abstentions", "FeedbackPositive", "FeedbackNegative", "AskAnswered",
                     "DocumentsIngested", "InteractionFeedback"):
        assert headline in shown
    assert len(shown) >= 20


def test_alarms_on_our_own_metrics_watch_what_the_code_emits(resources: dict[str, Any]) -> None:
    """An alarm on a metric name no code emits would never fire."""
    ours = [a["Properties"] for a in _of_type(resources, "AWS::CloudWatch::Alarm").values()
            if a["Properties"]["Namespace"] == "EchoRAG"]
    assert ours, "expected alarms on EchoRAG metrics"
    code = "\n".join(path.read_text(encoding="utf-8") for path in (ROOT / "handlers").glob("*.py"))
    for alarm in ours:
        assert f'name="{alarm["MetricName"]}"' in code, alarm["MetricName"]
        (dimension,) = alarm["Dimensions"]
        service = dimension["Value"]
        assert dimension["Name"] == "service" and f'"{service}"' in code  # the handler's default service name
