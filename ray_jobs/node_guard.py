"""The main process of a Ray container on ECS: runs `ray start --block` as its child.

    python -m ray_jobs.node_guard [--protect] -- ray start ... --block

infra/ray-cluster.yaml starts both Ray containers this way (ECS runs it under its init
process, so it is the process that receives the container's SIGTERM). It adds what
`ray start` alone does not do on ECS:

- **Scale-in protection** (``--protect``, the workers): while this node runs document work
  (a stage service's task, or a large document's own job), the task is protected through
  the ECS agent's endpoint ``PUT $ECS_AGENT_URI/task-protection/v1/state``
  ``{"ProtectionEnabled": true, "ExpiresInMinutes": N}``, renewed at half that time; once
  the node has been idle for ``--idle-grace-seconds`` it is unprotected
  (``{"ProtectionEnabled": false}``), so service auto scaling and deployments stop only
  idle workers. A crashed guard stops renewing: the protection expires by itself.
- **SIGTERM first to the document drivers** (a deployment, a failed health check, a
  Fargate Spot interruption with its two minutes' notice): the drivers of the stage jobs
  on this node (``python -m ray_jobs.extract|embed|service``) get SIGTERM before Ray is
  stopped, so their handlers answer ``JobInterrupted`` and the state machine retries at
  once. Left to ``ray start``, a driver dies with its job supervisor by SIGKILL and only
  the state's HeartbeatSeconds notices. Then ``ray start`` gets the SIGTERM.
- **Job logs to CloudWatch**: Ray writes a job driver's stdout (docpipe's JSON log lines,
  and with ``log_to_driver`` those of the job's tasks) only to
  ``/tmp/ray/session_latest/logs/job-driver-<submission_id>.log``. The guard copies new
  lines of those files to its stdout, which the awslogs driver sends to the container's
  log group; each line is a JSON object with ``ray_submission_id`` added.

The guard exits with ``ray start``'s exit code, so ECS still replaces a worker whose head
went away. Nothing here may stop Ray: every failure of protection or log copying is
logged and retried.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any, TextIO

from ray_jobs.log import emit, setup_process

PROTECTION_PATH = "/task-protection/v1/state"
# Drivers of docpipe's Ray jobs (their command lines): the work a node must not lose.
DRIVER_MODULES = ("ray_jobs.extract", "ray_jobs.embed", "ray_jobs.service")
# Ray worker process titles that mean "no user work" (ray/_private/ray_constants.py:
# ray::IDLE, ray::IDLE_SpillWorker, ray::SPILL_SpillWorker, ...). Any other ray::<name>
# is a task or an actor running user code.
IDLE_TITLES = ("ray::IDLE", "ray::SPILL_", "ray::RESTORE_", "ray::DELETE_")
JOB_LOG_GLOB = "/tmp/ray/session_latest/logs/job-driver-*.log"
MAX_READ = 1 << 20  # bytes copied per log file and pass, so one chatty job cannot stall the rest


def log(message: str, **fields: Any) -> None:
    """The guard's own lines: the jobs' shape (ray_jobs.log), on the container's stdout."""
    emit(message, component="node_guard", **fields)


# ------------------------------------------------------------------------------ what runs here
def process_cmdlines(proc: str = "/proc", root: int | None = None) -> list[tuple[int, str]]:
    """(pid, command line) of the processes below ``root`` (default: this process): Ray's
    processes and the jobs' drivers all descend from the `ray start` this guard runs, and
    nothing else is ever signalled."""
    root = os.getpid() if root is None else root
    parents, cmdlines = {}, {}
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            with open(os.path.join(proc, entry, "stat"), "rb") as f:
                stat = f.read().decode(errors="replace")
            with open(os.path.join(proc, entry, "cmdline"), "rb") as f:
                raw = f.read()
        except OSError:
            continue  # gone meanwhile
        # stat: "pid (comm) state ppid ..."; comm may hold spaces and parentheses.
        parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
        cmdlines[int(entry)] = raw.replace(b"\0", b" ").decode(errors="replace").strip()
    below, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier and pid not in below}
        below |= frontier
    return sorted((pid, cmdlines[pid]) for pid in below if cmdlines.get(pid))


_DRIVER = re.compile(r"-m ({})(\s|$)".format("|".join(re.escape(m) for m in DRIVER_MODULES)))


