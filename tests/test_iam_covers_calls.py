"""Every AWS call each component makes is allowed by the role that makes it in AWS, and
every grant is used or listed with its reason.

moto enforces no IAM, so a missing grant shows only in AWS (a 403 at the first upload).
tests/aws_world.py runs the real code on one moto stack (uploads through the state
machines, stage services, the paths an upload does not take) and records every botocore
call with its component and outcome. Each call is checked here against the role that runs
it: the Lambda roles of template.yaml (after the real SAM transform), the Ray head's and
workers' task roles of infra/ray-cluster.yaml (with the parameters the parent passes), and
the state machines' roles for their service integrations (from the execution histories).

Rules AWS applies that a plain action check misses:
- S3 answers GetObject/HeadObject (and CopyObject's source) on a missing key with 404 only
  if the caller may also s3:ListBucket the bucket, else 403 (S3 API reference, HeadObject
  "Permissions"). The ListBucket is evaluated for that request, which carries no s3:prefix,
  so a grant conditioned on s3:prefix does not count.
- DeleteObjects is authorized per key: s3:DeleteObject (s3:DeleteObjectVersion with a
  version id) on each key it names (S3 API reference, DeleteObjects "Permissions").
- Conditions are evaluated (StringEquals/StringLike/ArnLike/...; a key the request does
  not carry fails the condition unless ...IfExists), as IAM does.
- Publishing to an SNS topic encrypted with a KMS key needs kms:GenerateDataKey and
  kms:Decrypt on that key (SNS developer guide, SSE).
- .sync:2 StartExecution also needs DescribeExecution/StopExecution on the executions and
  events:PutTargets/PutRule/DescribeRule on the managed rule (Step Functions developer
  guide, "IAM policies for ... Step Functions"); a distributed Map starts its children as
  executions of its own state machine and reads/writes S3 for ItemReader/ResultWriter.
Managed policies (logs, X-Ray) are not checked: the code makes no such botocore call.
"""

from __future__ import annotations

import fnmatch
import json

import pytest
from aws_world import HEAD, TREE, WORKER, world  # noqa: F401 - the shared session fixture
from cfn_yaml import load as load_cfn

LAMBDAS = ["RegisterDocument", "SubmitRayJob", "FinalizeDocument", "RecordFailure", "PublishBacklog"]
STATE_MACHINES = ["IngestDocumentStateMachine", "BackfillStateMachine"]

# Operation -> IAM action, where the names differ (Service Authorization Reference).
ACTION_OF = {
    ("s3", "HeadObject"): "s3:GetObject", ("s3", "ListObjectsV2"): "s3:ListBucket",
    ("s3", "DeleteObjects"): "s3:DeleteObject",
    ("sqs", "ChangeMessageVisibilityBatch"): "sqs:ChangeMessageVisibility",
    ("sqs", "DeleteMessageBatch"): "sqs:DeleteMessage", ("sqs", "SendMessageBatch"): "sqs:SendMessage",
}
PREFIX = {"stepfunctions": "states"}
MISSING = {"404", "NoSuchKey", "NotFound"}

