"""template.yaml stood up: parameters, conditions and intrinsics resolved, the resources the
mounted functions name created on moto on first reference, and each function's deployed shape."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rehearsal import ACCOUNT, REGION, STACK, RehearsalError, one_line

LAMBDA_DEFAULT_RETRIES, LAMBDA_DEFAULT_EVENT_AGE_S = 2, 21_600


def load_template(path: Path) -> dict[str, Any]:
    """The template with CloudFormation's short tags (!Ref, !Sub, …) as their long forms."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def intrinsic(loader: yaml.SafeLoader, _suffix: str, node: yaml.Node) -> dict[str, Any]:
        tag = node.tag[1:]
        name = tag if tag in ("Ref", "Condition") else f"Fn::{tag}"
        value: Any
        if isinstance(node, yaml.ScalarNode):
            value = loader.construct_scalar(node)
            if tag == "GetAtt":
                value = str(value).split(".", 1)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
        return {name: value}

    Loader.add_multi_constructor("!", intrinsic)
    try:
        template = yaml.load(path.read_text(encoding="utf-8"), Loader=Loader)  # a SafeLoader subclass
    except (OSError, yaml.YAMLError) as exc:
        raise RehearsalError(f"cannot read {path}: {one_line(exc)}") from None
    if not isinstance(template, dict) or not isinstance(template.get("Resources"), dict):
        raise RehearsalError(f"{path} has no Resources")
    return template


NO_VALUE = object()  # !Ref AWS::NoValue: the property is left out


@dataclass
class FunctionSpec:
    """What the template says about one function, resolved."""

    logical_id: str
    name: str
    handler: str
    env: dict[str, str]
    timeout_s: float
    memory_mb: int
    alias: str | None
    retries: int
    max_event_age_s: float
    on_failure_arn: str | None
    routes: list[str]
    queues: list[tuple[str, int, bool]]  # (queue logical id, batch size, ReportBatchItemFailures)

    @property
    def arn(self) -> str:
        return f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{self.name}"

    @property
    def invoked_arn(self) -> str:
        """What API Gateway and the event sources invoke: the alias when the template publishes one."""
        return f"{self.arn}:{self.alias}" if self.alias else self.arn


