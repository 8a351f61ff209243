"""The custom cfn-lint rules of lint/cfn_rules (run by `make lint`) catch what they claim.

They encode S3 and CloudFormation rules that cfn-lint, sam validate --lint, checkov and moto
all pass but AWS rejects at deploy time (issue #13). Rules are static and template-wide,
so they live in cfn-lint and run on every template; these tests pin their behaviour on
small templates and run them on the repository's templates, so `make test` catches it too.
"""

from __future__ import annotations

import textwrap

import pytest
from cfnlint.api import ManualArgs, lint
from conftest import REPO

RULES = str(REPO / "lint" / "cfn_rules")


def findings(template: str, rule: str) -> list[str]:
    matches = lint(textwrap.dedent(template), config=ManualArgs(append_rules=[RULES], regions=["us-east-1"]))
    return [m.message for m in matches if m.rule.id == rule]


def bucket(rules_yaml: str) -> str:
    return f"""
    AWSTemplateFormatVersion: "2010-09-09"
    Resources:
      B:
        Type: AWS::S3::Bucket
        DeletionPolicy: Delete
        Properties:
          LifecycleConfiguration:
            Rules:
{textwrap.indent(textwrap.dedent(rules_yaml), ' ' * 14)}
    """


@pytest.mark.parametrize("rules, expected", [
    # IA after fewer than 30 days: S3 rejects the configuration.
    ("""- Status: Enabled
  Transitions: [{StorageClass: STANDARD_IA, TransitionInDays: 7}]""", ["S3 requires at least 30"]),
    ("""- Status: Enabled
  NoncurrentVersionTransitions: [{StorageClass: ONEZONE_IA, TransitionInDays: 29}]""", ["S3 requires at least 30"]),
    # 30 days in IA before the next class.
    ("""- Status: Enabled
  Transitions: [{StorageClass: STANDARD_IA, TransitionInDays: 30}, {StorageClass: GLACIER, TransitionInDays: 45}]""",
     ["objects must stay 30 days in STANDARD_IA"]),
    # Up the waterfall.
    ("""- Status: Enabled
  Transitions: [{StorageClass: GLACIER, TransitionInDays: 10}, {StorageClass: GLACIER_IR, TransitionInDays: 100}]""",
     ["from GLACIER to GLACIER_IR is not supported"]),
    # Expiration not after the last transition.
    ("""- Status: Enabled
  Transitions: [{StorageClass: GLACIER, TransitionInDays: 90}]
  ExpirationInDays: 90""", ["must be greater than the last transition day 90"]),
    # Accepted by S3: 30 days, Glacier classes from day 0, intelligent tiering early.
    ("""- Status: Enabled
  Transitions: [{StorageClass: STANDARD_IA, TransitionInDays: 30}, {StorageClass: GLACIER, TransitionInDays: 60}]
  ExpirationInDays: 365
- Status: Enabled
  Transitions: [{StorageClass: INTELLIGENT_TIERING, TransitionInDays: 0}, {StorageClass: DEEP_ARCHIVE, TransitionInDays: 1}]
- Status: Enabled
  NoncurrentVersionTransitions: [{StorageClass: STANDARD_IA, TransitionInDays: 30}]
  NoncurrentVersionExpiration: {NoncurrentDays: 90}""", []),
])
def test_lifecycle_rule(rules, expected):
    got = findings(bucket(rules), "E9101")
    assert len(got) == len(expected), got
    for msg, want in zip(got, expected, strict=True):
        assert want in msg


NAMED = """
AWSTemplateFormatVersion: "2010-09-09"
Resources:
  T:
    Type: AWS::DynamoDB::Table
    DeletionPolicy: {policy}
    UpdateReplacePolicy: Retain
    Properties:
      {name}
      BillingMode: PAY_PER_REQUEST
      AttributeDefinitions: [{{AttributeName: id, AttributeType: S}}]
      KeySchema: [{{AttributeName: id, KeyType: HASH}}]
  Q:
    Type: AWS::SQS::Queue
    DeletionPolicy: {policy}
    UpdateReplacePolicy: Retain
    Properties:
      {queue}
"""


@pytest.mark.parametrize("policy, named, count", [
    ("Retain", True, 2), ("RetainExceptOnCreate", True, 2), ("Delete", True, 0), ("Retain", False, 0)])
def test_named_retained_rule(policy, named, count):
    tpl = NAMED.format(policy=policy, name='TableName: !Sub "${AWS::StackName}-t"' if named else "",
                       queue="QueueName: q" if named else "VisibilityTimeout: 30")
    assert len(findings(tpl, "E9102")) == count


@pytest.mark.parametrize("path", ["template.yaml", "infra/ray-cluster.yaml", "infra/ray-network.yaml",
                                  "infra/ray-observability.yaml"])
def test_repository_templates_pass_the_rules(path):
    """The same check `make lint` runs, so the suite catches a regression too."""
    matches = lint((REPO / path).read_text(), config=ManualArgs(append_rules=[RULES], regions=["us-east-1"]))
    assert [f"{m.rule.id} {m.message}" for m in matches if m.rule.id.startswith("E91")] == []
