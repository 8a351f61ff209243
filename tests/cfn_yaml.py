"""Load CloudFormation YAML with its short-form tags (!Ref, !Sub, ...) as the long dict forms.

yaml.safe_load rejects the tags; this loader turns `!Ref X` into {"Ref": "X"},
`!GetAtt A.B` into {"Fn::GetAtt": ["A", "B"]}, `!Condition C` into {"Condition": "C"}
and every other `!Fn` into {"Fn::Fn": value}, which is what CloudFormation itself does.
"""

from __future__ import annotations

from pathlib import Path

import yaml

_FN_TAGS = (
    "Sub", "GetAtt", "If", "Join", "Select", "Split", "Equals", "Not", "And", "Or",
    "FindInMap", "ImportValue", "GetAZs", "Base64", "Cidr", "Transform", "Length",
    "ToJsonString",
)


class CfnLoader(yaml.SafeLoader):
    """SafeLoader plus the CloudFormation short forms."""


def _value(loader: yaml.SafeLoader, node: yaml.Node):
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_mapping(node, deep=True)


def _ref(loader, node):
    return {"Ref": _value(loader, node)}


def _condition(loader, node):
    return {"Condition": _value(loader, node)}


def _getatt(loader, node):
    value = _value(loader, node)
    if isinstance(value, str):
        # "Resource.Attr.Maybe.Dotted" -> ["Resource", "Attr.Maybe.Dotted"]
        value = value.split(".", 1)
    return {"Fn::GetAtt": value}


def _fn(name):
    def construct(loader, node):
        return {f"Fn::{name}": _value(loader, node)}

    return construct


CfnLoader.add_constructor("!Ref", _ref)
CfnLoader.add_constructor("!Condition", _condition)
CfnLoader.add_constructor("!GetAtt", _getatt)
for _name in _FN_TAGS:
    if _name != "GetAtt":
        CfnLoader.add_constructor(f"!{_name}", _fn(_name))


def load(path: str | Path) -> dict:
    with open(path, encoding="utf-8") as fh:
        return yaml.load(fh, Loader=CfnLoader)


def loads(text: str) -> dict:
    return yaml.load(text, Loader=CfnLoader)


CHECKOV = Path(__file__).resolve().parents[1] / ".venv-checkov" / "bin" / "checkov"
# Checks skipped for every resource, each with its reason (`make checkov` passes it too).
CHECKOV_CONFIG = Path(__file__).resolve().parents[1] / ".checkov.yaml"


def run_checkov(template: Path) -> tuple[int, int, int, str]:
    """(passed, failed, skipped, output) of checkov on one template; skips the calling
    test when `make checkov` has not installed checkov's own venv."""
    import re
    import subprocess

    import pytest

    if not CHECKOV.exists():
        pytest.skip(".venv-checkov not installed: python3.11 -m venv .venv-checkov && "
                    ".venv-checkov/bin/pip install -r requirements/checkov.txt")
    # --skip-download: no call to the Prisma Cloud API (offline, and nothing to fetch).
    proc = subprocess.run([str(CHECKOV), "-f", str(template), "--framework", "cloudformation",
                           "--quiet", "--compact", "--skip-download", "--config-file", str(CHECKOV_CONFIG)],
                          capture_output=True, text=True, cwd=template.parent, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    m = re.search(r"Passed checks: (\d+), Failed checks: (\d+), Skipped checks: (\d+)", proc.stdout)
    assert m, proc.stdout + proc.stderr
    passed, failed, skipped = map(int, m.groups())
    return passed, failed, skipped, proc.stdout