def is_driver(cmdline: str) -> bool:
    return bool(_DRIVER.search(cmdline))


def is_busy_worker(cmdline: str) -> bool:
    """A Ray worker process whose title names a task or actor (setproctitle ray::<name>)."""
    return cmdline.startswith("ray::") and not cmdline.startswith(IDLE_TITLES)


def node_busy(cmdlines: Iterable[str]) -> bool:
    return any(is_driver(c) or is_busy_worker(c) for c in cmdlines)


# ------------------------------------------------------------------------------ protection
class ProtectionError(Exception):
    pass


def set_protection(agent_uri: str, enabled: bool, expires_minutes: int, timeout: float = 5.0) -> dict[str, Any]:
    """One PUT to the ECS agent's task protection endpoint; returns its "protection" object."""
    body: dict[str, bool | int] = {"ProtectionEnabled": enabled}
    if enabled:
        body["ExpiresInMinutes"] = expires_minutes
    req = urllib.request.Request(agent_uri.rstrip("/") + PROTECTION_PATH, data=json.dumps(body).encode(),
                                 method="PUT", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            answer: dict[str, Any] = json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        raise ProtectionError(f"HTTP {err.code}: {err.read()[:300].decode(errors='replace')}") from err
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise ProtectionError(f"{type(err).__name__}: {err}") from err
    # The endpoint answers 200 with {"failure": ...} or {"error": ...} when ECS refused.
    for key in ("failure", "error"):
        if answer.get(key):
            raise ProtectionError(f"{key}: {json.dumps(answer[key])[:300]}")
    protection: dict[str, Any] = answer.get("protection", {})
    return protection


@dataclass
class ProtectionState:
    enabled: bool = False
    renew_at: float = 0.0  # monotonic time at which a busy node renews
    idle_since: float | None = None


def decide(busy: bool, state: ProtectionState, now: float, idle_grace_s: float) -> bool | None:
    """What to PUT now: True (protect or renew), False (unprotect) or None (nothing)."""
    if busy:
        state.idle_since = None
        return True if (not state.enabled or now >= state.renew_at) else None
    if not state.enabled:
        return None
    if state.idle_since is None:
        state.idle_since = now
    # A grace period: a stage service hands a worker its next document within moments.
    return False if now - state.idle_since >= idle_grace_s else None


class Protector:
    def __init__(self, agent_uri: str, expires_minutes: int = 30, idle_grace_s: float = 60.0,
                 busy: Callable[[], bool] | None = None, clock: Callable[[], float] = time.monotonic):
        self.agent_uri = agent_uri
        self.expires_minutes = expires_minutes
        self.idle_grace_s = idle_grace_s
        self.busy = busy or (lambda: node_busy(c for _, c in process_cmdlines()))
        self.clock = clock
        self.state = ProtectionState()

    def tick(self) -> bool | None:
        """One look at the node; returns what was PUT (None = nothing or a failed PUT)."""
        now = self.clock()
        want = decide(self.busy(), self.state, now, self.idle_grace_s)
        if want is None:
            return None
        try:
            set_protection(self.agent_uri, want, self.expires_minutes)
        except ProtectionError as err:
            log(message="task protection not updated; retrying", protect=want, cause=str(err))
            return None  # state unchanged: the next tick tries again
        self.state.enabled = want
        self.state.renew_at = now + self.expires_minutes * 60 / 2
        if not want:
            self.state.idle_since = None
        log(message="task protected" if want else "task protection removed",
            expires_minutes=self.expires_minutes if want else None)
        return want

    def run(self, stop: threading.Event, interval_s: float) -> None:
        while not stop.is_set():
            try:
                self.tick()
            except Exception as err:  # never take Ray down with us
                log(message="task protection check failed", cause=f"{type(err).__name__}: {err}"[:300])
            stop.wait(interval_s)


# ------------------------------------------------------------------------------ job logs
def format_line(submission_id: str, line: str) -> str:
    try:
        doc = json.loads(line)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        doc.setdefault("ray_submission_id", submission_id)
        return json.dumps(doc, default=str)
    return json.dumps({"ray_submission_id": submission_id, "message": line})


class JobLogFollower:
    """Copies complete new lines of the job driver log files to ``out``."""

    def __init__(self, pattern: str = JOB_LOG_GLOB, out: TextIO | None = None):
        self.pattern = pattern
        self.out = out or sys.stdout
        self.offsets: dict[str, int] = {}

    def poll(self) -> int:
        copied = 0
        for path in sorted(glob.glob(self.pattern)):
            name = os.path.basename(path)
            sid = name[len("job-driver-"):-len(".log")] if name.startswith("job-driver-") else name
            start = self.offsets.get(path, 0)
            try:
                with open(path, "rb") as f:
                    f.seek(start)
                    data = f.read(MAX_READ)
            except OSError:
                continue
            end = data.rfind(b"\n")
            if end < 0:
                if len(data) == MAX_READ:  # one line longer than MAX_READ: pass it on cut
                    end = len(data) - 1
                else:
                    continue  # a line still being written
            for raw in data[:end + 1].splitlines():
                text = raw.decode(errors="replace").rstrip("\r")
                if text.strip():
                    self.out.write(format_line(sid, text) + "\n")
                    copied += 1
            self.offsets[path] = start + end + 1
        if copied:
            self.out.flush()
        return copied

    def run(self, stop: threading.Event, interval_s: float) -> None:
        while True:
            try:
                self.poll()
            except Exception as err:
                log(message="job log copy failed", cause=f"{type(err).__name__}: {err}"[:300])
            if stop.wait(interval_s):
                self.poll()  # what the drivers wrote while they were stopped
                return


# ------------------------------------------------------------------------------ SIGTERM
def signal_drivers(sig: int = signal.SIGTERM, cmdlines: Callable[[], list[tuple[int, str]]] = process_cmdlines
                   ) -> list[int]:
    """Send ``sig`` to this node's document drivers; returns their pids."""
    pids = []
    for pid, cmd in cmdlines():
        if pid != os.getpid() and is_driver(cmd):
            try:
                os.kill(pid, sig)
                pids.append(pid)
            except OSError:
                pass
    return pids


def wait_gone(pids: list[int], timeout_s: float) -> list[int]:
    """Wait until none of ``pids`` is alive (or the timeout); returns those still alive."""
    deadline = time.monotonic() + timeout_s
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [p for p in alive if _alive(p)]
    return alive


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by the init process) is gone for our purpose
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ray_jobs.node_guard",
                                 description="Run `ray start --block` on ECS with scale-in protection, "
                                             "SIGTERM to the document drivers first, and job logs on stdout.")
    ap.add_argument("--protect", action="store_true", help="protect the ECS task while this node runs document work")
    ap.add_argument("--interval-seconds", type=float, default=10.0)
    ap.add_argument("--expires-minutes", type=int, default=30, help="protection lifetime, renewed at half of it")
    ap.add_argument("--idle-grace-seconds", type=float, default=60.0)
    ap.add_argument("--drain-seconds", type=float, default=30.0,
                    help="how long the document drivers get to answer after SIGTERM before Ray is stopped")
    ap.add_argument("--log-interval-seconds", type=float, default=2.0)
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- ray start ... --block")
    args = ap.parse_args(argv)
    setup_process()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("the command to run is missing (-- ray start ...)")

    stop = threading.Event()
    terminated = threading.Event()

    def on_term(signum: int, frame: FrameType | None) -> None:
        terminated.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    child = subprocess.Popen(command)
    threads = [threading.Thread(target=JobLogFollower().run, args=(stop, args.log_interval_seconds),
                                name="job-logs", daemon=True)]
    agent_uri = os.environ.get("ECS_AGENT_URI", "")
    if args.protect and agent_uri:
        protector = Protector(agent_uri, args.expires_minutes, args.idle_grace_seconds)
        threads.append(threading.Thread(target=protector.run, args=(stop, args.interval_seconds),
                                        name="protection", daemon=True))
    elif args.protect:
        log(message="ECS_AGENT_URI not set (not on ECS): no task protection")
    for t in threads:
        t.start()

    while child.poll() is None and not terminated.wait(1.0):
        pass
    if terminated.is_set() and child.poll() is None:
        pids = signal_drivers(signal.SIGTERM)
        log(message="SIGTERM: document drivers told first", drivers=pids)
        left = wait_gone(pids, args.drain_seconds)
        if left:
            log(message="document drivers still running; stopping Ray anyway", drivers=left)
        child.send_signal(signal.SIGTERM)
    code = child.wait()
    stop.set()
    for t in threads:
        t.join(timeout=5)
    log(message="ray start exited", code=code)
    return code


if __name__ == "__main__":
    sys.exit(main())