class Stack:
    """The template's resources created on moto on first reference, and its intrinsics resolved."""

    def __init__(self, template: dict[str, Any], parameters: dict[str, str]) -> None:
        import boto3

        self.template = template
        self.resources: dict[str, Any] = template["Resources"]
        self.params = self._parameters(parameters)
        self.physical: dict[str, dict[str, str]] = {}  # logical id -> Ref and attributes
        self.s3, self.sqs, self.secretsmanager = (boto3.client(s) for s in ("s3", "sqs", "secretsmanager"))
        self._suffix = uuid.uuid4().hex[:8]

    def _parameters(self, given: dict[str, str]) -> dict[str, Any]:
        declared: dict[str, Any] = self.template.get("Parameters", {})
        unknown = sorted(set(given) - set(declared))
        if unknown:
            raise RehearsalError(f"template.yaml has no parameter {', '.join(unknown)}")
        values: dict[str, Any] = {}
        for name, spec in declared.items():
            value = str(given.get(name, spec.get("Default", "")))
            if name not in given and "Default" not in spec:
                raise RehearsalError(f"template parameter {name} has no default and the rehearsal sets none")
            if spec.get("AllowedValues") and value not in [str(v) for v in spec["AllowedValues"]]:
                raise RehearsalError(f"parameter {name}={value!r} is not one of {spec['AllowedValues']}")
            if spec.get("AllowedPattern") and not re.fullmatch(spec["AllowedPattern"], value):
                raise RehearsalError(f"parameter {name}={value!r} does not match {spec['AllowedPattern']}")
            values[name] = value.split(",") if spec.get("Type") == "CommaDelimitedList" else value
        return values

    # --- intrinsics ---------------------------------------------------------------------------

    def resolve(self, value: Any) -> Any:
        if isinstance(value, dict) and len(value) == 1:
            (key, arg), = value.items()
            if key == "Ref" or key == "Condition" or key.startswith("Fn::"):
                return self._intrinsic(key, arg)
        if isinstance(value, dict):
            resolved = {k: self.resolve(v) for k, v in value.items()}
            return {k: v for k, v in resolved.items() if v is not NO_VALUE}
        if isinstance(value, list):
            return [v for v in (self.resolve(item) for item in value) if v is not NO_VALUE]
        return value

    def _intrinsic(self, key: str, arg: Any) -> Any:
        if key == "Ref":
            return self.ref(str(arg))
        if key == "Fn::GetAtt":
            return self.attr(str(arg[0]), str(arg[1]))
        if key == "Fn::Sub":
            return self.sub(arg)
        if key == "Fn::If":
            return self.resolve(arg[1] if self.condition(str(arg[0])) else arg[2])
        if key == "Condition":
            return self.condition(str(arg))
        if key == "Fn::Equals":
            return str(self.resolve(arg[0])) == str(self.resolve(arg[1]))
        if key == "Fn::Not":
            return not self.resolve(arg[0])
        if key == "Fn::And":
            return all(self.resolve(a) for a in arg)
        if key == "Fn::Or":
            return any(self.resolve(a) for a in arg)
        if key == "Fn::Join":
            return str(arg[0]).join(str(v) for v in self.resolve(arg[1]))
        if key == "Fn::Split":
            return str(self.resolve(arg[1])).split(str(arg[0]))
        if key == "Fn::Select":
            return self.resolve(arg[1])[int(self.resolve(arg[0]))]
        raise RehearsalError(f"the rehearsal cannot resolve {key} (template.yaml uses it where the rehearsal reads)")

    def condition(self, name: str) -> bool:
        conditions = self.template.get("Conditions", {})
        if name not in conditions:
            raise RehearsalError(f"template.yaml has no condition {name}")
        return bool(self.resolve(conditions[name]))

    def ref(self, name: str) -> Any:
        pseudo = {
            "AWS::StackName": STACK, "AWS::Region": REGION, "AWS::AccountId": ACCOUNT, "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackId": f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/{STACK}/{self._suffix}-0000-0000",
        }
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in pseudo:
            return pseudo[name]
        if name in self.params:
            return self.params[name]
        return self.create(name)["Ref"]

    def attr(self, logical_id: str, attribute: str) -> str:
        made = self.create(logical_id)
        if attribute not in made:
            raise RehearsalError(f"the rehearsal has no {logical_id}.{attribute}")
        return made[attribute]

    def sub(self, arg: Any) -> str:
        text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], self.resolve(arg[1]))

        def one(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in variables:
                return str(variables[name])
            if "." in name and not name.startswith("AWS::"):
                return self.attr(*name.split(".", 1))
            return str(self.ref(name))

        return re.sub(r"\$\{([^}]+)\}", one, str(text))

    # --- resources ----------------------------------------------------------------------------

    def create(self, logical_id: str) -> dict[str, str]:
        """The resource's Ref and attributes, creating it on moto the first time it is named."""
        if logical_id in self.physical:
            return self.physical[logical_id]
        resource = self.resources.get(logical_id)
        if resource is None:
            raise RehearsalError(f"template.yaml names {logical_id}, which it does not define")
        makers: dict[str, Callable[[str, dict[str, Any]], dict[str, str]]] = {
            "AWS::S3::Bucket": self._bucket,
            "AWS::SQS::Queue": self._queue,
            "AWS::SecretsManager::Secret": self._secret,
            "AWS::Serverless::Function": self._function,
        }
        maker = makers.get(resource["Type"])
        if maker is None:
            raise RehearsalError(f"the rehearsal cannot stand in for {resource['Type']} {logical_id}")
        self.physical[logical_id] = maker(logical_id, resource.get("Properties", {}))
        return self.physical[logical_id]

    def _bucket(self, logical_id: str, props: dict[str, Any]) -> dict[str, str]:
        name = f"{STACK}-{logical_id.lower()}-{self._suffix}"
        self.s3.create_bucket(Bucket=name)
        versioning = self.resolve(props.get("VersioningConfiguration", {}))
        if versioning.get("Status") == "Enabled":
            self.s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        return {"Ref": name, "Arn": f"arn:aws:s3:::{name}"}

    _QUEUE_ATTRIBUTES = ("FifoQueue", "ContentBasedDeduplication", "VisibilityTimeout", "MessageRetentionPeriod",
                         "ReceiveMessageWaitTimeSeconds", "DelaySeconds", "MaximumMessageSize",
                         "SqsManagedSseEnabled", "RedrivePolicy")

    def _queue(self, logical_id: str, props: dict[str, Any]) -> dict[str, str]:
        props = self.resolve(props)
        attributes: dict[str, str] = {}
        for name in self._QUEUE_ATTRIBUTES:
            if name in props:
                value = props[name]
                attributes[name] = (json.dumps(value) if isinstance(value, dict)
                                    else str(value).lower() if isinstance(value, bool) else str(value))
        fifo = attributes.get("FifoQueue") == "true"
        name = props.get("QueueName") or f"{STACK}-{logical_id}" + (".fifo" if fifo else "")
        url = self.sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        arn = f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}"
        return {"Ref": url, "Arn": arn, "QueueName": name, "QueueUrl": url}

    def _secret(self, logical_id: str, props: dict[str, Any]) -> dict[str, str]:
        props = self.resolve(props)
        if "SecretString" not in props:
            raise RehearsalError(f"secret {logical_id} has no SecretString the rehearsal could store")
        name = props.get("Name") or f"{STACK}-{logical_id}-{self._suffix}"
        arn = self.secretsmanager.create_secret(Name=name, SecretString=props["SecretString"])["ARN"]
        return {"Ref": arn, "Id": arn}

    def _function(self, logical_id: str, props: dict[str, Any]) -> dict[str, str]:
        name = str(self.resolve(props.get("FunctionName", f"{STACK}-{logical_id}")))
        return {"Ref": name, "Arn": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}"}

    # --- functions ----------------------------------------------------------------------------

    def function(self, logical_id: str) -> FunctionSpec:
        """The function as deployed: handler, environment (globals + its own), limits, event sources."""
        props = self.resources[logical_id]["Properties"]
        glob = self.template.get("Globals", {}).get("Function", {})
        raw_env = _raw_env(self, self.resources[logical_id])
        env = {k: _env_text(v) for k, v in ((k, self.resolve(v)) for k, v in raw_env.items()) if v is not NO_VALUE}
        invoke = props.get("EventInvokeConfig", {})
        on_failure = invoke.get("DestinationConfig", {}).get("OnFailure", {}).get("Destination")
        routes, queues = [], []
        for event in props.get("Events", {}).values():
            if event["Type"] == "HttpApi":
                routes.append(f"{str(event['Properties']['Method']).upper()} {event['Properties']['Path']}")
            elif event["Type"] == "SQS":
                queue_ref = event["Properties"]["Queue"]
                queue_id = queue_ref["Fn::GetAtt"][0] if "Fn::GetAtt" in queue_ref else str(queue_ref)
                reports = "ReportBatchItemFailures" in event["Properties"].get("FunctionResponseTypes", [])
                queues.append((queue_id, int(self.resolve(event["Properties"].get("BatchSize", 10))), reports))
        return FunctionSpec(
            logical_id=logical_id,
            name=self.create(logical_id)["Ref"],
            handler=str(props["ImageConfig"]["Command"][0]),
            env=env,
            timeout_s=float(self.resolve(props.get("Timeout", glob.get("Timeout", 3)))),
            memory_mb=int(self.resolve(props.get("MemorySize", glob.get("MemorySize", 128)))),
            alias=props.get("AutoPublishAlias"),
            retries=int(self.resolve(invoke.get("MaximumRetryAttempts", LAMBDA_DEFAULT_RETRIES))),
            max_event_age_s=float(self.resolve(invoke.get("MaximumEventAgeInSeconds", LAMBDA_DEFAULT_EVENT_AGE_S))),
            on_failure_arn=str(self.resolve(on_failure)) if on_failure else None,
            routes=routes,
            queues=queues,
        )

    def queue_url(self, arn: str) -> str:
        for made in self.physical.values():
            if made.get("Arn") == arn and "QueueUrl" in made:
                return made["QueueUrl"]
        raise RehearsalError(f"no queue {arn} in the rehearsal")


