"""checkov on template.yaml (the main SAM stack), as `make checkov` runs it.

checkov scans the SAM resources directly (AWS::Serverless::Function with Globals merged
in). A check skipped for every resource it applies to is listed once in .checkov.yaml
with its reason; one skipped for a single resource is in that resource's
`Metadata: checkov: skip:` with the reason beside it. Every other check passes.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from cfn_yaml import CHECKOV, CHECKOV_CONFIG, load, run_checkov

REPO = Path(__file__).resolve().parents[1]
TEMPLATE_PATH = REPO / "template.yaml"
TEMPLATES = [TEMPLATE_PATH, *sorted((REPO / "infra").glob("*.yaml"))]


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


def global_skips() -> list[str]:
    return yaml.safe_load(CHECKOV_CONFIG.read_text())["skip-check"]


def test_every_global_skip_is_still_needed_and_not_repeated_inline(tmp_path):
    """Without .checkov.yaml each check it skips fails on some resource of the templates
    (a stale entry would hide the check from every resource added later), and no resource
    skips one of them again inline."""
    skips = global_skips()
    assert skips and all(re.fullmatch(r"CKV2?_AWS_\d+", s) for s in skips), skips
    if not CHECKOV.exists():
        pytest.skip(".venv-checkov not installed (make checkov)")
    # cwd outside the repository: checkov reads ./.checkov.yaml by itself.
    args = [str(CHECKOV), "--framework", "cloudformation", "--quiet", "--skip-download", "-o", "json"]
    for path in TEMPLATES:
        args += ["-f", str(path)]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    reports = json.loads(proc.stdout)
    failed = {c["check_id"] for r in (reports if isinstance(reports, list) else [reports])
              for c in r["results"]["failed_checks"]}
    assert sorted(set(skips) - failed) == [], "listed in .checkov.yaml but nothing fails it: drop it"
    inline = {(path.name, lid, s["id"]) for path in TEMPLATES for lid, s in metadata_skips(load(path))
              if s["id"] in skips}
    assert inline == set()