# Calls each component must have made: the proof that the scenarios reached the code paths
# this file vouches for (an empty recording would pass every check).
EXPECTED = {
    "RegisterDocument": {("s3", "HeadObject", "404"), ("s3", "HeadObject", "ok"), ("s3", "GetObject", "ok")},
    "RecordFailure": {("s3", "HeadObject", "404"), ("s3", "CopyObject", "NoSuchKey"), ("s3", "PutObject", "ok")},
    "FinalizeDocument": {("dynamodb", "UpdateItem", "ok")},
    "SubmitRayJob": {("sqs", "SendMessage", "ok"), ("s3", "PutObject", "ok"), ("s3", "DeleteObject", "ok"),
                     ("secretsmanager", "GetSecretValue", "ok")},
    "PublishBacklog": {("sqs", "GetQueueAttributes", "ok"), ("dynamodb", "Query", "ok"),
                       ("secretsmanager", "GetSecretValue", "ok")},
    # The answers' cleanup is batched (DeleteMessageBatch, DeleteObjects); the dropped document
    # and the re-delivery whose job file is gone are cleaned up one by one (DeleteMessage, DeleteObject).
    HEAD: {("sqs", "ReceiveMessage", "ok"), ("sqs", "DeleteMessage", "ok"), ("sqs", "DeleteMessageBatch", "ok"),
           ("sqs", "ChangeMessageVisibilityBatch", "ok"),
           ("stepfunctions", "SendTaskHeartbeat", "InvalidToken"), ("stepfunctions", "SendTaskSuccess", "ok"),
           ("s3", "GetObject", "NoSuchKey"), ("s3", "DeleteObject", "ok"), ("s3", "DeleteObjects", "ok")},
    WORKER: {("s3", "GetObject", "ok"), ("s3", "PutObject", "ok"), ("s3", "DeleteObject", "ok"),
             ("s3", "GetObject", "NoSuchKey"), ("s3", "HeadObject", "404"),
             ("stepfunctions", "SendTaskHeartbeat", "ok"), ("stepfunctions", "SendTaskSuccess", "ok"),
             ("stepfunctions", "SendTaskFailure", "InvalidToken"),
             # OcrBackend=textract (the world's): a two-page scan as one asynchronous job,
             # a one-page scan page by page.
             ("textract", "StartDocumentTextDetection", "ok"), ("textract", "GetDocumentTextDetection", "ok"),
             ("textract", "DetectDocumentText", "ok")},
}

# Granted but used by no recorded call, with the reason each stays (fnmatch patterns over
# "<action> on <resource by logical id>"). A grant that is neither used nor listed fails:
# drop it, or list it with its reason; a pattern that matches nothing fails too.
SAM_TABLES = "SAM's DynamoDB policy templates grant a fixed action set on the table and its indexes"
LOG_DELIVERY = ("Step Functions' own log delivery to the log group (create/update of the state machine, "
                "not a task); AWS documents these actions with Resource *")
EMBED_TWIN = "the embed stage service does what the extract one does; the scenario's edge cases run on extract"
UNUSED_OK = {
    "RegisterDocument": {"dynamodb:* on ControlTable*": SAM_TABLES, "dynamodb:* on AuditTable*": SAM_TABLES},
    "SubmitRayJob": {"dynamodb:* on ControlTable*": SAM_TABLES, "dynamodb:* on AuditTable*": SAM_TABLES},
    "FinalizeDocument": {"dynamodb:* on ControlTable*": SAM_TABLES, "dynamodb:* on AuditTable*": SAM_TABLES,
                         "dynamodb:* on MetricsTable*": SAM_TABLES},
    "RecordFailure": {"dynamodb:* on ControlTable*": SAM_TABLES, "dynamodb:* on AuditTable*": SAM_TABLES,
                      "dynamodb:* on MetricsTable*": SAM_TABLES},
    "PublishBacklog": {"dynamodb:* on ControlTable*": SAM_TABLES, "dynamodb:* on MetricsTable*": SAM_TABLES},
    HEAD: {"ssmmessages:* on *": "ECS Exec (the SSM agent in the task, not docpipe code)",
           "kms:Decrypt on *ClusterKey": "ECS Exec session encryption",
           "logs:* on */docpipe/ray/exec*": "ECS Exec session audit log",
           "logs:DescribeLogGroups on *": "ECS Exec finds its audit log group",
           "sqs:ChangeMessageVisibility on EmbedQueue": EMBED_TWIN,
           "sqs:GetQueueAttributes on EmbedQueue": EMBED_TWIN},
    WORKER: {"elasticfilesystem:Client* on *VectorFileSystem": "the LanceDB volume, mounted by ECS",
             "ecs:UpdateTaskProtection on *": "ray_jobs/node_guard.py (scale-in protection through the ECS "
                                              "agent endpoint): not run on moto",
             "s3:GetObject on DocumentBucket/input/*": "extract reads by key only a registration without an S3 "
                                                       "version id (made before versions were recorded)"},
    "IngestDocumentStateMachine": {"logs:* on *": LOG_DELIVERY},
    "BackfillStateMachine": {
        "logs:* on *": LOG_DELIVERY,
        "s3:GetObject on DocumentBucket/backfill-results/*": "ResultWriter: multipart upload of a large manifest",
        "s3:ListMultipartUploadParts on DocumentBucket/backfill-results/*": "ResultWriter: multipart upload",
        "s3:AbortMultipartUpload on DocumentBucket/backfill-results/*": "ResultWriter: multipart upload"},
}


