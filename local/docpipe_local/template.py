"""template.yaml -> the concrete resources of one local stack.

The SAM transform is the real one (aws-sam-translator, offline); local code paths are
swapped for placeholders before it and mapped back after. Intrinsic functions are then
resolved against the parameters, pseudo parameters and the physical names chosen here,
so the local stack is created from what template.yaml declares and from nothing else.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "template.yaml"
ACCOUNT = "123456789012"
REGION = "us-east-1"
CODE_BUCKET = "docpipe-local-code"


class TemplateError(Exception):
    pass


@dataclass
class Stack:
    name: str
    region: str
    account: str
    parameters: dict[str, str]
    resources: dict[str, dict]  # logical id -> CFN resource (intrinsics resolved lazily)
    conditions: dict[str, bool]
    code_dirs: dict[str, Path]  # function logical id -> its CodeUri directory
    definitions: dict[str, dict] = field(default_factory=dict)  # state machine id -> ASL
    outputs: dict[str, object] = field(default_factory=dict)

    # ---- physical names and ARNs ----------------------------------------------------
    def physical_name(self, logical_id: str) -> str:
        res = self.resources[logical_id]
        props = res.get("Properties", {})
        t = res["Type"]
        explicit = {
            "AWS::DynamoDB::Table": "TableName", "AWS::S3::Bucket": "BucketName",
            "AWS::SNS::Topic": "TopicName", "AWS::SQS::Queue": "QueueName",
            "AWS::Lambda::Function": "FunctionName", "AWS::StepFunctions::StateMachine": "StateMachineName",
            "AWS::Logs::LogGroup": "LogGroupName", "AWS::IAM::Role": "RoleName",
            "AWS::Events::Rule": "Name",
        }.get(t)
        if explicit and explicit in props:
            return str(self.resolve(props[explicit]))
        base = f"{self.name}-{logical_id}"
        if t == "AWS::S3::Bucket":
            return f"{base}-{self.account}-{self.region}".lower()[:63]
        return base[:64]

    def arn(self, logical_id: str) -> str:
        t = self.resources[logical_id]["Type"]
        n = self.physical_name(logical_id)
        p = "arn:aws"
        return {
            "AWS::S3::Bucket": f"{p}:s3:::{n}",
            "AWS::DynamoDB::Table": f"{p}:dynamodb:{self.region}:{self.account}:table/{n}",
            "AWS::SNS::Topic": f"{p}:sns:{self.region}:{self.account}:{n}",
            "AWS::SQS::Queue": f"{p}:sqs:{self.region}:{self.account}:{n}",
            "AWS::Lambda::Function": f"{p}:lambda:{self.region}:{self.account}:function:{n}",
            "AWS::StepFunctions::StateMachine": f"{p}:states:{self.region}:{self.account}:stateMachine:{n}",
            "AWS::Logs::LogGroup": f"{p}:logs:{self.region}:{self.account}:log-group:{n}:*",
            "AWS::IAM::Role": f"{p}:iam::{self.account}:role/{n}",
            "AWS::Events::Rule": f"{p}:events:{self.region}:{self.account}:rule/{n}",
            "AWS::KMS::Key": f"{p}:kms:{self.region}:{self.account}:key/{n}",
        }.get(t, f"{p}:local:{self.region}:{self.account}:{n}")

    def ref(self, name: str):
        pseudo = {"AWS::Region": self.region, "AWS::AccountId": self.account,
                  "AWS::StackName": self.name, "AWS::Partition": "aws",
                  "AWS::URLSuffix": "amazonaws.com", "AWS::NoValue": None,
                  "AWS::StackId": f"arn:aws:cloudformation:{self.region}:{self.account}:stack/{self.name}/local"}
        if name in pseudo:
            return pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        if name not in self.resources:
            raise TemplateError(f"Ref to unknown name {name!r}")
        t = self.resources[name]["Type"]
        if t in ("AWS::SNS::Topic", "AWS::SQS::Queue", "AWS::StepFunctions::StateMachine"):
            return self.arn(name) if t != "AWS::SQS::Queue" else \
                f"https://sqs.{self.region}.amazonaws.com/{self.account}/{self.physical_name(name)}"
        return self.physical_name(name)

    def get_att(self, name: str, attr: str):
        if attr == "Arn":
            return self.arn(name)
        if attr == "TopicName":
            return self.physical_name(name)
        if attr == "Name":
            return self.physical_name(name)
        if attr == "QueueName":
            return self.physical_name(name)
        raise TemplateError(f"GetAtt {name}.{attr} is not supported locally")

    # ---- intrinsic functions --------------------------------------------------------
    def resolve(self, value):
        if isinstance(value, list):
            return [v for v in (self.resolve(x) for x in value) if v is not _NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            (key, arg), = value.items()
            if key == "Ref":
                v = self.ref(arg)
                return _NO_VALUE if v is None else v
            if key == "Fn::GetAtt":
                name, attr = arg if isinstance(arg, list) else arg.split(".", 1)
                return self.get_att(name, attr)
            if key == "Fn::Sub":
                return self._sub(arg)
            if key == "Fn::Join":
                sep, items = arg
                return sep.join(str(x) for x in self.resolve(items))
            if key == "Fn::If":
                cond, yes, no = arg
                return self.resolve(yes if self.conditions[cond] else no)
            if key == "Fn::Select":
                idx, items = arg
                return self.resolve(items)[int(self.resolve(idx))]
            if key == "Fn::Split":
                sep, s = arg
                return str(self.resolve(s)).split(sep)
            if key == "Fn::GetAZs":
                return [f"{self.region}a", f"{self.region}b"]
            if key == "Fn::Equals":
                a, b = self.resolve(arg)
                return str(a) == str(b)
            if key == "Fn::Not":
                return not self.resolve(arg[0])
            if key == "Fn::And":
                return all(self.resolve(arg))
            if key == "Fn::Or":
                return any(self.resolve(arg))
            if key == "Condition":
                return self.conditions[arg]
        return {k: v for k, v in ((k, self.resolve(v)) for k, v in value.items()) if v is not _NO_VALUE}

    def _sub(self, arg):
        text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])
        out, i = [], 0
        while i < len(text):
            start = text.find("${", i)
            if start < 0:
                out.append(text[i:])
                break
            out.append(text[i:start])
            end = text.index("}", start)
            name = text[start + 2:end]
            if name.startswith("!"):
                out.append("${" + name[1:] + "}")
            elif name in variables:
                out.append(str(self.resolve(variables[name])))
            elif "." in name:
                res, attr = name.split(".", 1)
                out.append(str(self.get_att(res, attr)))
            else:
                out.append(str(self.ref(name)))
            i = end + 1
        return "".join(out)

    def of_type(self, cfn_type: str) -> list[str]:
        return [k for k, v in self.resources.items() if v["Type"] == cfn_type
                and self.conditions.get(v.get("Condition", ""), True)]

    def properties(self, logical_id: str) -> dict:
        return self.resolve(self.resources[logical_id].get("Properties", {}))


class _NoValue:
    pass


_NO_VALUE = _NoValue()


class _PolicyLoader:
    """Managed-policy names the transform asks for, answered offline."""

    def load(self):
        names = ["AWSXrayWriteOnlyAccess", "AWSLambdaBasicExecutionRole",
                 "AWSLambdaVPCAccessExecutionRole", "AWSXRayDaemonWriteAccess"]
        return {n: f"arn:aws:iam::aws:policy/{n}" for n in names}


def parameter_defaults(template: dict) -> dict[str, str]:
    return {k: str(v["Default"]) for k, v in template.get("Parameters", {}).items() if "Default" in v}


def load(stack_name: str = "docpipe", parameters: dict[str, str] | None = None,
         template_path: Path = TEMPLATE, region: str = REGION, account: str = ACCOUNT) -> Stack:
    from samtranslator.translator.transform import transform
    from samtranslator.yaml_helper import yaml_parse

    raw = yaml_parse(Path(template_path).read_text())
    base = Path(template_path).parent
    params = {**parameter_defaults(raw), **(parameters or {})}
    missing = [k for k in raw.get("Parameters", {}) if k not in params]
    if missing:
        raise TemplateError(f"parameters without a value: {', '.join(missing)}")
    sam = copy.deepcopy(raw)
    code_dirs: dict[str, Path] = {}
    for logical_id, res in sam["Resources"].items():
        props = res.get("Properties", {})
        for prop in ("CodeUri", "ContentUri"):
            if isinstance(props.get(prop), str) and not props[prop].startswith("s3://"):
                code_dirs[logical_id] = (base / props[prop]).resolve()
                props[prop] = f"s3://{CODE_BUCKET}/{logical_id}.zip"
        if isinstance(props.get("DefinitionUri"), str):
            props["Definition"] = json.loads((base / props.pop("DefinitionUri")).read_text())
    os.environ.setdefault("AWS_DEFAULT_REGION", region)
    cfn = transform(sam, dict(params), _PolicyLoader())
    stack = Stack(stack_name, region, account, params, cfn["Resources"], {}, code_dirs)
    for name, expr in cfn.get("Conditions", {}).items():
        stack.conditions[name] = bool(stack.resolve(expr))
    for logical_id in stack.of_type("AWS::StepFunctions::StateMachine"):
        props = stack.properties(logical_id)
        text = props["DefinitionString"]
        # moto does not apply DefinitionSubstitutions: do what CloudFormation does.
        for key, value in (props.get("DefinitionSubstitutions") or {}).items():
            text = text.replace("${" + key + "}", str(value))
        stack.definitions[logical_id] = json.loads(text)
    stack.outputs = {k: stack.resolve(v["Value"]) for k, v in cfn.get("Outputs", {}).items()
                     if stack.conditions.get(v.get("Condition", ""), True)}
    return stack
