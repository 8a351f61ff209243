"""ray_jobs/node_guard.py: ECS task scale-in protection while a worker runs document work,
SIGTERM to the document drivers before Ray stops, job driver logs copied to stdout.

The ECS agent is a local HTTP server that answers as the agent's task protection endpoint
does; processes are this test's own children only.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ray_jobs import node_guard as g

REPO = Path(__file__).resolve().parents[1]


class FakeAgent:
    """PUT /task-protection/v1/state as the ECS agent answers it."""

    def __init__(self):
        self.puts: list[dict] = []
        self.refuse = 0  # answer the next N with {"failure": ...}
        agent = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_PUT(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                assert self.path == "/task-protection/v1/state"
                assert self.headers["Content-Type"] == "application/json"
                agent.puts.append(body)
                if agent.refuse:
                    agent.refuse -= 1
                    answer = {"failure": {"Arn": "arn:aws:ecs:us-east-1:123456789012:task/c/t",
                                          "Reason": "TASK_NOT_VALID"}}
                else:
                    answer = {"protection": {"ProtectionEnabled": body["ProtectionEnabled"],
                                             "ExpirationDate": "2026-12-01T10:30:00Z" if body["ProtectionEnabled"] else None,
                                             "TaskArn": "arn:aws:ecs:us-east-1:123456789012:task/c/t"}}
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.uri = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def agent():
    a = FakeAgent()
    yield a
    a.close()


def test_busy_means_a_task_or_a_document_driver():
    idle = ["ray::IDLE", "ray::IDLE_SpillWorker", "ray::SPILL_SpillWorker", "ray::RESTORE_RestoreWorker",
            "/home/ray/anaconda3/bin/python /home/ray/anaconda3/bin/ray start --address=head:6379 --block",
            "/home/ray/anaconda3/lib/python3.11/site-packages/ray/core/src/ray/raylet/raylet --node_manager_port=6380",
            "python -m ray_jobs.node_guard --protect -- ray start --block",
            "python -m ray_jobs.extractor_tool"]
    assert not g.node_busy(idle)
    for work in ("ray::run_document", "ray::JobSupervisor",
                 "/bin/bash -c python -m ray_jobs.extract --job s3://b/jobs/x.json",
                 "python -m ray_jobs.embed --job s3://b/jobs/y.json",
                 "python -m ray_jobs.service --stage extract --queue-url https://sqs/q"):
        assert g.node_busy([*idle, work]), work


def test_protects_while_busy_renews_and_unprotects_after_the_grace(agent):
    now = [1000.0]
    busy = [True]
    p = g.Protector(agent.uri, expires_minutes=30, idle_grace_s=60, busy=lambda: busy[0], clock=lambda: now[0])

    assert p.tick() is True  # the first document: protected
    assert agent.puts == [{"ProtectionEnabled": True, "ExpiresInMinutes": 30}]
    now[0] += 10
    assert p.tick() is None  # still busy, protection fresh: no call
    now[0] += 15 * 60  # half the lifetime: renewed while still busy
    assert p.tick() is True
    assert agent.puts[-1] == {"ProtectionEnabled": True, "ExpiresInMinutes": 30}

    busy[0] = False  # the last document answered
    now[0] += 10
    assert p.tick() is None  # within the grace: a service hands out the next one quickly
    busy[0] = True  # ...as here
    now[0] += 10
    assert p.tick() is None  # still protected, no new call
    busy[0] = False
    now[0] += 30
    assert p.tick() is None
    now[0] += 59
    assert p.tick() is None
    now[0] += 2
    assert p.tick() is False  # idle for the whole grace: scale-in may take this task
    assert agent.puts[-1] == {"ProtectionEnabled": False}
    now[0] += 600
    assert p.tick() is None and len(agent.puts) == 3  # idle and unprotected: quiet


def test_a_refused_or_failed_call_is_retried_at_the_next_look(agent):
    now = [0.0]
    p = g.Protector(agent.uri, expires_minutes=5, idle_grace_s=0, busy=lambda: True, clock=lambda: now[0])
    agent.refuse = 1
    assert p.tick() is None and p.state.enabled is False
    now[0] += 10
    assert p.tick() is True and p.state.enabled is True
    assert agent.puts == [{"ProtectionEnabled": True, "ExpiresInMinutes": 5}] * 2
    dead = g.Protector("http://127.0.0.1:9", busy=lambda: True)  # nothing listens: no exception
    assert dead.tick() is None


def test_decide_is_quiet_on_an_idle_unprotected_node():
    state = g.ProtectionState()
    for t in range(0, 3600, 10):
        assert g.decide(False, state, float(t), 60) is None


def test_job_driver_logs_are_copied_as_json_lines(tmp_path):
    out = io.StringIO()
    follower = g.JobLogFollower(str(tmp_path / "job-driver-*.log"), out)
    log = tmp_path / "job-driver-docpipe-service-extract-g1.log"
    log.write_text('{"message": "document received", "stage": "extract"}\nplain text from Ray\n{"partial":')
    assert follower.poll() == 2
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert lines == [{"message": "document received", "stage": "extract",
                      "ray_submission_id": "docpipe-service-extract-g1"},
                     {"ray_submission_id": "docpipe-service-extract-g1", "message": "plain text from Ray"}]
    assert follower.poll() == 0  # the partial line waits for its end
    with log.open("a") as f:
        f.write(' 1}\n')
    assert follower.poll() == 1
    assert json.loads(out.getvalue().splitlines()[-1]) == {"partial": 1, "ray_submission_id": "docpipe-service-extract-g1"}


DRIVER = textwrap.dedent("""
    import signal, sys, time
    out = sys.argv[1]
    def term(*_):
        open(out, "a").write("driver answered JobInterrupted\\n")
        sys.exit(143)
    signal.signal(signal.SIGTERM, term)
    open(out, "a").write("driver started\\n")
    time.sleep(60)