def _env_text(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def _references(value: Any) -> set[str]:
    """Logical ids a raw template value points at with Ref or GetAtt."""
    if isinstance(value, dict):
        if "Ref" in value:
            return {str(value["Ref"])}
        if "Fn::GetAtt" in value:
            return {str(value["Fn::GetAtt"][0])}
        return set().union(*(_references(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(_references(v) for v in value)) if value else set()
    return set()


def mounted_specs(stack: Stack) -> tuple[dict[str, FunctionSpec], dict[str, tuple[FunctionSpec, int, bool]]]:
    """The HTTP API's functions, and the functions fed by queues those write to (by queue id). Only
    these are resolved: the rest of the template (ingestion, alarms, the GPU side) is not stood up."""
    deployed = {lid: res for lid, res in stack.resources.items() if res["Type"] == "AWS::Serverless::Function"
                and ("Condition" not in res or stack.condition(str(res["Condition"])))}

    def events(res: dict[str, Any], kind: str) -> list[dict[str, Any]]:
        return [e["Properties"] for e in res["Properties"].get("Events", {}).values() if e["Type"] == kind]

    front = {lid for lid, res in deployed.items() if events(res, "HttpApi")}
    written = set().union(*(_references(_raw_env(stack, deployed[lid])) for lid in front))
    fed = {lid for lid, res in deployed.items()
           if any(_references(e["Queue"]) & written for e in events(res, "SQS"))}
    specs = {lid: stack.function(lid) for lid in sorted(front | fed)}
    consumers = {q: (specs[lid], batch, reports) for lid in fed for q, batch, reports in specs[lid].queues if q in written}
    return specs, consumers


def _raw_env(stack: Stack, resource: dict[str, Any]) -> dict[str, Any]:
    """Globals' environment variables and the function's own, unresolved."""
    glob = stack.template.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {})
    return {**glob, **resource["Properties"].get("Environment", {}).get("Variables", {})}
