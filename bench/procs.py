"""Memory and CPU of a process tree, sampled from /proc (no psutil in the venv).

A `Sampler` thread walks /proc every `interval` seconds, keeps the processes that
descend from its root pids (or whose command line carries one of its markers: Ray
daemons this stack started carry its temp dir), and records

- the tree's total RSS (every sample) and PSS (every 20th, and at each new high of RSS:
  smaps_rollup is costly), and
  their peaks. PSS shares pages such as Ray's object store and the shared libraries
  fairly, so it is the honest sum; the RSS sum counts them once per process;
- CPU seconds per category of process (moto, Ray system daemons, job supervisors,
  stage drivers, PDF parse children, the embedder actor, ...). A Ray worker process
  runs different tasks over its life (a page-range task, then a stage document): the
  CPU it used between two samples goes to the category of its title at the second.
  Short-lived processes are seen only while alive: each contributes its CPU up to its
  last sample, so the per-category figures (and their sum, `cpu_s`) are lower bounds.

Also records machine-wide busy CPU from /proc/stat, so a run that shared the cores
with other work (another test session) says so (`foreign_cpu_s`).
"""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return None


def _stat(pid: str) -> tuple[int, float, float] | None:
    """(ppid, cpu seconds, cpu seconds of its children it has waited for) of a pid."""
    raw = _read(f"/proc/{pid}/stat")
    if not raw:
        return None
    # comm may contain spaces and parentheses: split after the last ')'.
    fields = raw[raw.rfind(")") + 2:].split()
    ppid = int(fields[1])
    return ppid, (int(fields[11]) + int(fields[12])) / _TICK, (int(fields[13]) + int(fields[14])) / _TICK


def descendants(root: int) -> list[int]:
    """Every process under `root` (its children, theirs, ...), from /proc."""
    by_parent: dict[int, list[int]] = defaultdict(list)
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            st = _stat(entry.name)
            if st:
                by_parent[st[0]].append(int(entry.name))
    found, frontier = [], [root]
    while frontier:
        kids = by_parent.get(frontier.pop(), [])
        found += kids
        frontier += kids
    return found


def _rss(pid: str) -> int:
    statm = _read(f"/proc/{pid}/statm")
    return int(statm.split()[1]) * _PAGE if statm else 0


def _rss_pss(pid: str) -> tuple[int, int]:
    raw = _read(f"/proc/{pid}/smaps_rollup")
    rss = pss = 0
    if raw:
        for line in raw.splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
        return rss, pss
    statm = _read(f"/proc/{pid}/statm")
    if statm:
        rss = int(statm.split()[1]) * _PAGE
    return rss, rss


# Generic names a process may carry before it becomes something specific: a Ray worker
# starts as default_worker.py, idles as "ray::IDLE", then retitles itself after the
# actor or task it runs ("ray::JobSupervisor", "ray::_extract_bytes", ...).
GENERIC = ("Ray idle or starting workers", "Ray other actors/tasks", "other")
# Categories whose process may be retitled later: the generic ones and Ray's task workers.
RETITLED = (*GENERIC, "Ray stage task workers", "Ray extract task workers")

# Display groups of the categories (the JSON keeps the fine ones).
GROUPS = {
    "moto server (AWS APIs, Step Functions, Lambdas)": "moto server (AWS, Step Functions, Lambdas)",
    "extract driver": "stage job drivers", "embed driver": "stage job drivers",
    "job entrypoint shell": "stage job drivers",
    "Ray job supervisor": "Ray job supervisors and agents (per job)",
    "Ray extract task workers": "Ray task workers (parse tasks, idle/prestarted)",
    # Job submission and per-job runtime envs go through the agents: a per-job cost.
    "Ray dashboard agent": "Ray job supervisors and agents (per job)",
    "Ray runtime-env agent": "Ray job supervisors and agents (per job)",
    # Seen in practice: supervisors still titled after their internal actor name.
    "Ray other actors/tasks": "Ray job supervisors and agents (per job)",
    "vector-store actor": "warm actors (embedder, vector store)",
    "Ray idle or starting workers": "Ray task workers (parse tasks, idle/prestarted)",
    "PDF parse child": "PDF parse children",
    "PDF parse zygote and its children": "PDF parse children",
    "stage service driver": "stage service drivers",
    "Ray stage task workers": "Ray task workers (stage services' documents)",
    "embedder actor": "warm actors (embedder, vector store)",
}


