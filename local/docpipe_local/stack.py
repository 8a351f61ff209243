"""Start, inspect and stop the local stack: the moto-based AWS side and a Ray head.

Both run as background processes in their own process groups; their pids are kept in
$DOCPIPE_HOME/stack.json, so `stop` ends exactly what `start` started (never
`ray stop`, which would end every Ray process on the machine).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from docpipe_local import paths

DEFAULT_MOTO_PORT = 4566
DEFAULT_RAY_DASHBOARD_PORT = 8265
DEFAULT_RAY_GCS_PORT = 6380


class StackError(Exception):
    """A clear, user-facing problem (exit code 2)."""


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_state() -> dict | None:
    try:
        return json.loads(paths.state_file().read_text())
    except (FileNotFoundError, ValueError):
        return None


def running_state() -> dict:
    state = read_state()
    if not state or not _alive(state.get("moto_pid")):
        raise StackError("the local stack is not running: start it with `docpipe stack start`")
    return state


def _wait(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-2000:] if log and log.exists() else ""
            raise StackError(f"{what} exited with code {proc.returncode} while starting:\n{tail}")
        time.sleep(0.3)
    raise StackError(f"{what} did not become ready within {timeout:.0f} s (see {log})")


def ray_env(endpoint: str, token: str, temp_dir: Path) -> dict[str, str]:
    """Environment of the Ray head, inherited by every job it runs."""
    return {
        **os.environ,
        # Job entrypoints run `python -m ray_jobs.<stage>`: this venv's python.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        "RAY_USAGE_STATS_ENABLED": "0",
        "DOCPIPE_RAY_HEAD": str(temp_dir),  # found again by `stop` in every process Ray starts
        # Each stage service keeps its own warm worker processes; past the default soft
        # limit (one per CPU) Ray kills idle ones within a second, so the extract and embed
        # services would keep killing each other's warm model and imports.
        "RAY_num_workers_soft_limit": "8",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "LANCEDB_URI": str(paths.vectors_dir()),
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        # Jobs heartbeat well inside the stage's HeartbeatSeconds.
        "DOCPIPE_HEARTBEAT_INTERVAL": os.environ.get("DOCPIPE_HEARTBEAT_INTERVAL", "5"),
    }


def start(moto_port: int = DEFAULT_MOTO_PORT, ray_port: int = DEFAULT_RAY_DASHBOARD_PORT,
          gcs_port: int = DEFAULT_RAY_GCS_PORT, parameters: dict | None = None,
          job_slots: int = 8, num_cpus: int = 2, timeout: float = 120, echo=print) -> dict:
    state = read_state()
    if state and (_alive(state.get("moto_pid")) or _alive(state.get("ray_pid"))):
        raise StackError(f"the local stack is already running (AWS on {state['endpoint']}, Ray on "
                         f"{state['ray_url']}); `docpipe stack stop` first")
    for port, what in ((moto_port, "--port"), (ray_port, "--ray-port"), (gcs_port, "--gcs-port")):
        if not _port_free(port):
            raise StackError(f"port {port} on 127.0.0.1 is busy; pick another with {what}")
    home = paths.home()
    paths.logs_dir().mkdir(parents=True, exist_ok=True)
    paths.vectors_dir().mkdir(parents=True, exist_ok=True)
    token_file = home / "ray_token"
    token_file.write_text(secrets.token_urlsafe(32))
    token_file.chmod(0o600)
    token = token_file.read_text()
    endpoint = f"http://127.0.0.1:{moto_port}"
    ray_url = f"http://127.0.0.1:{ray_port}"
    ready = home / "aws.json"
    ready.unlink(missing_ok=True)

    params = {"RayDashboardUrl": ray_url, "RayEntrypointResources": '{"job_slot": 1}', **(parameters or {})}
    moto_log = paths.logs_dir() / "aws.log"
    echo(f"starting local AWS (moto) on {endpoint} ...")
    moto = subprocess.Popen(
        [sys.executable, "-m", "docpipe_local.server", "--port", str(moto_port),
         "--parameters", json.dumps(params), "--ray-token", str(token_file), "--ready-file", str(ready)],
        stdout=open(moto_log, "ab"), stderr=subprocess.STDOUT, start_new_session=True,  # noqa: SIM115 - the child owns it
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    ray_log = paths.logs_dir() / "ray.log"
    ray_bin = Path(sys.executable).with_name("ray")
    temp_dir = Path("/tmp") / f"docpipe-ray-{gcs_port}"
    echo(f"starting Ray head on {ray_url} (token auth) ...")
    ray = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", f"--port={gcs_port}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={ray_port}", "--include-dashboard=true",
         # job_slot: a document's own job; service_slot: a stage service's driver (on the
         # head in AWS too, where scale-in never stops it).
         f"--num-cpus={num_cpus}", f"--resources={json.dumps({'job_slot': job_slots, 'service_slot': 4})}",
         f"--temp-dir={temp_dir}", "--disable-usage-stats",
         # Ray's agents default to fixed ports (52365, ...): a second Ray on the machine
         # (a test's ray.init, a benchmark) would take them and jobs would find "No
         # available agent". Free ports keep two stacks apart.
         f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
         f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}"],
        stdout=open(ray_log, "ab"), stderr=subprocess.STDOUT, start_new_session=True,  # noqa: SIM115 - the child owns it
        env=ray_env(endpoint, token, temp_dir), cwd=str(paths.REPO))
    state = {"endpoint": endpoint, "ray_url": ray_url, "moto_pid": moto.pid, "ray_pid": ray.pid,
             "ray_temp_dir": str(temp_dir), "home": str(home), "started_at": time.time()}
    paths.state_file().write_text(json.dumps(state, indent=2))
    try:
        _wait(ready.exists, timeout, "the local AWS server", moto, moto_log)

        def ray_ready():
            try:
                r = requests.get(f"{ray_url}/api/jobs/", timeout=2,
                                 headers={"Authorization": f"Bearer {token}"})
                return r.status_code == 200
            except requests.RequestException:
                return False

        _wait(ray_ready, timeout, "the Ray head", ray, ray_log)
    except StackError:
        stop(echo=lambda *_: None)
        raise
    state.update(json.loads(ready.read_text()))
    state["moto_pid"] = moto.pid
    from docpipe_local import invoke  # loads the template: only once the stack is up

    state["env_vars"] = str(invoke.write_env_vars(state))
    paths.state_file().write_text(json.dumps(state, indent=2, default=str))
    echo(f"local stack ready: bucket {state['outputs']['DocumentBucketName']}")
    return state


def _kill_group(pid: int | None, grace: float = 15.0) -> None:
    if not _alive(pid):
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _kill_by_marker(marker: str) -> None:
    """Ray daemons this head started carry its temp dir in their command line; job
    drivers (a stage service runs for minutes) in their environment (DOCPIPE_RAY_HEAD):
    a driver left behind would keep reading the stage queues of the next stack."""
    env_marker = f"DOCPIPE_RAY_HEAD={marker}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if (marker in cmd or env_marker in env) and int(proc.name) != os.getpid():
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


def stop(echo=print) -> bool:
    state = read_state()
    if not state:
        echo("the local stack is not running")
        return False
    echo("stopping Ray head ...")
    _kill_group(state.get("ray_pid"))
    if state.get("ray_temp_dir"):
        _kill_by_marker(state["ray_temp_dir"])
        shutil.rmtree(state["ray_temp_dir"], ignore_errors=True)
    echo("stopping local AWS ...")
    _kill_group(state.get("moto_pid"), grace=5)
    paths.state_file().unlink(missing_ok=True)
    echo("stopped")
    return True


def status() -> dict:
    state = read_state()
    if not state:
        return {"running": False}
    out = {"running": _alive(state.get("moto_pid")) and _alive(state.get("ray_pid")),
           "aws": {"endpoint": state.get("endpoint"), "pid": state.get("moto_pid"),
                   "alive": _alive(state.get("moto_pid"))},
           "ray": {"url": state.get("ray_url"), "pid": state.get("ray_pid"),
                   "alive": _alive(state.get("ray_pid"))},
           "outputs": state.get("outputs", {}), "env_vars": state.get("env_vars")}
    if out["running"]:
        out["queues"], out["services"] = stage_status(state)
    return out


def ray_jobs(state: dict) -> list[dict]:
    """The Ray Jobs API's job list, as SubmitRayJob sees it."""
    token = (Path(state["home"]) / "ray_token").read_text()
    r = requests.get(f"{state['ray_url']}/api/jobs/", timeout=10, headers={"Authorization": f"Bearer {token}"})
    r.raise_for_status()
    return r.json()


def stage_status(state: dict) -> tuple[dict, list[dict]]:
    """Per stage queue: messages waiting and held; the stage services with their state."""
    from docpipe import rayjobs

    sqs = client("sqs", state)
    queues = {stage: rayjobs.queue_depth(sqs, state["outputs"][output])
              for stage, output in (("extract", "ExtractQueueUrl"), ("embed", "EmbedQueueUrl"))
              if state.get("outputs", {}).get(output)}
    try:
        jobs = ray_jobs(state)
    except requests.RequestException:
        jobs = []
    services = [{"stage": j["metadata"]["stage"], "submission_id": j["submission_id"],
                 "generation": int(j["metadata"].get("generation", 0)), "status": j.get("status")}
                for j in rayjobs.services(jobs)]
    return queues, sorted(services, key=lambda s: (s["stage"], -s["generation"]))


def client(service: str, state: dict | None = None):
    import boto3

    state = state or running_state()
    return boto3.client(service, endpoint_url=state["endpoint"], region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")
