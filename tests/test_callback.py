"""The job side of the task-token protocol, in a real child process: SIGTERM answers
JobInterrupted before dying; a task Step Functions gave up on stops the job; exactly one
final answer is ever sent."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from ray_jobs.callback import TaskCallback

CHILD = textwrap.dedent("""
    import json, os, signal, sys, threading, time
    from botocore.exceptions import ClientError
    from ray_jobs.callback import TaskCallback

    log = open(sys.argv[1], "a")
    beat = threading.Event()

    class FakeSfn:
        def send_task_heartbeat(self, taskToken):
            log.write(json.dumps({"call": "heartbeat"}) + "\\n"); log.flush()
            beat.set()
            if sys.argv[2] == "timed-out":
                raise ClientError({"Error": {"Code": "TaskTimedOut", "Message": "gone"}}, "SendTaskHeartbeat")
        def send_task_failure(self, taskToken, error, cause):
            log.write(json.dumps({"call": "failure", "error": error, "cause": cause}) + "\\n"); log.flush()
        def send_task_success(self, taskToken, output):
            log.write(json.dumps({"call": "success"}) + "\\n"); log.flush()

    cb = TaskCallback("token", "extract", interval_s=0.2, client=FakeSfn()).start()
    # Each step waits for the one before it (deadlines only catch a hang): the first
    # heartbeat, then SIGTERM; the handler (or the abandoned task) ends the process
    # long before the "work" below would finish and answer success.
    if not beat.wait(20):
        sys.exit(4)
    if sys.argv[2] == "sigterm":
        os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(20)
    cb.success({})
""")


def run_child(tmp_path, mode):
    log = tmp_path / "calls.jsonl"
    proc = subprocess.run([sys.executable, "-c", CHILD, str(log), mode], timeout=60)
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return proc.returncode, calls


def test_sigterm_sends_job_interrupted_then_exits(tmp_path):
    code, calls = run_child(tmp_path, "sigterm")
    assert code == 143
    # The one final answer (a heartbeat already on its way may still land after it).
    [answer] = [c for c in calls if c["call"] != "heartbeat"]
    assert answer["call"] == "failure" and answer["error"] == "JobInterrupted"
    assert [c for c in calls if c["call"] == "heartbeat"], "it heartbeat while working"


def test_a_task_that_timed_out_stops_the_job(tmp_path):
    code, calls = run_child(tmp_path, "timed-out")
    assert code == 3
    assert [c["call"] for c in calls] == ["heartbeat"], "no answer to a task nobody waits for"


class Recorder:
    def __init__(self):
        self.calls = []

    def send_task_success(self, **kw):
        self.calls.append(("success", kw))

    def send_task_failure(self, **kw):
        self.calls.append(("failure", kw))

    def send_task_heartbeat(self, **kw):
        self.calls.append(("heartbeat", kw))


def test_exactly_one_final_answer():
    sfn = Recorder()
    cb = TaskCallback("t", "embed", interval_s=60, client=sfn)
    assert cb.failure("PdfMalformed", "x" * 40000)
    assert not cb.success({"late": True})
    assert not cb.failure("StageFailed", "again")
    [(kind, kw)] = sfn.calls
    assert kind == "failure" and kw["error"] == "PdfMalformed" and len(kw["cause"]) <= 32768
