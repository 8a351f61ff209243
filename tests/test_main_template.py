"""template.yaml after the real SAM transform: the properties issue-level requirements name."""

from __future__ import annotations

import json
import os

import pytest
from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

from docpipe_local.template import TEMPLATE, _PolicyLoader

RAY_SECRET = "arn:aws:secretsmanager:us-east-1:123456789012:secret:docpipe/ray-AbCdEf"
# Actions AWS only grants on "*" (no resource-level permissions), with why we need them.
STAR_OK = {
    "xray:PutTraceSegments", "xray:PutTelemetryRecords",  # Tracing: Active
    "xray:GetSamplingRules", "xray:GetSamplingTargets", "xray:GetSamplingStatisticSummaries",
    "logs:CreateLogDelivery", "logs:GetLogDelivery", "logs:UpdateLogDelivery", "logs:DeleteLogDelivery",
    "logs:ListLogDeliveries", "logs:PutResourcePolicy", "logs:DescribeResourcePolicies",
    "logs:DescribeLogGroups",  # Step Functions log delivery
    "kms:*",  # key policy of our own key: Resource "*" means "this key"
    "kms:Decrypt", "kms:GenerateDataKey*",  # same, for CloudWatch alarms publishing to the topic
    "ec2:CreateNetworkInterface", "ec2:DescribeNetworkInterfaces", "ec2:DeleteNetworkInterface",
    "ec2:AssignPrivateIpAddresses", "ec2:UnassignPrivateIpAddresses",  # Lambda in a VPC
}


@pytest.fixture(scope="module", params=["true", "false"], ids=["existing-cluster", "own-cluster"])
def cfn(request):
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    sam = yaml_parse(TEMPLATE.read_text())
    for res in sam["Resources"].values():  # as `sam package` would, for the transform
        props = res.get("Properties", {})
        for key in ("CodeUri", "ContentUri", "DefinitionUri"):
            if isinstance(props.get(key), str):
                props[key] = f"s3://bucket/{key}.zip"
        if res["Type"] == "AWS::Serverless::Application":
            props["Location"] = "https://bucket.s3.amazonaws.com/ray-cluster.yaml"
    return transform(sam, {"RayTokenSecretArn": RAY_SECRET, "UseExistingRayCluster": request.param},
                     _PolicyLoader())["Resources"]


def of_type(cfn, t):
    return {k: v for k, v in cfn.items() if v["Type"] == t}


