"""bench --split-cores: the AWS emulation's processes and Ray's on separate CPUs."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO))
from bench import cores
from bench.procs import descendants

needs_two = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")


def allowed(pid: int) -> set[int]:
    return os.sched_getaffinity(pid)


def test_split_gives_compute_the_first_half_and_refuses_one_cpu():
    assert cores.split([0, 1]) == ({0}, {1})
    assert cores.split([3, 1, 2]) == ({1, 2}, {3})
    with pytest.raises(SystemExit, match="at least 2 CPUs"):
        cores.split([0])


@needs_two
def test_a_pinned_tree_keeps_its_cpus_and_what_it_starts_later_inherits_them(tmp_path):
    # A parent that starts one child now and another once told to (a file appears): like
    # the raylet starting workers after the bench pinned it.
    go, pids = tmp_path / "go", tmp_path / "pids"
    script = (
        "import os, subprocess, sys, time\n"
        "a = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.05)\n"
        "b = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pids)!r}, 'w').write(f'{{a.pid}} {{b.pid}}')\n"
        "time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 20
        while not descendants(parent.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        first = min(sorted(os.sched_getaffinity(0)))
        assert cores.pin_tree(parent.pid, {first}) >= 2
        go.write_text("")
        while not pids.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.1)
        a, b = (int(p) for p in pids.read_text().split())
        assert allowed(parent.pid) == allowed(a) == allowed(b) == {first}
        assert allowed(os.getpid()) != {first}  # the caller is not pinned by it
    finally:
        for pid in [*descendants(parent.pid), parent.pid]:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        parent.wait()
