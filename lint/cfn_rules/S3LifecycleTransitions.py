"""S3 lifecycle rules that the S3 API rejects at PutBucketLifecycleConfiguration, so a stack
fails in AWS while cfn-lint's schema (types and enums only) passes it.

Sources (S3 API reference, Transition / NoncurrentVersionTransition; S3 User Guide,
"Constraints and considerations for transitions"):
- STANDARD_IA and ONEZONE_IA need objects stored >= 30 days before the transition, for
  current versions (TransitionInDays) and noncurrent ones (TransitionInDays of a
  NoncurrentVersionTransition). INTELLIGENT_TIERING, GLACIER_IR, GLACIER and DEEP_ARCHIVE
  accept 0 or more.
- Objects must stay >= 30 days in STANDARD_IA / ONEZONE_IA before a later transition
  ("'Days' in the Transition action for StorageClass 'GLACIER' ... must be 30 days more
  than ... StorageClass 'STANDARD_IA'").
- Transitions only go down the waterfall (e.g. nothing leaves GLACIER for GLACIER_IR,
  ONEZONE_IA cannot go to GLACIER_IR), each later class on a later day.
- Expiration must come after the rule's last transition.
Glacier minimum storage durations (90/180 days) are a charge, not a rejection: not checked.
"""

from __future__ import annotations

from cfnlint.rules import CloudFormationLintRule, RuleMatch

IA = {"STANDARD_IA", "ONEZONE_IA"}
# Classes each class may transition to (S3 User Guide, supported lifecycle transitions).
NEXT = {
    "STANDARD": {"STANDARD_IA", "INTELLIGENT_TIERING", "ONEZONE_IA", "GLACIER_IR", "GLACIER", "DEEP_ARCHIVE"},
    "STANDARD_IA": {"INTELLIGENT_TIERING", "ONEZONE_IA", "GLACIER_IR", "GLACIER", "DEEP_ARCHIVE"},
    "INTELLIGENT_TIERING": {"ONEZONE_IA", "GLACIER_IR", "GLACIER", "DEEP_ARCHIVE"},
    "ONEZONE_IA": {"GLACIER", "DEEP_ARCHIVE"},
    "GLACIER_IR": {"GLACIER", "DEEP_ARCHIVE"},
    "GLACIER": {"DEEP_ARCHIVE"},
    "DEEP_ARCHIVE": set(),
}
MIN_DAYS = 30


def _alternatives(value):
    """Concrete values of a property: both branches of an Fn::If, else the value itself."""
    if isinstance(value, dict) and list(value) == ["Fn::If"] and isinstance(value["Fn::If"], list) \
            and len(value["Fn::If"]) == 3:
        for branch in value["Fn::If"][1:]:
            yield from _alternatives(branch)
    else:
        yield value


def _int(value):
    try:
        return int(value) if not isinstance(value, (dict, list, bool)) else None
    except (TypeError, ValueError):
        return None  # a Ref or other intrinsic: unknown until deploy


class S3LifecycleTransitions(CloudFormationLintRule):
    id = "E9101"
    shortdesc = "S3 lifecycle transitions S3 would reject"
    description = ("STANDARD_IA/ONEZONE_IA need >= 30 days (current and noncurrent), 30 days in IA "
                   "before a later class, transitions down the waterfall on later days, expiration after them")
    source_url = "https://docs.aws.amazon.com/AmazonS3/latest/userguide/lifecycle-transition-general-considerations.html"
    tags = ["resources", "s3", "lifecycle", "docpipe"]

    def match(self, cfn):
        matches = []
        for name, res in cfn.get_resources(["AWS::S3::Bucket"]).items():
            for cfg in _alternatives(res.get("Properties", {}).get("LifecycleConfiguration")):
                if not isinstance(cfg, dict):
                    continue
                for i, rule in enumerate(cfg.get("Rules") or []):
                    if not isinstance(rule, dict):
                        continue
                    path = ["Resources", name, "Properties", "LifecycleConfiguration", "Rules", i]
                    for msg, sub in self._check_rule(rule):
                        matches.append(RuleMatch(path + sub, f"{name} rule {rule.get('Id', i)}: {msg}"))
        return matches

    def _check_rule(self, rule):
        current = []
        if isinstance(rule.get("Transitions"), list):
            current += [("Transitions", j, t) for j, t in enumerate(rule["Transitions"])]
        if isinstance(rule.get("Transition"), dict):
            current.append(("Transition", None, rule["Transition"]))
        noncurrent = []
        if isinstance(rule.get("NoncurrentVersionTransitions"), list):
            noncurrent += [("NoncurrentVersionTransitions", j, t)
                           for j, t in enumerate(rule["NoncurrentVersionTransitions"])]
        if isinstance(rule.get("NoncurrentVersionTransition"), dict):
            noncurrent.append(("NoncurrentVersionTransition", None, rule["NoncurrentVersionTransition"]))
        yield from self._chain(current, "TransitionInDays", _int(rule.get("ExpirationInDays")), "ExpirationInDays")
        nce = rule.get("NoncurrentVersionExpiration")
        nce_days = (_int(nce.get("NoncurrentDays")) if isinstance(nce, dict)
                    else _int(rule.get("NoncurrentVersionExpirationInDays")))
        yield from self._chain(noncurrent, "TransitionInDays", nce_days, "NoncurrentVersionExpiration")

    def _chain(self, transitions, days_key, expiration, expiration_key):
        steps = []
        for key, j, t in transitions:
            if not isinstance(t, dict):
                continue
            sub = [key] + ([j] if j is not None else [])
            cls = t.get("StorageClass")
            cls = cls.upper() if isinstance(cls, str) else None  # "Glacier" is accepted for GLACIER
            days = _int(t.get(days_key, t.get("NoncurrentDays")))
            if cls in IA and days is not None and days < MIN_DAYS:
                yield (f"transition to {cls} after {days} days; S3 requires at least {MIN_DAYS}", sub)
            if cls and days is not None:
                steps.append((days, cls, sub))
        steps.sort(key=lambda s: s[0])
        prev_days, prev_cls = 0, "STANDARD"
        for days, cls, sub in steps:
            if (cls not in NEXT.get(prev_cls, set()) and prev_cls != "STANDARD") or \
                    (prev_cls == "STANDARD" and cls not in NEXT["STANDARD"]):
                yield (f"transition from {prev_cls} to {cls} is not supported by S3 lifecycle", sub)
            elif prev_cls != "STANDARD" and days <= prev_days:
                yield (f"transition to {cls} on day {days} does not come after {prev_cls} on day {prev_days}", sub)
            elif prev_cls in IA and days - prev_days < MIN_DAYS:
                yield (f"transition to {cls} on day {days} is only {days - prev_days} days after {prev_cls} "
                       f"(day {prev_days}); objects must stay {MIN_DAYS} days in {prev_cls}", sub)
            prev_days, prev_cls = days, cls
        if expiration is not None and steps and expiration <= steps[-1][0]:
            yield (f"{expiration_key} {expiration} must be greater than the last transition day {steps[-1][0]}",
                   [expiration_key])