def test_bucket_is_private_versioned_encrypted_and_tls_only(cfn):
    [bucket] = of_type(cfn, "AWS::S3::Bucket").values()
    p = bucket["Properties"]
    assert p["VersioningConfiguration"]["Status"] == "Enabled"
    assert all(p["PublicAccessBlockConfiguration"].values())
    assert p["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert p["NotificationConfiguration"]["EventBridgeConfiguration"]["EventBridgeEnabled"] is True
    policies = [v for v in of_type(cfn, "AWS::S3::BucketPolicy").values()
                if v["Properties"]["Bucket"] == {"Ref": "DocumentBucket"}]
    [stmt] = [s for s in policies[0]["Properties"]["PolicyDocument"]["Statement"] if s["Effect"] == "Deny"]
    assert stmt["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_lifecycle_rules_per_prefix(cfn):
    rules = {r.get("Prefix"): r for r in cfn["DocumentBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]}

    def shape(prefix):
        r = rules[prefix]
        return [(t["StorageClass"], t["TransitionInDays"]) for t in r.get("Transitions", [])], r.get("ExpirationInDays")

    assert shape("input/") == ([("INTELLIGENT_TIERING", 30), ("GLACIER", 90)], 365)
    for prefix in ("extracted/", "chunks/", "enriched/"):  # S3 refuses STANDARD_IA before day 30
        assert shape(prefix) == ([("STANDARD_IA", 30)], 90)
    assert shape("embeddings/") == ([("INTELLIGENT_TIERING", 7)], None)
    assert shape("errors/") == ([], 180)
    assert shape("backfill-results/") == ([], 30)
    # Job files hold task tokens: their old versions go after a day, not 30.
    assert rules["jobs/"]["NoncurrentVersionExpiration"] == {"NoncurrentDays": 1}


def test_tables_keys_indexes_ttl_and_recovery(cfn):
    raw = of_type(cfn, "AWS::DynamoDB::Table")
    tables = {k: v["Properties"] for k, v in raw.items()}
    keys = {n: [(k["AttributeName"], k["KeyType"]) for k in p["KeySchema"]] for n, p in tables.items()}
    assert keys == {
        "ControlTable": [("document_id", "HASH"), ("processing_version", "RANGE")],
        "AuditTable": [("document_id", "HASH"), ("timestamp", "RANGE")],
        "MetricsTable": [("date", "HASH"), ("metric_type", "RANGE")],
    }
    for table in raw.values():  # kept after `sam delete`, so named by CloudFormation: a
        assert table["DeletionPolicy"] == "Retain"  # fixed name would block the next deploy
        assert "TableName" not in table["Properties"]
    control = tables["ControlTable"]
    assert {g["IndexName"]: [k["AttributeName"] for k in g["KeySchema"]] for g in control["GlobalSecondaryIndexes"]} == {
        "status-index": ["status", "created_at"], "stage-status-index": ["current_stage", "updated_at"]}
    assert control["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    for p in tables.values():
        assert p["BillingMode"] == "PAY_PER_REQUEST"
        assert p["TimeToLiveSpecification"] == {"AttributeName": "ttl", "Enabled": True}


def test_upload_rule_targets_the_state_machine_with_dlq_and_retries(cfn):
    [rule] = [v for v in of_type(cfn, "AWS::Events::Rule").values()
              if "aws.s3" in json.dumps(v["Properties"].get("EventPattern", {}))]
    pattern = rule["Properties"]["EventPattern"]
    assert pattern["detail-type"] == ["Object Created"]
    assert pattern["detail"]["object"]["key"] == [{"prefix": "input/"}]
    [target] = rule["Properties"]["Targets"]
    assert target["Arn"] == {"Ref": "IngestDocumentStateMachine"}
    assert "DeadLetterConfig" in target and target["RetryPolicy"]["MaximumRetryAttempts"] > 0


def test_state_machines_log_and_trace(cfn):
    machines = of_type(cfn, "AWS::StepFunctions::StateMachine")
    assert set(machines) == {"IngestDocumentStateMachine", "BackfillStateMachine"}
    for sm in machines.values():
        assert sm["Properties"]["TracingConfiguration"]["Enabled"] is True
        assert sm["Properties"]["LoggingConfiguration"]["Destinations"]
    sm = machines["IngestDocumentStateMachine"]
    assert set(sm["Properties"]["DefinitionSubstitutions"]) >= {
        "RegisterDocumentFunctionArn", "SubmitRayJobFunctionArn", "FinalizeDocumentFunctionArn",
        "RecordFailureFunctionArn", "AlertsTopicArn"}


def test_alerts_topic_is_kms_encrypted(cfn):
    [topic] = of_type(cfn, "AWS::SNS::Topic").values()
    assert topic["Properties"]["KmsMasterKeyId"]


def test_iam_statements_name_their_resources(cfn):
    for name, role in of_type(cfn, "AWS::IAM::Role").items():
        for policy in role["Properties"].get("Policies", []):
            for stmt in policy["PolicyDocument"]["Statement"]:
                actions = stmt["Action"] if isinstance(stmt["Action"], list) else [stmt["Action"]]
                resources = stmt.get("Resource", [])
                resources = resources if isinstance(resources, list) else [resources]
                if "*" in resources:
                    assert set(actions) <= STAR_OK, f"{name}/{policy['PolicyName']}: {actions} on *"


def test_submitter_joins_the_ray_cluster_vpc_only_when_the_stack_creates_it(cfn):
    fn = cfn["SubmitRayJobFunction"]["Properties"]
    text = json.dumps(fn.get("VpcConfig", {}))
    if "RayCluster" in cfn:
        assert "SubmitterSecurityGroupId" in text and "PrivateSubnetIds" in text
        env = json.dumps(fn["Environment"]["Variables"]["RAY_DASHBOARD_URL"])
        assert "RayCluster.Outputs.RayDashboardUrl" in env or "RayDashboardUrl" in env


def test_secrets_are_referenced_not_inlined(cfn):
    for name, fn in of_type(cfn, "AWS::Lambda::Function").items():
        env = fn["Properties"].get("Environment", {}).get("Variables", {})
        for key in env:
            assert not key.endswith(("_API_KEY", "_TOKEN", "_PASSWORD")), f"{name}: {key} holds a secret"


def test_conventions_users_bring_from_the_console_setup():
    """$100 a day is where the usual console setup of this pipeline alarms; a secret ARN
    the nested stack would reject is refused by the parent, before anything is created."""
    params = yaml_parse(TEMPLATE.read_text())["Parameters"]
    assert params["DailyCostAlarmUsd"]["Default"] == 100
    import re
    pattern = re.compile(params["RayTokenSecretArn"]["AllowedPattern"])
    assert pattern.match("arn:aws:secretsmanager:us-east-1:123456789012:secret:docpipe/ray-token-AbC123")
    assert not pattern.match("arn:aws:secretsmanager:us-east-1:123456789012:secret:docpipe/ray-token")


def test_ocr_backend_reaches_the_functions_and_the_ray_cluster(cfn):
    """OcrBackend (default local: no per-page bill unless chosen) is every function's
    OCR_BACKEND, which SubmitRayJob and PublishBacklog forward to the Ray jobs, and with the
    stack's own cluster a parameter of the nested stack (the workers' grant and endpoint).
    The price the parameter states is the one the jobs' cost figures use."""
    import re

    from ray_jobs.settings import StageSettings

    param = yaml_parse(TEMPLATE.read_text())["Parameters"]["OcrBackend"]
    assert (param["Default"], param["AllowedValues"]) == ("local", ["none", "local", "textract"])
    for name in ("SubmitRayJobFunction", "PublishBacklogFunction"):
        assert cfn[name]["Properties"]["Environment"]["Variables"]["OCR_BACKEND"] == {"Ref": "OcrBackend"}
    if "RayCluster" in cfn:
        assert cfn["RayCluster"]["Properties"]["Parameters"]["OcrBackend"] == {"Ref": "OcrBackend"}
    (per_thousand,) = re.findall(r"\$([\d.]+) per 1,000 pages", param["Description"])
    assert float(per_thousand) / 1000 == StageSettings().textract_price_per_page