# ---------------------------------------------------------------- policies
def _statements(policy_docs) -> list[dict]:
    out = []
    for doc in policy_docs:
        stmts = doc["Statement"]
        out += stmts if isinstance(stmts, list) else [stmts]
    return out


def role_statements(stack, role_id: str) -> list[dict]:
    role = stack.properties(role_id)
    docs = [p["PolicyDocument"] for p in role.get("Policies", [])]
    for lid in stack.of_type("AWS::IAM::Policy"):  # separate policies attached to the role
        props = stack.properties(lid)
        if stack.physical_name(role_id) in props.get("Roles", []):
            docs.append(props["PolicyDocument"])
    return _statements(docs)


def nested_stack(stack, logical_id: str = "RayCluster"):
    """A nested stack of `stack` as it is deployed: infra/ray-cluster.yaml (RayCluster of
    template.yaml), or one that ray-cluster.yaml nests in turn (its TemplateURL beside it),
    with the parameters its parent passes (resolved against that parent), the nested
    defaults for the rest, its conditions."""
    from docpipe_local.template import Stack

    class Nested(Stack):
        def get_att(self, name, attr):  # attributes of resources the checks never read
            try:
                return super().get_att(name, attr)
            except Exception:
                return f"{name}.{attr}"

    props = stack.resources[logical_id]["Properties"]
    # Relative to the parent's file (the SAM transform turns Location into TemplateURL).
    path = getattr(stack, "template_dir", TREE) / (props.get("Location") or props["TemplateURL"])
    cfn = load_cfn(path)
    passed = stack.properties(logical_id)["Parameters"]
    params = {k: str(v["Default"]) for k, v in cfn["Parameters"].items() if "Default" in v}
    params.update({k: str(v) for k, v in passed.items()})
    nested = Nested(f"{stack.name}-{logical_id}", stack.region, stack.account, params, cfn["Resources"], {}, {})
    nested.template_dir = path.parent
    for name, expr in cfn.get("Conditions", {}).items():
        nested.conditions[name] = bool(nested.resolve(expr))
    return nested


def statements_of(world, name: str) -> list[dict]:
    stack = world.stack
    if name in LAMBDAS:
        return role_statements(stack, f"{name}FunctionRole")
    if name in STATE_MACHINES:
        return role_statements(stack, f"{name}Role")
    return role_statements(nested_stack(stack), {HEAD: "HeadTaskRole", WORKER: "WorkerTaskRole"}[name])


def _list(v):
    return v if isinstance(v, list) else [v]


def condition_holds(condition: dict | None, context: dict) -> bool:
    for op, tests in (condition or {}).items():
        if_exists = op.endswith("IfExists")
        base = op.removesuffix("IfExists")
        for key, wanted in tests.items():
            if key not in context:
                if if_exists:
                    continue
                return False
            have, wanted = str(context[key]), [str(w) for w in _list(wanted)]
            if base in ("StringEquals", "ArnEquals"):
                ok = have in wanted
            elif base in ("StringLike", "ArnLike"):
                ok = any(fnmatch.fnmatchcase(have, w) for w in wanted)
            elif base == "Bool":
                ok = have.lower() in [w.lower() for w in wanted]
            else:
                raise AssertionError(f"condition operator {op} is not evaluated by this test: add it")
            if not ok:
                return False
    return True