""")
RAY = textwrap.dedent("""
    import signal, subprocess, sys, time
    out = sys.argv[1]
    # Like ray start: the job driver is a descendant of the guard's child.
    subprocess.Popen([sys.executable, "-c", sys.argv[2], out, "-m", "ray_jobs.extract", "--job", "s3://b/jobs/x.json"])
    def term(*_):
        open(out, "a").write("ray stopped\\n")
        sys.exit(0)
    signal.signal(signal.SIGTERM, term)
    time.sleep(60)
""")


def test_sigterm_reaches_the_document_drivers_before_ray(tmp_path):
    """The container's SIGTERM (Spot interruption, deployment): the driver answers first,
    then `ray start` is stopped, and the guard exits with its code."""
    out = tmp_path / "order.txt"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("ECS_AGENT_URI", None)
    guard = subprocess.Popen([sys.executable, "-m", "ray_jobs.node_guard", "--protect", "--drain-seconds", "10",
                              "--", sys.executable, "-c", RAY, str(out), DRIVER],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 20
        while not (out.exists() and "driver started" in out.read_text()):
            assert time.monotonic() < deadline, "the fake driver did not start"
            time.sleep(0.1)
        guard.send_signal(signal.SIGTERM)
        logs, _ = guard.communicate(timeout=30)
    finally:
        if guard.poll() is None:
            guard.kill()
    assert guard.returncode == 0, logs
    assert out.read_text().splitlines() == ["driver started", "driver answered JobInterrupted", "ray stopped"]
    # The guard's own lines: JSON on stdout in the jobs' and the functions' shape.
    own = [json.loads(line) for line in logs.splitlines() if '"component":"node_guard"' in line]
    assert {line["service"] for line in own} == {"docpipe"}
    messages = [line["message"] for line in own]
    assert "ECS_AGENT_URI not set (not on ECS): no task protection" in messages  # --protect off ECS: said so
    assert messages[-1] == "ray start exited" and own[-1]["code"] == 0