def categorise(cmdline: str) -> str:
    """A short, stable name for what a process is (the CPU and memory tables group by it)."""
    if "docpipe_local.server" in cmdline:
        return "moto server (AWS APIs, Step Functions, Lambdas)"
    if "ray_jobs.pdf_sandbox import child_main" in cmdline:
        return "PDF parse child"
    if "ray_jobs.pdf_sandbox import zygote_main" in cmdline:
        return "PDF parse zygote and its children"
    if cmdline.startswith(("/bin/sh -c python -m ray_jobs", "sh -c python -m ray_jobs")):
        return "job entrypoint shell"
    if "-m ray_jobs.service" in cmdline:
        return "stage service driver"
    if cmdline.startswith("ray::run_document"):
        return "Ray stage task workers"
    if "-m ray_jobs.extract" in cmdline:
        return "extract driver"
    if "-m ray_jobs.embed" in cmdline:
        return "embed driver"
    if cmdline.startswith(("ray::JobSupervisor", "ray::_ray_internal_job_actor_")):
        return "Ray job supervisor"
    if cmdline.startswith("ray::EmbedderService"):
        return "embedder actor"
    if cmdline.startswith("ray::StoreService"):
        return "vector-store actor"
    if cmdline.startswith(("ray::_extract_bytes", "ray::_range_task")):
        return "Ray extract task workers"
    if cmdline.startswith("ray::IDLE") or "default_worker.py" in cmdline or "setup_worker.py" in cmdline:
        return "Ray idle or starting workers"
    # Ray's own agents retitle themselves too; per job they set up the runtime env and
    # start the supervisor, so their CPU grows with the number of jobs.
    for title, name in (("ray::DashboardAgent", "Ray dashboard agent"), ("ray::RuntimeEnvAgent", "Ray runtime-env agent")):
        if cmdline.startswith(title):
            return name
    if cmdline.startswith("ray::"):
        return "Ray other actors/tasks"
    if "bench.bare" in cmdline or "multiprocessing.spawn" in cmdline:
        return "bare compute"
    if "bench.peer" in cmdline:
        return "LangChain peer"
    for marker, name in (("gcs_server", "Ray GCS"), ("/raylet/raylet", "Ray raylet"),
                         ("dashboard/agent.py", "Ray dashboard agent"),
                         ("runtime_env/agent", "Ray runtime-env agent"), ("log_monitor", "Ray log monitor"),
                         ("ray.util.client.server", "Ray client server"), ("dashboard", "Ray dashboard"),
                         ("multiprocessing", "Ray dashboard"), ("ray start", "ray start (CLI)"),
                         ("while kill -s 0", "Ray worker watchdog shells"), ("sleep 1", "Ray worker watchdog shells")):
        if marker in cmdline:
            return name
    return "other"


def machine_busy_s() -> float:
    """Busy CPU seconds of the whole machine since boot (all cores)."""
    raw = _read("/proc/stat") or ""
    for line in raw.splitlines():
        if line.startswith("cpu "):
            v = [int(x) for x in line.split()[1:]]
            idle = v[3] + (v[4] if len(v) > 4 else 0)
            return (sum(v[:8]) - idle) / _TICK
    return 0.0


