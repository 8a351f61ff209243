"""`python -m bench.moto_ops` times the calls the moto fixes change, moto as pinned against
the fixes, each in its own interpreter, and reports every metric for both."""

from __future__ import annotations

import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO))
from bench import moto_ops


def test_it_reports_each_call_for_moto_and_the_fixes(capsys, monkeypatch):
    monkeypatch.chdir(REPO)  # `-m bench.moto_ops` from the checkout
    assert moto_ops.main(["--calls", "8", "--depths", "0,25", "--rounds", "1"]) == 0
    out = capsys.readouterr()
    rows = {line.split()[0]: line.split()[1:] for line in out.out.splitlines()[1:]}
    assert set(rows) == {"update_item_ms", "send_message_ms_at_0", "send_message_ms_at_25"}
    assert all(len(v) == 2 and all(float(x) > 0 for x in v) for v in rows.values())
    assert "round 1/1 moto" in out.err and "round 1/1 fixed" in out.err


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        moto_ops.main(["--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: python -m bench.moto_ops")
