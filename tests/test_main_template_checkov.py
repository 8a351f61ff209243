"""checkov on template.yaml (the main SAM stack), as `make checkov` runs it.

checkov scans the SAM resources directly (AWS::Serverless::Function with Globals merged
in) and reads suppressions from each resource's `Metadata: checkov: skip:`. Every check
either passes or is skipped there with the reason written beside it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cfn_yaml import load, run_checkov

REPO = Path(__file__).resolve().parents[1]
TEMPLATE_PATH = REPO / "template.yaml"


def metadata_skips(template: dict) -> list[tuple[str, dict]]:
    """(logical id, skip entry) for every `Metadata: checkov: skip:` entry."""
    out = []
    for lid, res in template["Resources"].items():
        for skip in (res.get("Metadata") or {}).get("checkov", {}).get("skip", []):
            out.append((lid, skip))
    return out


def test_every_skip_names_a_check_and_says_why():
    template = load(TEMPLATE_PATH)
    skips = metadata_skips(template)
    assert skips, "no checkov skips found: update this test if the template needs none"
    for lid, skip in skips:
        assert re.fullmatch(r"CKV2?_AWS_\d+", str(skip.get("id", ""))), f"{lid}: bad skip id {skip!r}"
        comment = skip.get("comment")
        assert isinstance(comment, str) and comment.strip(), f"{lid}: {skip.get('id')} skipped without a reason"
    pairs = [(lid, skip["id"]) for lid, skip in skips]
    assert len(pairs) == len(set(pairs)), "a check is skipped twice on the same resource"
    # Inline suppressions (`# checkov:skip=ID:reason`) must carry a reason too.
    for m in re.finditer(r"checkov:skip=([A-Z0-9_]+)(?::(.*))?", TEMPLATE_PATH.read_text()):
        assert (m.group(2) or "").strip(), f"inline skip of {m.group(1)} without a reason"


def test_checkov_finds_nothing():
    passed, failed, skipped, out = run_checkov(TEMPLATE_PATH)
    assert passed > 0 and failed == 0, out
    # Every skip in the template matches a check checkov runs on that resource: none is stale.
    assert skipped == len(metadata_skips(load(TEMPLATE_PATH))), out