def matching(statements, act: str, res: str, context: dict) -> list[dict]:
    return [s for s in statements if s.get("Effect") == "Allow"
            and any(fnmatch.fnmatchcase(act, a) for a in _list(s["Action"]))
            and any(r == "*" or fnmatch.fnmatchcase(res, r) for r in _list(s.get("Resource", [])))
            and condition_holds(s.get("Condition"), context)]


# ---------------------------------------------------------------- what a call needs
def needs(stack, call) -> list[tuple[str, str, dict]]:
    """(action, resource, request context) the call needs in AWS."""
    svc, op, p = call.service, call.operation, call.params
    region, account = stack.region, stack.account
    act = ACTION_OF.get((svc, op), f"{PREFIX.get(svc, svc)}:{op}")
    if svc == "s3":
        bucket = f"arn:aws:s3:::{p['Bucket']}"
        if op == "CopyObject":
            src = p["CopySource"]
            read = "s3:GetObjectVersion" if src.get("VersionId") else "s3:GetObject"  # a version by its id
            out = [(read, f"arn:aws:s3:::{src['Bucket']}/{src['Key']}", {}),
                   ("s3:PutObject", f"{bucket}/{p['Key']}", {})]
            if call.outcome in MISSING:
                out.append(("s3:ListBucket", f"arn:aws:s3:::{src['Bucket']}", {}))
            return out
        if op == "DeleteObjects":  # authorized per key (S3 API reference, DeleteObjects "Permissions")
            return [("s3:DeleteObjectVersion" if o.get("VersionId") else act, f"{bucket}/{o['Key']}", {})
                    for o in p["Delete"]["Objects"]]
        if "Key" in p:
            if op in ("GetObject", "HeadObject") and p.get("VersionId"):
                act = "s3:GetObjectVersion"  # reading a version by its id (S3 API, GetObject "Permissions")
            out = [(act, f"{bucket}/{p['Key']}", {})]
            if op in ("GetObject", "HeadObject") and call.outcome in MISSING:
                out.append(("s3:ListBucket", bucket, {}))  # else AWS answers 403
            return out
        return [(act, bucket, {"s3:prefix": p["Prefix"]} if "Prefix" in p else {})]
    if svc == "sqs":
        return [(act, f"arn:aws:sqs:{region}:{account}:{p['QueueUrl'].rsplit('/', 1)[-1]}", {})]
    if svc == "dynamodb" and op == "TransactWriteItems":  # authorized per item: PutItem, UpdateItem, ...
        return [(f"dynamodb:{kind}Item", f"arn:aws:dynamodb:{region}:{account}:table/{item[kind]['TableName']}", {})
                for item in p["TransactItems"] for kind in item]
    if svc == "dynamodb":
        table = f"arn:aws:dynamodb:{region}:{account}:table/{p['TableName']}"
        return [(act, f"{table}/index/{p['IndexName']}" if p.get("IndexName") else table, {})]
    if svc == "secretsmanager":
        return [(act, p["SecretId"], {})]
    if svc == "cloudwatch":
        return [(act, "*", {"cloudwatch:namespace": p.get("Namespace", "")})]
    if svc == "textract" and "DocumentLocation" in p:
        # Textract reads the object with the caller's permissions (Textract API, S3Object:
        # "the user must have permission to access the S3 object"); a Version is read by id.
        o = p["DocumentLocation"]["S3Object"]
        read = "s3:GetObjectVersion" if o.get("Version") else "s3:GetObject"
        return [(act, "*", {}), (read, f"arn:aws:s3:::{o['Bucket']}/{o['Name']}", {})]
    # Task tokens and Textract: no resource-level permissions.
    return [(act, "*", {})]