class Sampler:
    def __init__(self, roots: list[int], markers: tuple[str, ...] = (), interval: float = 0.5, pss_every: int = 20):
        self.roots = {int(r) for r in roots if r}
        self.markers = markers
        self.interval = interval
        self.pss_every = max(1, pss_every)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cmd: dict[str, str] = {}
        self._cpu: dict[str, float] = {}  # pid -> last seen own cpu
        self._cpu_by_cat: dict[str, float] = defaultdict(float)  # CPU since start(), by category when used
        self._started = False  # the first sample is the baseline: CPU before it is not the run's
        self._cat: dict[str, str] = {}
        # PDF parse zygotes: each forks a child per parse, most shorter than a sample; a
        # zygote's CPU includes its reaped children's, and the children are not counted.
        self._zygotes: set[str] = set()
        self.peak_rss = 0
        self.peak_pss = 0
        self.peak_by_category: dict[str, int] = defaultdict(int)
        self.peak_by_group: dict[str, int] = defaultdict(int)
        self.samples = 0
        self._busy_start = 0.0
        self._t_start = 0.0
        self.result: dict = {}

    # ---- tree ---------------------------------------------------------------------
    def _members(self) -> dict[str, tuple[int, float, float]]:
        stats: dict[str, tuple[int, float, float]] = {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                st = _stat(entry.name)
                if st:
                    stats[entry.name] = st
        members: dict[str, tuple[int, float, float]] = {}
        by_parent: dict[int, list[str]] = defaultdict(list)
        for pid, (ppid, *_) in stats.items():
            by_parent[ppid].append(pid)
        todo = [str(r) for r in self.roots if str(r) in stats]
        if self.markers:
            for pid in stats:
                if pid not in self._cmd:
                    self._cmd[pid] = (_read(f"/proc/{pid}/cmdline") or "").replace("\0", " ").strip()
                if any(m in self._cmd[pid] for m in self.markers):
                    todo.append(pid)
        while todo:
            pid = todo.pop()
            if pid in members:
                continue
            members[pid] = stats[pid]
            todo += by_parent.get(int(pid), [])
        return members

    def sample(self) -> None:
        members = self._members()
        rss_total = 0
        for pid, (ppid, own, reaped) in members.items():
            if self._cat.get(pid, "other") in RETITLED:
                # Re-read: Ray retitles a worker after each task it starts.
                self._cmd[pid] = (_read(f"/proc/{pid}/cmdline") or "").replace("\0", " ").strip()
                self._cat[pid] = categorise(self._cmd[pid])
                if self._cat[pid] == "PDF parse zygote and its children" and str(ppid) not in self._zygotes:
                    self._zygotes.add(pid)
            cat = self._cat[pid]
            if pid in self._zygotes:
                own += reaped
            # A parse child (forked, its zygote's title) is counted by its zygote once reaped.
            if str(ppid) not in self._zygotes:
                last = self._cpu.get(pid, 0.0)  # a process born since start(): all of its CPU
                if self._started and own > last:
                    self._cpu_by_cat[cat] += own - last
                self._cpu[pid] = max(last, own)
            rss_total += _rss(pid)
        self.samples += 1
        # smaps_rollup walks every mapping (Ray processes map GBs): ~0.1 CPU-s for the
        # stack's processes, 6% of a core at every 4th sample, taken from the run it
        # measures. PSS is read every `pss_every` samples and whenever RSS reaches a new
        # high (where PSS peaks too); RSS (statm) every time.
        new_high = rss_total > self.peak_rss * 1.02
        self.peak_rss = max(self.peak_rss, rss_total)
        if not new_high and (self.samples - 1) % self.pss_every:
            return
        pss_total = 0
        per_cat: dict[str, int] = defaultdict(int)
        for pid in members:
            pss = _rss_pss(pid)[1]
            pss_total += pss
            per_cat[self._cat[pid]] += pss
        self.peak_pss = max(self.peak_pss, pss_total)
        per_group: dict[str, int] = defaultdict(int)
        for cat, v in per_cat.items():
            self.peak_by_category[cat] = max(self.peak_by_category[cat], v)
            per_group[group_of(cat)] += v
        for g, v in per_group.items():
            self.peak_by_group[g] = max(self.peak_by_group[g], v)

    # ---- thread -------------------------------------------------------------------
    def start(self) -> Sampler:
        self._t_start = time.monotonic()
        self._busy_start = machine_busy_s()
        self.sample()
        # CPU already spent before the run started is not the run's.
        self._started = True
        self._thread = threading.Thread(target=self._loop, name="proc-sampler", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except Exception:
                pass

    def stop(self) -> dict:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.sample()
        wall = time.monotonic() - self._t_start
        busy = machine_busy_s() - self._busy_start
        cpu_by_cat = self._cpu_by_cat
        cpu_total = sum(cpu_by_cat.values())
        self.result = {
            "wall_s": round(wall, 3),
            "samples": self.samples,
            "peak_rss_mb": round(self.peak_rss / 2**20, 1),
            "peak_pss_mb": round(self.peak_pss / 2**20, 1),
            "peak_pss_mb_by_category": {k: round(v / 2**20, 1) for k, v in sorted(self.peak_by_category.items())},
            # Peak of each group's sum (groups peak at different moments: no total).
            "peak_pss_mb_by_group": {k: round(v / 2**20, 1)
                                     for k, v in sorted(self.peak_by_group.items(), key=lambda kv: -kv[1])},
            "cpu_s": round(cpu_total, 2),
            "cpu_s_by_category": {k: round(v, 2) for k, v in sorted(cpu_by_cat.items(), key=lambda kv: -kv[1])},
            "cpu_s_by_group": grouped(cpu_by_cat),
            "machine_busy_s": round(busy, 2),
            # Busy CPU on the machine that was neither this tree nor the bench process.
            "foreign_cpu_s": None,
            "processes_seen": len(self._cpu),
        }
        return self.result


def group_of(category: str) -> str:
    if category in GROUPS:
        return GROUPS[category]
    if category.startswith(("Ray", "ray")):
        return "Ray daemons (GCS, raylet, dashboard, log monitor, watchdogs)"
    return category


def grouped(by_category: dict[str, float]) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for cat, v in by_category.items():
        out[group_of(cat)] += v
    return {k: round(v, 2) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}


def own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


# What a Ray head keeps per job it has seen: records in the GCS, supervisors, agent state.
HEAD_CATEGORIES = ("Ray GCS", "Ray raylet", "Ray dashboard", "Ray dashboard agent",
                   "Ray runtime-env agent", "Ray job supervisor", "Ray log monitor")


def head_memory_mb(marker: str) -> dict[str, float]:
    """RSS (MB) of the Ray head's own processes (those carrying `marker`, its temp dir,
    and their descendants' categories above), by category, plus the total."""
    out: dict[str, float] = defaultdict(float)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        raw = _read(f"/proc/{entry.name}/cmdline")
        if not raw:
            continue
        cmd = raw.replace("\0", " ").strip()
        cat = categorise(cmd)
        if cat in HEAD_CATEGORIES and (marker in cmd or cat in ("Ray job supervisor", "Ray dashboard agent",
                                                                "Ray runtime-env agent", "Ray dashboard")):
            out[cat] += _rss(entry.name) / 2**20
    result = {k: round(v, 1) for k, v in sorted(out.items())}
    result["total"] = round(sum(out.values()), 1)
    return result
