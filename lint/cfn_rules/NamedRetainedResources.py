"""A retained resource with a fixed physical name blocks the stack from being created again.

After `delete-stack`, DeletionPolicy Retain (or RetainExceptOnCreate, once created) leaves
the resource in the account under its name; the next create of the same stack then fails
with "<name> already exists" and rolls back. cfn-lint checks neither side of this pair.
Fix: drop the fixed name (CloudFormation generates a unique one; pass it on with Ref) or
use DeletionPolicy Delete/Snapshot.
"""

from __future__ import annotations

from cfnlint.rules import CloudFormationLintRule, RuleMatch
from cfnlint.schema import PROVIDER_SCHEMA_MANAGER

# Name properties that are not the schema's primary identifier.
EXTRA_NAME_PROPERTIES = {
    "AWS::SQS::Queue": ["QueueName"], "AWS::SNS::Topic": ["TopicName"],
    "AWS::SecretsManager::Secret": ["Name"], "AWS::Lambda::Function": ["FunctionName"],
    "AWS::StepFunctions::StateMachine": ["StateMachineName"],
}
RETAIN = {"Retain", "RetainExceptOnCreate"}


def name_properties(region: str, resource_type: str) -> list[str]:
    """Writable top-level properties that name the resource: its primary identifier when the
    template may set it (TableName, BucketName, LogGroupName, RepositoryName, RoleName...)."""
    names = list(EXTRA_NAME_PROPERTIES.get(resource_type, []))
    try:
        schema = PROVIDER_SCHEMA_MANAGER.get_resource_schema(region, resource_type).schema
    except Exception:
        return names
    read_only = set(schema.get("readOnlyProperties", []))
    for ptr in schema.get("primaryIdentifier", []):
        parts = ptr.split("/")
        if len(parts) == 3 and ptr not in read_only and parts[2] in schema.get("properties", {}):
            names.append(parts[2])
    return sorted(set(names))


class NamedRetainedResources(CloudFormationLintRule):
    id = "E9102"
    shortdesc = "Fixed physical name with DeletionPolicy Retain"
    description = "A retained resource with a fixed name makes the next create of the same stack fail"
    source_url = "https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/aws-attribute-deletionpolicy.html"
    tags = ["resources", "deletionpolicy", "docpipe"]

    def match(self, cfn):
        matches = []
        region = cfn.regions[0] if cfn.regions else "us-east-1"
        for name, res in cfn.get_resources().items():
            policy = res.get("DeletionPolicy")
            if not isinstance(policy, str) or policy not in RETAIN or not isinstance(res.get("Type"), str):
                continue
            props = res.get("Properties") or {}
            for prop in name_properties(region, res["Type"]):
                if prop in props:
                    matches.append(RuleMatch(
                        ["Resources", name, "Properties", prop],
                        f"{name} has the fixed name {prop} and DeletionPolicy {policy}: after the stack is "
                        f"deleted the retained resource keeps the name and creating the stack again fails; "
                        f"remove {prop} or use DeletionPolicy Delete/Snapshot"))
        return matches