def integration_needs(world, sm: str) -> list[tuple[str, str, dict]]:
    """What the state machine's role needs for the service integrations its executions
    scheduled (TaskScheduled / LambdaFunctionScheduled events), mapped per the Step
    Functions developer guide's IAM pages."""
    stack = world.stack
    out = []
    for events in world.histories[sm]:
        for e in events:
            if e["type"] == "LambdaFunctionScheduled":
                out.append(("lambda:InvokeFunction", e["lambdaFunctionScheduledEventDetails"]["resource"], {}))
            if e["type"] != "TaskScheduled":
                continue
            d = e["taskScheduledEventDetails"]
            params = json.loads(d.get("parameters") or "{}")
            out += _integration(stack, d["resourceType"], d["resource"], params)
    if sm == "BackfillStateMachine":
        out += _distributed_map_needs(world, sm)
    return out


def _integration(stack, rtype: str, resource: str, params: dict) -> list[tuple[str, str, dict]]:
    region, account = stack.region, stack.account
    base = resource.split(".")[0]
    if rtype == "lambda" and base == "invoke":
        return [("lambda:InvokeFunction", params["FunctionName"], {})]
    if rtype == "sns" and base == "publish":
        topic = params["TopicArn"]
        out = [("sns:Publish", topic, {})]
        key = _topic_key(stack, topic)
        if key:
            out += [("kms:GenerateDataKey", key, {}), ("kms:Decrypt", key, {})]
        return out
    if rtype == "dynamodb":
        action = "dynamodb:" + base[0].upper() + base[1:]
        return [(action, f"arn:aws:dynamodb:{region}:{account}:table/{params['TableName']}", {})]
    if rtype == "states" and base == "startExecution":
        sm_arn = params["StateMachineArn"]
        out = [("states:StartExecution", sm_arn, {})]
        if resource.endswith((".sync", ".sync:2")):
            executions = sm_arn.replace(":stateMachine:", ":execution:") + ":*"
            rule = f"arn:aws:events:{region}:{account}:rule/StepFunctionsGetEventsForStepFunctionsExecutionRule"
            out += [("states:DescribeExecution", executions, {}), ("states:StopExecution", executions, {}),
                    ("events:PutTargets", rule, {}), ("events:PutRule", rule, {}), ("events:DescribeRule", rule, {})]
        return out
    raise AssertionError(f"service integration {rtype}:{resource} has no IAM mapping in this test: add it")


def _topic_key(stack, topic_arn: str) -> str:
    for lid in stack.of_type("AWS::SNS::Topic"):
        if stack.arn(lid) == topic_arn:
            key = stack.properties(lid).get("KmsMasterKeyId")
            if key:
                return key if str(key).startswith("arn:") else \
                    f"arn:aws:kms:{stack.region}:{stack.account}:key/{key}"
    return ""


def _distributed_map_needs(world, sm: str) -> list[tuple[str, str, dict]]:
    """moto runs a distributed Map but keeps its children's histories to itself: what the
    Map needs comes from its definition, once the history shows the map run happened."""
    stack = world.stack
    assert any(e["type"] == "MapRunStarted" for h in world.histories[sm] for e in h)
    sm_arn = stack.arn(sm)
    out = [("states:StartExecution", sm_arn, {}),
           ("states:DescribeExecution", sm_arn.replace(":stateMachine:", ":execution:") + "/x:y", {}),
           ("states:StopExecution", sm_arn.replace(":stateMachine:", ":execution:") + "/x:y", {})]
    executed = {json.loads(e["executionStartedEventDetails"]["input"]).get("source")
                for h in world.histories["IngestDocumentStateMachine"] for e in h if e["type"] == "ExecutionStarted"}
    for state in stack.definitions[sm]["States"].values():
        if state.get("Type") != "Map":
            continue
        reader = state.get("ItemReader", {})
        if reader:
            rp = reader["Parameters"]
            assert reader["Resource"].endswith("s3:listObjectsV2"), reader
            out.append(("s3:ListBucket", f"arn:aws:s3:::{rp['Bucket']}", {"s3:prefix": "input/old/"}))
        writer = state.get("ResultWriter", {})
        if writer:
            wp = writer["Parameters"]
            out.append(("s3:PutObject", f"arn:aws:s3:::{wp['Bucket']}/{wp.get('Prefix', '')}x/manifest.json", {}))
        for child in state["ItemProcessor"]["States"].values():
            if child.get("Type") == "Task":
                rtype, _, res = child["Resource"].removeprefix("arn:aws:states:::").partition(":")
                params = {k.removesuffix(".$"): v for k, v in child.get("Parameters", {}).items()}
                out += _integration(stack, rtype, res, params)
    # The children really started IngestDocument executions (source docpipe.backfill).
    assert "docpipe.backfill" in executed, executed
    return out


