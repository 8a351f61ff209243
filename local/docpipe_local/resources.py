"""Create the resources of a `template.Stack` in moto, through the normal AWS APIs.

Works against an in-process `mock_aws` (tests) and against the local stack's moto
server alike: only boto3 calls, so what exists is what the APIs report.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import boto3

from docpipe_local.template import Stack

SKIPPED_TYPES = {
    # Not needed to run locally, and said so: the layer's docpipe package is installed
    # in the process that runs the handlers; policies are not enforced by moto.
    "AWS::Lambda::LayerVersion", "AWS::SQS::QueuePolicy",
    # The bucket policy denies non-TLS access; moto evaluates it, and the local
    # endpoint is plain HTTP on loopback, so applying it would refuse every request.
    "AWS::S3::BucketPolicy",
}


def zip_dir(path: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for file in sorted(path.rglob("*")):
            if file.is_file() and "__pycache__" not in file.parts:
                zf.write(file, file.relative_to(path).as_posix())
    return buf.getvalue()


def create_stack(stack: Stack, session: boto3.session.Session | None = None,
                 endpoint_url: str | None = None) -> dict[str, str]:
    """Create every resource; returns logical id -> physical name."""
    session = session or boto3.session.Session(region_name=stack.region)

    def client(name):
        return session.client(name, region_name=stack.region, endpoint_url=endpoint_url)

    created: dict[str, str] = {}
    iam, s3, ddb = client("iam"), client("s3"), client("dynamodb")

    for lid in stack.of_type("AWS::IAM::Role"):
        p = stack.properties(lid)
        name = stack.physical_name(lid)
        iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(p["AssumeRolePolicyDocument"]))
        for pol in p.get("Policies", []):
            iam.put_role_policy(RoleName=name, PolicyName=pol["PolicyName"],
                                # SAM's policy templates omit Version; IAM then assumes 2008-10-17.
                                PolicyDocument=json.dumps({"Version": "2012-10-17", **pol["PolicyDocument"]}))
        created[lid] = name

    for lid in stack.of_type("AWS::KMS::Key"):
        p = stack.properties(lid)
        created[lid] = client("kms").create_key(Description=p.get("Description", lid))["KeyMetadata"]["KeyId"]

    for lid in stack.of_type("AWS::S3::Bucket"):
        p = stack.properties(lid)
        name = stack.physical_name(lid)
        s3.create_bucket(Bucket=name)
        if p.get("VersioningConfiguration"):
            s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={
                "Status": p["VersioningConfiguration"]["Status"]})
        if p.get("BucketEncryption"):
            s3.put_bucket_encryption(Bucket=name, ServerSideEncryptionConfiguration={"Rules": [
                {"ApplyServerSideEncryptionByDefault": r["ServerSideEncryptionByDefault"],
                 "BucketKeyEnabled": bool(r.get("BucketKeyEnabled"))}
                for r in p["BucketEncryption"]["ServerSideEncryptionConfiguration"]]})
        if p.get("PublicAccessBlockConfiguration"):
            s3.put_public_access_block(Bucket=name, PublicAccessBlockConfiguration=p["PublicAccessBlockConfiguration"])
        if p.get("LifecycleConfiguration"):
            s3.put_bucket_lifecycle_configuration(Bucket=name, LifecycleConfiguration=_lifecycle(p["LifecycleConfiguration"]))
        if p.get("NotificationConfiguration", {}).get("EventBridgeConfiguration", {}).get("EventBridgeEnabled"):
            s3.put_bucket_notification_configuration(
                Bucket=name, NotificationConfiguration={"EventBridgeConfiguration": {}})
        created[lid] = name

    for lid in stack.of_type("AWS::DynamoDB::Table"):
        p = stack.properties(lid)
        name = stack.physical_name(lid)
        kwargs = {k: p[k] for k in ("AttributeDefinitions", "KeySchema", "BillingMode",
                                    "GlobalSecondaryIndexes", "LocalSecondaryIndexes") if k in p}
        if p.get("SSESpecification"):
            kwargs["SSESpecification"] = {"Enabled": bool(p["SSESpecification"].get("SSEEnabled"))}
        ddb.create_table(TableName=name, **kwargs)
        ttl = p.get("TimeToLiveSpecification")
        if ttl and ttl.get("Enabled"):
            ddb.update_time_to_live(TableName=name, TimeToLiveSpecification={
                "AttributeName": ttl["AttributeName"], "Enabled": True})
        if p.get("PointInTimeRecoverySpecification", {}).get("PointInTimeRecoveryEnabled"):
            ddb.update_continuous_backups(TableName=name, PointInTimeRecoverySpecification={
                "PointInTimeRecoveryEnabled": True})
        created[lid] = name

    for lid in stack.of_type("AWS::SNS::Topic"):
        p = stack.properties(lid)
        attrs = {"DisplayName": p.get("DisplayName", "")}
        if p.get("KmsMasterKeyId"):
            attrs["KmsMasterKeyId"] = str(p["KmsMasterKeyId"])
        client("sns").create_topic(Name=stack.physical_name(lid), Attributes=attrs)
        created[lid] = stack.physical_name(lid)

    # Dead-letter targets first: a RedrivePolicy names an existing queue.
    for lid in sorted(stack.of_type("AWS::SQS::Queue"), key=lambda q: "RedrivePolicy" in stack.properties(q)):
        p = stack.properties(lid)
        attrs = {k: json.dumps(p[k]) if isinstance(p[k], dict) else str(p[k]).lower() if isinstance(p[k], bool) else str(p[k])
                 for k in ("VisibilityTimeout", "ReceiveMessageWaitTimeSeconds", "MessageRetentionPeriod",
                           "SqsManagedSseEnabled", "RedrivePolicy", "DelaySeconds") if k in p}
        client("sqs").create_queue(QueueName=stack.physical_name(lid), Attributes=attrs)
        created[lid] = stack.physical_name(lid)

    for lid in stack.of_type("AWS::Logs::LogGroup"):
        p = stack.properties(lid)
        logs = client("logs")
        logs.create_log_group(logGroupName=stack.physical_name(lid))
        if p.get("RetentionInDays"):
            logs.put_retention_policy(logGroupName=stack.physical_name(lid),
                                      retentionInDays=int(p["RetentionInDays"]))
        created[lid] = stack.physical_name(lid)

    lam = client("lambda")
    for lid in stack.of_type("AWS::Lambda::Function"):
        p = stack.properties(lid)
        name = stack.physical_name(lid)
        lam.create_function(
            FunctionName=name, Runtime=p["Runtime"], Role=p["Role"], Handler=p["Handler"],
            Code={"ZipFile": zip_dir(stack.code_dirs[lid])}, Timeout=int(p.get("Timeout", 3)),
            MemorySize=int(p.get("MemorySize", 128)), Description=p.get("Description", ""),
            Environment={"Variables": {k: str(v) for k, v in p.get("Environment", {}).get("Variables", {}).items()}},
            TracingConfig={"Mode": p.get("TracingConfig", {}).get("Mode", "PassThrough")},
        )
        created[lid] = name

    sfn = client("stepfunctions")
    for lid in stack.of_type("AWS::StepFunctions::StateMachine"):
        p = stack.properties(lid)
        kwargs = {}
        if p.get("TracingConfiguration"):
            kwargs["tracingConfiguration"] = {"enabled": bool(p["TracingConfiguration"].get("Enabled"))}
        sfn.create_state_machine(name=stack.physical_name(lid), definition=json.dumps(stack.definitions[lid]),
                                 roleArn=p["RoleArn"], type=p.get("StateMachineType", "STANDARD"), **kwargs)
        created[lid] = stack.physical_name(lid)

    events = client("events")
    for lid in stack.of_type("AWS::Events::Rule"):
        p = stack.properties(lid)
        name = stack.physical_name(lid)
        events.put_rule(Name=name, EventPattern=json.dumps(p["EventPattern"]), State=p.get("State", "ENABLED"))
        events.put_targets(Rule=name, Targets=[{k: v for k, v in t.items() if k in (
            "Id", "Arn", "RoleArn", "DeadLetterConfig", "RetryPolicy", "Input", "InputPath")} for t in p.get("Targets", [])])
        created[lid] = name

    return created


def _lifecycle(cfg: dict) -> dict:
    """CloudFormation's lifecycle spelling -> the S3 API's."""
    rules = []
    for r in cfg["Rules"]:
        rule = {"ID": r.get("Id", ""), "Status": r["Status"], "Filter": {"Prefix": r.get("Prefix", "")}}
        if r.get("Transitions"):
            rule["Transitions"] = [{"Days": t["TransitionInDays"], "StorageClass": t["StorageClass"]}
                                   for t in r["Transitions"]]
        if r.get("ExpirationInDays"):
            rule["Expiration"] = {"Days": r["ExpirationInDays"]}
        if r.get("NoncurrentVersionExpiration"):
            rule["NoncurrentVersionExpiration"] = {"NoncurrentDays": r["NoncurrentVersionExpiration"]["NoncurrentDays"]}
        if r.get("AbortIncompleteMultipartUpload"):
            rule["AbortIncompleteMultipartUpload"] = r["AbortIncompleteMultipartUpload"]
        rules.append(rule)
    return {"Rules": rules}
