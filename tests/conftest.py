"""Shared fixtures: an in-process AWS (moto) built from template.yaml, and corpus files."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus"
EVENTS = REPO / "events"

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def corpus_file(rel: str) -> Path:
    path = CORPUS / rel
    if not path.exists():
        pytest.skip(f"corpus file {path} not found (../shared/corpus beside the checkout)")
    return path


def set_aws_env(monkeypatch, tmp_path: Path) -> None:
    """Fake credentials and a private LanceDB dir; no real endpoint is ever reached."""
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_SECURITY_TOKEN": "testing", "AWS_SESSION_TOKEN": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
                 "LANCEDB_URI": str(tmp_path / "vectors"), "DOCPIPE_NO_RAY": "1",
                 "DOCPIPE_HEARTBEAT_INTERVAL": "1", "STAGE_SERVICE_RECEIVE_WAIT_SECONDS": "1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    from docpipe import aws

    aws.reset_clients()


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    set_aws_env(monkeypatch, tmp_path)  # also used by module-scoped fixtures
    yield
    from docpipe import aws

    aws.reset_clients()


@pytest.fixture
def no_network(monkeypatch) -> list[object]:
    """Refuse every connection and name lookup beyond this host for the test; returns the
    list of what was attempted (models that would download at run time show up here)."""
    import socket

    attempts: list[object] = []
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo
    local = {"127.0.0.1", "::1", "localhost"}

    def connect(sock, address):
        if isinstance(address, tuple) and address[0] not in local:
            attempts.append(address)
            raise OSError("network forbidden in this test")
        return real_connect(sock, address)

    def getaddrinfo(host, *args, **kwargs):
        if host not in local:
            attempts.append(host)
            raise OSError("network forbidden in this test")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return attempts


class FakeRayHead:
    """A stand-in for the Ray Jobs REST API that runs each submitted job in a thread,
    in-process, with the real ray_jobs code (no cluster needed): a document's own job
    through its real entry point, a stage service as the real StageService whose "Ray"
    is a thread pool. It checks the bearer token like a token-auth head does, lists and
    reads jobs with their status and metadata, and answers 'already exists' for a
    repeated submission id, as Ray does."""

    def __init__(self, token: str, run_jobs: bool = True):
        self.token = token
        self.run_jobs = run_jobs
        self.submissions: list[dict] = []
        self.status: dict[str, str] = {}
        self.threads: list[threading.Thread] = []
        self.services: list = []
        self.deleted: list[str] = []
        self.stop_services = threading.Event()
        self.fail_next = 0  # answer 503 to the next N submissions
        # Taken to start a job's thread and to stop taking jobs: a submission that races
        # the stack's teardown is refused, never left running past it (unjoined, and then
        # calling AWS with moto gone).
        self.jobs_lock = threading.Lock()
        self.closing = False
        head = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _authorized(self):
                if self.headers.get("Authorization") != f"Bearer {head.token}":
                    self._send(401, {"error": "Unauthenticated"})
                    return False
                return True

            def do_GET(self):
                if not self._authorized():
                    return
                jobs = [{"submission_id": b["submission_id"], "status": head.status[b["submission_id"]],
                         "metadata": b.get("metadata", {}), "entrypoint": b["entrypoint"]} for b in head.submissions]
                sid = self.path.removeprefix("/api/jobs/").strip("/")
                if not sid:
                    return self._send(200, jobs)
                found = [j for j in jobs if j["submission_id"] == sid]
                return self._send(200, found[0]) if found else self._send(404, {"error": "not found"})

            def do_DELETE(self):
                if not self._authorized():
                    return
                sid = self.path.removeprefix("/api/jobs/").strip("/")
                if head.status.get(sid) not in ("SUCCEEDED", "FAILED", "STOPPED"):
                    return self._send(400, {"error": f"job {sid} is not in a terminal state"})
                head.submissions = [b for b in head.submissions if b["submission_id"] != sid]
                head.deleted.append(sid)
                return self._send(200, True)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if not self._authorized():
                    return
                if head.fail_next:
                    head.fail_next -= 1
                    return self._send(503, {"error": "head restarting"})
                if any(s["submission_id"] == body["submission_id"] for s in head.submissions):
                    return self._send(400, {"error": f"Job with submission_id {body['submission_id']} already exists."})
                with head.jobs_lock:
                    if head.closing:
                        return self._send(503, {"error": "head shutting down"})
                    head.submissions.append(body)
                    head.status[body["submission_id"]] = "RUNNING" if head.run_jobs else "PENDING"
                    if head.run_jobs:
                        t = threading.Thread(target=head._run, args=(body,), daemon=True)
                        t.start()
                        head.threads.append(t)
                return self._send(200, {"submission_id": body["submission_id"], "job_id": None})

            def _send(self, code, payload):
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _run(self, body: dict) -> None:
        import importlib

        from docpipe_local.handlers import applied_env

        module, _, args = body["entrypoint"].removeprefix("python -m ").partition(" ")
        sid = body["submission_id"]
        try:
            if module == "ray_jobs.service":
                # Ray applies the job's runtime_env to the driver; the functions that
                # submitted it have the same values in place, so it is applied once here.
                with applied_env(body.get("runtime_env", {}).get("env_vars", {})):
                    pass
                self._run_service(args.split())
            else:
                with applied_env(body.get("runtime_env", {}).get("env_vars", {})):
                    importlib.import_module(module).main(args.split())
            self.status[sid] = "SUCCEEDED"
        except BaseException:
            self.status[sid] = "FAILED"
            raise

    def _run_service(self, argv: list[str]) -> None:
        import argparse
        from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

        from ray_jobs.service import StageService, run_document

        ap = argparse.ArgumentParser()
        ap.add_argument("--stage")
        ap.add_argument("--queue-url")
        ap.add_argument("--idle-seconds", type=float)
        args = ap.parse_args(argv)
        pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"fake-ray-{args.stage}")
        service = StageService(
            args.stage, args.queue_url, args.idle_seconds,
            submit=lambda stage, job: pool.submit(run_document, stage, job),
            wait=lambda futures, timeout: list(wait(futures, timeout, return_when=FIRST_COMPLETED).done),
            get=lambda f: f.result(), cancel=lambda f: f.cancel(), signalled=self.stop_services)
        self.services.append(service)
        try:
            service.run()
        finally:
            pool.shutdown(wait=True)

    def close(self):
        self.stop_services.set()
        self.server.shutdown()


_sessions: list[object] = []


def _boto3_session():
    """The boto3 session every moto stack of this process creates its resources with: its
    service models are loaded once, not per stack (a new session reloads them, ~0.5 s CPU).
    Made inside mock_aws: moto's stub is on every session made after moto is imported."""
    import boto3

    if not _sessions:
        _sessions.append(boto3.session.Session(region_name="us-east-1"))
    return _sessions[0]