# ---------------------------------------------------------------- labels
def label(stack, resource: str) -> str:
    """A granted or called resource with this stack's ARNs shown as logical ids."""
    names = []
    for lid in stack.resources:
        try:
            names.append((stack.arn(lid), lid))
        except Exception:
            continue
    for arn, lid in sorted(names, key=lambda x: -len(x[0])):
        if resource == arn or resource.startswith((arn + "/", arn + ":")):
            return lid + resource[len(arn):]
    return resource


def components() -> list[str]:
    return [*LAMBDAS, HEAD, WORKER]


# ---------------------------------------------------------------- tests
def denied(world, name: str, required) -> list[str]:
    stmts = statements_of(world, name)
    return sorted({f"{act} on {label(world.stack, res)}" + (f" {ctx}" if ctx else "")
                   for act, res, ctx in required if not matching(stmts, act, res, ctx)})


def required_by(world, name: str):
    if name in STATE_MACHINES:
        return integration_needs(world, name)
    return [n for c in world.of(name) for n in needs(world.stack, c)]


@pytest.mark.parametrize("name", [*LAMBDAS, HEAD, WORKER])
def test_component_made_the_calls_this_file_vouches_for(world, name):
    made = {(c.service, c.operation, c.outcome) for c in world.of(name)}
    assert EXPECTED[name] <= made, sorted(EXPECTED[name] - made)


def test_workers_use_the_embedding_cache_and_answer_failures(world):
    """The calls the worker role was cut to (the DynamoDB and CloudWatch grants were never
    called): the S3 embedding cache both ways, a failure answered, job files removed."""
    made = {(c.service, c.operation, c.params.get("Key", "").split("/")[0]) for c in world.of(WORKER)}
    assert {("s3", "GetObject", "embedding-cache"), ("s3", "PutObject", "embedding-cache"),
            ("stepfunctions", "SendTaskFailure", ""), ("s3", "DeleteObject", "jobs")} <= made, sorted(made)


@pytest.mark.parametrize("name", [*LAMBDAS, HEAD, WORKER, *STATE_MACHINES])
def test_every_call_is_granted(world, name):
    required = required_by(world, name)
    assert required
    assert denied(world, name, required) == []


@pytest.mark.parametrize("name", [*LAMBDAS, HEAD, WORKER, *STATE_MACHINES])
def test_granted_actions_never_used_are_listed(world, name):
    """Expand every statement into action x resource; what no recorded call used must be in
    UNUSED_OK with its reason, and UNUSED_OK lists nothing that is used or not granted."""
    stack = world.stack
    required = required_by(world, name)
    unused = set()
    for s in statements_of(world, name):
        if s.get("Effect") != "Allow":
            continue
        for a in _list(s["Action"]):
            for r in _list(s.get("Resource", [])):
                used = any(fnmatch.fnmatchcase(act, a) and (r == "*" or fnmatch.fnmatchcase(res, r))
                           and condition_holds(s.get("Condition"), ctx) for act, res, ctx in required)
                if not used:
                    unused.add(f"{a} on {label(stack, r)}")
    print(f"\n{name}: granted, never used:\n  " + "\n  ".join(sorted(unused)))
    allowed = UNUSED_OK.get(name, {})
    unlisted = sorted(g for g in unused if not any(fnmatch.fnmatchcase(g, p) for p in allowed))
    assert unlisted == [], "unused grant: remove it, or list it in UNUSED_OK with the reason"
    stale = sorted(p for p in allowed if not any(fnmatch.fnmatchcase(g, p) for g in unused))
    assert stale == [], "UNUSED_OK lists what is used or no longer granted: drop it"
