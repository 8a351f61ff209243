"""AWS rules that span both templates or need the code running: cfn-lint sees one template
at a time and no code, so these are tests (issue #13). The single-template rules (S3
lifecycle minimums, fixed names with Retain) are cfn-lint rules in lint/cfn_rules.

1. Parameters passed to a nested stack (template.yaml -> infra/ray-cluster.yaml -> its
   network and observability stacks): whatever the parent accepts, the nested stack
   must accept, else the deploy fails minutes later inside the nested stack. A regex
   inclusion check is undecidable in general for AWS's (Java) regexes with anchors and
   alternations, so counterexamples are searched: values generated from the parent's
   pattern (a seeded walk over the parsed regex, with its repeat bounds and both ends of
   every class), its AllowedValues, Default, and numbers at its bounds, plus values the
   parent cannot refuse when it has no pattern; each one the parent accepts must pass the
   nested parameter's Type, AllowedPattern, AllowedValues, lengths and bounds. Values the
   parent builds from its own resources (Ref/GetAtt) are checked as this stack resolves them.
2. Alarms and dashboard metrics read what the code emits: the handlers' EMF (recorded by
   tests/aws_world.py while the pipeline ran on moto) gives (namespace, metric, dimension
   set); every alarm of every template and every dashboard metric on a namespace the code
   publishes must match one exactly, since CloudWatch matches the full dimension set.
3. Reads a service makes with the caller's permissions: Textract's asynchronous text
   detection reads the upload from the document bucket (template.yaml) as the Ray worker
   role (infra/ray-cluster.yaml) that started it, in the stack's region.
"""

from __future__ import annotations

import json
import random
import re
import re._constants as C
import re._parser as P

import pytest
from aws_world import TREE, world  # noqa: F401 - the shared session fixture
from cfn_yaml import load as load_cfn
from test_iam_covers_calls import nested_stack

AWS_NAMESPACES = ("AWS/", "ECS/ContainerInsights")  # published by AWS services, not by our code


# ---------------------------------------------------------------- 1. parameters
def _sample(pattern: str, rng: random.Random, n: int) -> set[str]:
    """Strings that fully match `pattern` (CloudFormation matches the whole value)."""
    tree = P.parse(pattern)
    out = set()
    for i in range(n * 3):
        mode = ("min", "max", "rand")[i % 3]
        value = _gen(tree, rng, mode)
        if value is not None and re.fullmatch(pattern, value):
            out.add(value)
        if len(out) >= n:
            break
    return out


PRINTABLE = [chr(c) for c in range(32, 127)]