@contextlib.contextmanager
def local_aws_stack(parameters: dict | None = None, secrets: dict | None = None):
    """moto with Step Functions executing the real ASL, every resource of template.yaml
    (deployed with `parameters`), our handlers behind moto's Lambda seam, and S3 uploads
    delivered as EventBridge events to StartExecution. Yields (stack, clients, head)."""
    from moto import mock_aws

    from docpipe_local import eventbridge, handlers, lambda_seam, moto_fixes, resources, template

    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        import boto3

        lambda_seam.install()
        moto_fixes.install()
        eventbridge.install(region_name="us-east-1")
        handlers.forget_modules()
        sm = boto3.client("secretsmanager")
        token = "test-ray-token"
        secret_arn = sm.create_secret(Name="docpipe/ray-token", SecretString=token)["ARN"]
        arns = {name: sm.create_secret(Name=name, SecretString=value)["ARN"]
                for name, value in (secrets or {}).items()}
        head = FakeRayHead(token)
        params = {"RayTokenSecretArn": secret_arn, "RayDashboardUrl": head.url,
                  "UseExistingRayCluster": "true", "RayEntrypointResources": "{}"}
        params.update({k: arns.get(v, v) for k, v in (parameters or {}).items()})
        stack = template.load("docpipe", params)
        resources.create_stack(stack, session=_boto3_session())
        clients = {n: boto3.client(n) for n in ("s3", "stepfunctions", "dynamodb", "sns", "sqs", "lambda")}
        try:
            yield stack, clients, head
        finally:
            with head.jobs_lock:
                head.closing = True
            head.stop_services.set()
            for t in head.threads:
                t.join(timeout=30)
            head.close()
            handlers.forget_modules()


@pytest.fixture
def local_aws(aws_env):
    with local_aws_stack() as env:
        yield env


def wait_for_execution(sfn, arn: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        desc = sfn.describe_execution(executionArn=arn)
        if desc["status"] != "RUNNING":
            return desc
        time.sleep(0.2)
    raise AssertionError(f"execution {arn} still RUNNING after {timeout} s")


def executions_for(sfn, state_machine_arn: str, count: int, timeout: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        execs = sfn.list_executions(stateMachineArn=state_machine_arn)["executions"]
        if len(execs) >= count:
            return execs
        time.sleep(0.1)
    raise AssertionError(f"expected {count} executions, saw {len(execs)}")


def wait_for_messages(clients, queue: str, count: int, timeout: float = 30,
                      attribute: str = "ApproximateNumberOfMessages") -> None:
    """Until the queue's `attribute` (visible messages; NotVisible: received and held)
    reaches `count`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        attrs = clients["sqs"].get_queue_attributes(QueueUrl=queue, AttributeNames=[attribute])
        if int(attrs["Attributes"][attribute]) >= count:
            return
        time.sleep(0.1)
    raise AssertionError(f"{attribute} of {queue} never reached {count}")


def history(sfn, arn: str) -> list[dict]:
    from docpipe_local.executions import execution_history

    return execution_history(sfn, arn)


def entered_states(events: list[dict]) -> list[str]:
    return [e["stateEnteredEventDetails"]["name"] for e in events if "stateEnteredEventDetails" in e]


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory):
    """The real local stack, once per test session: moto server + Ray head (token auth)
    started by `docpipe_local.stack`, with its own DOCPIPE_HOME and free ports."""
    home = tmp_path_factory.mktemp("docpipe-home")
    old = os.environ.get("DOCPIPE_HOME")
    os.environ["DOCPIPE_HOME"] = str(home)
    from docpipe_local import stack

    state = stack.start(moto_port=stack.free_port(), ray_port=stack.free_port(), gcs_port=stack.free_port(),
                        parameters={"StageHeartbeatSeconds": "60"}, echo=lambda *_: None)
    try:
        yield state
    finally:
        stack.stop(echo=lambda *_: None)
        if old is None:
            os.environ.pop("DOCPIPE_HOME", None)
        else:
            os.environ["DOCPIPE_HOME"] = old