def _class_chars(items) -> list[str]:
    chars, negate = [], False
    for op, av in items:
        if op is C.NEGATE:
            negate = True
        elif op is C.LITERAL:
            chars.append(chr(av))
        elif op is C.RANGE:
            lo, hi = av
            chars += [chr(lo), chr(hi), chr((lo + hi) // 2)]
        elif op is C.CATEGORY:
            chars += {C.CATEGORY_DIGIT: list("0917"), C.CATEGORY_WORD: list("aZ_9"),
                      C.CATEGORY_SPACE: [" "]}.get(av, [])
    if negate:
        return [c for c in PRINTABLE if c not in chars]
    return chars


def _gen(tree, rng, mode) -> str | None:
    out = []
    for op, av in tree:
        if op is C.LITERAL:
            out.append(chr(av))
        elif op is C.NOT_LITERAL:
            out.append(rng.choice([c for c in PRINTABLE if c != chr(av)]))
        elif op is C.ANY:
            out.append(rng.choice(PRINTABLE))
        elif op is C.IN:
            out.append(rng.choice(_class_chars(av) or ["a"]))
        elif op is C.BRANCH:
            part = _gen(rng.choice(av[1]), rng, mode)
            if part is None:
                return None
            out.append(part)
        elif op is C.SUBPATTERN:
            part = _gen(av[-1], rng, mode)
            if part is None:
                return None
            out.append(part)
        elif op in (C.MAX_REPEAT, C.MIN_REPEAT):
            lo, hi, sub = av
            hi = min(hi, lo + 8) if hi is not C.MAXREPEAT else lo + 8
            count = {"min": lo, "max": hi}.get(mode, rng.randint(lo, hi))
            for _ in range(count):
                part = _gen(sub, rng, "rand" if mode == "rand" else mode)
                if part is None:
                    return None
                out.append(part)
        elif op is C.AT:
            continue
        else:
            return None  # lookarounds, backreferences: give up on this walk
    return "".join(out)


def accepts(param: dict, value: str) -> bool:
    """CloudFormation's checks of one parameter value."""
    ptype = param.get("Type", "String")
    values = [value] if ptype != "CommaDelimitedList" else value.split(",")
    for v in values:
        if ptype == "Number":
            try:
                num = float(v)
            except ValueError:
                return False
            if "MinValue" in param and num < float(param["MinValue"]):
                return False
            if "MaxValue" in param and num > float(param["MaxValue"]):
                return False
            if "AllowedValues" in param and num not in [float(x) for x in param["AllowedValues"]]:
                return False
            continue
        if "AllowedValues" in param and v not in [str(x) for x in param["AllowedValues"]]:
            return False
        if "AllowedPattern" in param and not re.fullmatch(param["AllowedPattern"], v):
            return False
        if "MinLength" in param and len(v) < int(param["MinLength"]):
            return False
        if "MaxLength" in param and len(v) > int(param["MaxLength"]):
            return False
    return True


# Values a parameter without a pattern cannot refuse: one of them fails any real pattern.
FREE_TEXT = ["", "x", "not valid", "a/b", "arn:aws:secretsmanager:us-east-1:123456789012:secret:name", "-1", "1.5"]


def candidates(param: dict, rng: random.Random) -> set[str]:
    out = set(FREE_TEXT)
    if "Default" in param:
        out.add(str(param["Default"]))
    if "AllowedValues" in param:
        return {str(v) for v in param["AllowedValues"]}
    if "AllowedPattern" in param:
        out |= _sample(param["AllowedPattern"], rng, 200)
    if param.get("Type") == "Number":
        lo, hi = float(param.get("MinValue", -10 ** 9)), float(param.get("MaxValue", 10 ** 9))
        out |= {str(int(x)) if float(x).is_integer() else str(x) for x in (lo, hi, lo + 1, hi - 1, 0, 1, 10 ** 6)}
    return {v for v in out if accepts(param, v)}


# (parent template, nested stack's logical id in it, nested template)
NESTING = [("template.yaml", "RayCluster", "infra/ray-cluster.yaml"),
           ("infra/ray-cluster.yaml", "Network", "infra/ray-network.yaml"),
           ("infra/ray-cluster.yaml", "Observability", "infra/ray-observability.yaml")]


def parent_and_nested(nesting=NESTING[0]):
    parent_path, lid, nested_path = nesting
    parent = load_cfn(TREE / parent_path)
    nested = load_cfn(TREE / nested_path)
    props = parent["Resources"][lid]["Properties"]
    location = props.get("Location") or f"infra/{props['TemplateURL']}"  # TemplateURL: beside its parent
    assert location == nested_path
    return parent, nested, props["Parameters"]


def nested_stacks(world):
    """(template, the stack as deployed) for template.yaml and each nested stack under it."""
    cluster = nested_stack(world.stack)
    yield "template.yaml", world.stack
    yield "infra/ray-cluster.yaml", cluster
    for _, lid, path in NESTING[1:]:
        yield path, nested_stack(cluster, lid)


def _parent_param(expr, parent) -> str | None:
    """The parent parameter a passed value is, directly or joined (a list parameter)."""
    if isinstance(expr, dict) and "Ref" in expr and expr["Ref"] in parent["Parameters"]:
        return expr["Ref"]
    if isinstance(expr, dict) and "Fn::Join" in expr:
        items = expr["Fn::Join"][1]
        return _parent_param(items, parent)
    return None


@pytest.mark.parametrize("nesting", NESTING, ids=lambda n: n[1])
def test_nested_stack_gets_every_parameter_it_needs_and_no_other(nesting):
    _, nested, passed = parent_and_nested(nesting)
    unknown = sorted(set(passed) - set(nested["Parameters"]))
    missing = sorted(k for k, v in nested["Parameters"].items() if "Default" not in v and k not in passed)
    assert (unknown, missing) == ([], [])


@pytest.mark.parametrize("nesting", NESTING, ids=lambda n: n[1])
def test_parent_parameters_accept_nothing_the_nested_stack_rejects(nesting):
    parent, nested, passed = parent_and_nested(nesting)
    rng = random.Random(13)
    checked, problems = 0, []
    for name, expr in sorted(passed.items()):
        source = _parent_param(expr, parent)
        if source is None:
            continue
        checked += 1
        p, n = parent["Parameters"][source], nested["Parameters"][name]
        bad = sorted(v for v in candidates(p, rng) if not accepts(n, v))
        if bad:
            problems.append(f"{source} -> {name}: parent accepts {bad[:3]!r}, nested rejects them; "
                            f"give the parent the nested constraint ({_constraint(n)})")
    assert checked >= 10, checked  # the walk found the parameters
    assert problems == []


def _constraint(param: dict) -> str:
    return ", ".join(f"{k}: {param[k]}" for k in ("Type", "AllowedPattern", "AllowedValues", "MinValue",
                                                  "MaxValue", "MinLength", "MaxLength") if k in param)


@pytest.mark.parametrize("nesting", NESTING, ids=lambda n: n[1])
def test_values_the_parent_builds_pass_the_nested_constraints(world, nesting):
    """Ref/GetAtt of the parent's own resources, as this stack resolves them (CloudFormation's
    generated names have the same shape: <stack>-<LogicalId>-<suffix>)."""
    parent, nested, passed = parent_and_nested(nesting)
    stack = world.stack if nesting[0] == "template.yaml" else nested_stack(world.stack)
    resolved = stack.properties(nesting[1])["Parameters"]
    bad = {name: resolved[name] for name in passed
           if _parent_param(passed[name], parent) is None and not accepts(nested["Parameters"][name], str(resolved[name]))}
    assert bad == {}


def test_counterexample_search_finds_a_known_gap():
    """The search itself: a partial secret ARN (no 6-character suffix) is found."""
    parent = {"Type": "String", "AllowedPattern": "^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:.+"}
    nested = {"Type": "String", "AllowedPattern": "^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\\d{12}:secret:.+-[A-Za-z0-9]{6}$"}
    assert any(not accepts(nested, v) for v in candidates(parent, random.Random(13)))
    assert all(accepts(nested, v) for v in candidates(nested, random.Random(13)))


# ---------------------------------------------------------------- 2. metrics
def emitted(world) -> set[tuple[str, str, frozenset]]:
    """(namespace, metric, {dimension: value}) of every EMF record the handlers printed."""
    out = set()
    for _, record in world.emf:
        for directive in record["_aws"]["CloudWatchMetrics"]:
            for dims in directive["Dimensions"]:
                for metric in directive["Metrics"]:
                    out.add((directive["Namespace"], metric["Name"],
                             frozenset((d, str(record[d])) for d in dims)))
    return out


def alarms(world) -> list[tuple[str, str, str, frozenset]]:
    """(template, alarm, namespace, metric, dimensions) of every alarm, each template's
    intrinsics resolved as deployed (the nested one with the parameters the parent passes)."""
    out = []
    for where, stack in nested_stacks(world):
        for lid, res in stack.resources.items():
            if res["Type"] != "AWS::CloudWatch::Alarm":
                continue
            props = stack.properties(lid)
            metrics = [props] if "MetricName" in props else \
                [m["MetricStat"]["Metric"] for m in props.get("Metrics", []) if "MetricStat" in m]
            for m in metrics:
                dims = frozenset((d["Name"], str(d["Value"])) for d in m.get("Dimensions", []))
                out.append((f"{where}:{lid}", m["Namespace"], m["MetricName"], dims))
    return out


def dashboard_metrics(world) -> list[tuple[str, str, str, frozenset | tuple]]:
    """Metrics of every dashboard widget: plain entries [ns, name, dim, value, ...] and
    SEARCH('{ns,dim,...} MetricName="X"') expressions (a dimension-name set, no values)."""
    out = []
    for where, stack in nested_stacks(world):
        for lid, res in stack.resources.items():
            if res["Type"] != "AWS::CloudWatch::Dashboard":
                continue
            body = json.loads(stack.properties(lid)["DashboardBody"])
            for w in body["widgets"]:
                prev = None
                for entry in w.get("properties", {}).get("metrics", []):
                    if isinstance(entry[0], dict):
                        expr = entry[0].get("expression", "")
                        for keys, name in re.findall(r"\{([^}]*)\}\s*MetricName=\\?\"(\w+)", expr):
                            ns, *dims = [k.strip() for k in keys.split(",")]
                            out.append((f"{where}:{lid}", ns, name, tuple(sorted(dims))))
                        continue
                    plain = [x for x in entry if not isinstance(x, dict)]
                    # "..." / "." repeat the previous entry's fields (CloudWatch's shorthand)
                    if prev and plain and plain[0] in ("...", "."):
                        plain = prev[:2] + plain[1:] if plain[0] == "." else prev[:len(prev) - len(plain) + 1] + plain[1:]
                    prev = plain
                    ns, name, rest = plain[0], plain[1], plain[2:]
                    out.append((f"{where}:{lid}", ns, name, frozenset(zip(rest[::2], map(str, rest[1::2]), strict=True))))
    return out


def test_the_code_emits_the_metrics_the_checks_compare(world):
    names = {n for _, n, _ in emitted(world)}
    assert {"DocumentsFailed", "PendingDocuments", "DailyCostUsd", "DocumentsCompleted",
            "StageDurationSeconds"} <= names, names


def test_every_alarm_reads_a_metric_the_code_emits(world):
    out = emitted(world)
    ours = {ns for ns, _, _ in out}
    checked, missing = 0, []
    for alarm, ns, name, dims in alarms(world):
        if ns.startswith(AWS_NAMESPACES):
            continue
        checked += 1
        if (ns, name, dims) not in out:
            seen = sorted(str(dict(d)) for n2, m2, d in out if (n2, m2) == (ns, name))
            missing.append(f"{alarm} reads {ns}/{name} {dict(dims)}; the code emits it with {seen or 'nothing'}")
    assert checked >= 4 and ours, (checked, ours)
    assert missing == []


def test_every_dashboard_metric_is_emitted(world):
    out = emitted(world)
    checked, missing = 0, []
    for board, ns, name, dims in dashboard_metrics(world):
        if ns.startswith(AWS_NAMESPACES):
            continue
        checked += 1
        if isinstance(dims, tuple):  # SEARCH: the exact set of dimension names
            ok = any((n2, m2) == (ns, name) and tuple(sorted(k for k, _ in d)) == dims for n2, m2, d in out)
        else:
            ok = (ns, name, dims) in out
        if not ok:
            missing.append(f"{board}: {ns}/{name} {dims}")
    assert checked >= 4, checked
    assert missing == []


# ---------------------------------------------------------------- 3. reads on the caller's behalf
TEXTRACT_ACTIONS = ("textract:DetectDocumentText", "textract:StartDocumentTextDetection",
                    "textract:GetDocumentTextDetection")


def cluster_with(world, **parameters):
    """infra/ray-cluster.yaml as this stack deploys it, with some of the values the parent
    passes replaced (a backend the recorded run did not use) and its conditions re-evaluated."""
    cluster = nested_stack(world.stack)
    cluster.parameters = {**cluster.parameters, **parameters}
    for name, expr in load_cfn(TREE / "infra/ray-cluster.yaml").get("Conditions", {}).items():
        cluster.conditions[name] = bool(cluster.resolve(expr))  # in order: later ones read earlier ones
    return cluster


def test_textract_reads_the_upload_with_the_worker_role(world):
    """StartDocumentTextDetection has Textract read the upload itself, with the caller's
    permissions (Textract API reference, S3Object: the caller must be allowed to access the
    object, and the bucket must be in Textract's region; Service Authorization Reference:
    dependent action s3:GetObject). Naming the registered VersionId makes it a read of that
    version (s3:GetObjectVersion), and an SSE-KMS bucket would need kms:Decrypt on its key.
    With OcrBackend=textract the deployed worker role allows every part of it; the head's role
    and a stack with local OCR have no Textract action at all."""
    from test_iam_covers_calls import matching, role_statements

    stack = world.stack
    bucket = stack.physical_name("DocumentBucket")
    sse = [r["ServerSideEncryptionByDefault"] for r in
           stack.properties("DocumentBucket")["BucketEncryption"]["ServerSideEncryptionConfiguration"]]
    keys = [d.get("KMSMasterKeyID", "alias/aws/s3") for d in sse if d["SSEAlgorithm"].startswith("aws:kms")]
    textract = cluster_with(world, OcrBackend="textract")
    assert textract.parameters["DocumentBucketName"] == bucket
    workers = role_statements(textract, "WorkerTaskRole")
    upload = f"arn:aws:s3:::{bucket}/input/scans/report.pdf"
    for version in (None, "3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY"):
        needs = [(a, "*", {}) for a in TEXTRACT_ACTIONS]
        needs.append(("s3:GetObjectVersion" if version else "s3:GetObject", upload, {}))
        needs += [("kms:Decrypt", key, {}) for key in keys]
        assert [n for n in needs if not matching(workers, *n)] == [], version
    # The workers call Textract in the stack's region, where the bucket is.
    (container,) = textract.properties("WorkerTaskDefinition")["ContainerDefinitions"]
    env = {e["Name"]: e["Value"] for e in container["Environment"]}
    assert env["AWS_REGION"] == env["AWS_DEFAULT_REGION"] == stack.region
    assert env["OCR_BACKEND"] == "textract"
    head = role_statements(textract, "HeadTaskRole")
    local = role_statements(cluster_with(world, OcrBackend="local"), "WorkerTaskRole")
    for statements in (head, local):
        assert [a for a in TEXTRACT_ACTIONS if matching(statements, a, "*", {})] == []
