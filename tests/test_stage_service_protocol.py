"""The stage service's side of the task-token protocol, on moto's Step Functions engine
executing the real ASL: the real StageService and run_document, its "Ray" a thread pool.

One named test per path a held document can take besides success: the execution moved on
before the answer, the execution moved on while the document was held, and SIGTERM; and
the cleanup after a round of answers (batched, a failed delete, a death before it).
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

import pytest
from conftest import corpus_file, executions_for, history, wait_for_execution, wait_for_messages

from docpipe import rayjobs
from docpipe.identity import parse_s3_uri
from ray_jobs import jobio
from ray_jobs.service import StageService, beat_interval, run_document, stale

GOOD = "py-pdf-sample-files/004-pdflatex-4-pages/pdflatex-4-pages.pdf"


@pytest.fixture
def waiting_document(local_aws):
    """One upload whose Extract state waits for its token: its message is in the
    extract queue and no service runs (the fake head starts none)."""
    stack, clients, head = local_aws
    head.run_jobs = False
    clients["s3"].put_object(Bucket=stack.outputs["DocumentBucketName"], Key="input/held.pdf",
                             Body=corpus_file(GOOD).read_bytes())
    [execution] = executions_for(clients["stepfunctions"], stack.outputs["IngestDocumentStateMachineArn"], 1)
    queue = stack.outputs["ExtractQueueUrl"]
    wait_for_messages(clients, queue, 1)
    return stack, clients, execution["executionArn"], queue


def service_on(queue: str, submit, signalled=None, capacity=None) -> StageService:
    pool = ThreadPoolExecutor(2)
    return StageService("extract", queue, idle_seconds=1, signalled=signalled, capacity=capacity,
                        submit=submit or (lambda stage, job: pool.submit(run_document, stage, job)),
                        wait=lambda fs, timeout: list(wait(fs, timeout, return_when=FIRST_COMPLETED).done),
                        get=lambda f: f.result(), cancel=lambda f: f.cancel())


def queue_is_empty(clients, queue: str) -> bool:
    a = clients["sqs"].get_queue_attributes(QueueUrl=queue, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return a["ApproximateNumberOfMessages"] == "0" and a["ApproximateNumberOfMessagesNotVisible"] == "0"


def move_on(clients, stack, arn: str) -> None:
    """The execution moves on without this holder: its task is answered elsewhere (a
    timed-out holder's retry answered first, an operator...). moto keeps accepting
    answers for a stopped execution's token, so the token is answered instead."""
    [key] = job_files(clients, stack)
    job = json.loads(clients["s3"].get_object(Bucket=stack.outputs["DocumentBucketName"], Key=key)["Body"].read())
    clients["stepfunctions"].send_task_failure(taskToken=job["task_token"], error="StageFailed",
                                               cause="answered elsewhere by the test")
    wait_for_execution(clients["stepfunctions"], arn, timeout=30)


def job_files(clients, stack) -> list[str]:
    listing = clients["s3"].list_objects_v2(Bucket=stack.outputs["DocumentBucketName"], Prefix="jobs/")
    return [o["Key"] for o in listing.get("Contents", [])]


def test_late_answer_for_a_token_whose_execution_moved_on_is_dropped(waiting_document):
    stack, clients, arn, queue = waiting_document
    gate = threading.Event()
    pool = ThreadPoolExecutor(1)
    service = service_on(queue, lambda stage, job: pool.submit(lambda: (gate.wait(30), run_document(stage, job))[1]))
    assert service.receive_once(1) == 1
    move_on(clients, stack, arn)
    gate.set()  # the document finishes after its execution moved on
    deadline = time.monotonic() + 60
    while service.held and time.monotonic() < deadline:
        service.collect(timeout=1)  # would raise if the refused answer were an error
    assert service.counts == {"received": 1, "late": 1}
    assert queue_is_empty(clients, queue), "the message is deleted all the same"
    assert job_files(clients, stack) == [], "and the job file with the dead token"
    assert clients["stepfunctions"].describe_execution(executionArn=arn)["status"] == "FAILED"


def test_held_token_whose_execution_moved_on_is_dropped_at_its_heartbeat(waiting_document):
    stack, clients, arn, queue = waiting_document
    never = Future()  # a document still queued in Ray
    service = service_on(queue, lambda stage, job: never)
    assert service.receive_once(1) == 1
    [held] = service.held.values()
    move_on(clients, stack, arn)
    held.next_beat = 0
    service.beat_due()
    assert service.held == {} and service.counts["dropped"] == 1
    assert never.cancelled(), "its work is cancelled"
    assert queue_is_empty(clients, queue) and job_files(clients, stack) == []


def test_a_redelivered_message_whose_execution_moved_on_is_dropped_before_it_runs(waiting_document):
    """A message comes back after its holder died (SIGKILL, a lost node): by then its
    token timed out and the state retried under a new submission. The service asks the
    token first (a heartbeat) and drops the document instead of running it for nothing."""
    stack, clients, arn, queue = waiting_document
    [msg] = clients["sqs"].receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]  # the holder that died
    move_on(clients, stack, arn)
    clients["sqs"].change_message_visibility(QueueUrl=queue, ReceiptHandle=msg["ReceiptHandle"], VisibilityTimeout=0)
    submitted = []
    service = service_on(queue, lambda stage, job: submitted.append(job) or Future())
    assert service.receive_once(1) == 1
    assert submitted == [] and service.held == {}
    assert service.counts == {"dropped": 1}
    assert queue_is_empty(clients, queue) and job_files(clients, stack) == []


def test_a_redelivered_message_runs_when_its_token_cannot_be_asked(waiting_document):
    """The check at receipt is a shortcut, not a gate: when Step Functions cannot be
    reached, the document runs (and its answer settles whether anyone still waits)."""
    from botocore.exceptions import EndpointConnectionError

    stack, clients, arn, queue = waiting_document
    [msg] = clients["sqs"].receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]
    clients["sqs"].change_message_visibility(QueueUrl=queue, ReceiptHandle=msg["ReceiptHandle"], VisibilityTimeout=0)
    submitted = []
    service = service_on(queue, lambda stage, job: submitted.append(job) or Future())

    class Unreachable:
        def send_task_heartbeat(self, **_):
            raise EndpointConnectionError(endpoint_url="https://states.us-east-1.amazonaws.com")

    service.sfn = Unreachable()
    assert service.receive_once(1) == 1
    assert len(submitted) == 1 and list(service.held) == [json.loads(msg["Body"])["submission_id"]]
    move_on(clients, stack, arn)


def test_only_a_redelivered_or_long_queued_message_is_checked_before_it_runs():
    fresh = {"Attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": str(int(time.time() * 1000))}}
    assert not stale(fresh, beat_interval(300)) and not stale({}, beat_interval(300))
    assert stale({"Attributes": {**fresh["Attributes"], "ApproximateReceiveCount": "2"}}, beat_interval(300))
    queued = {"Attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": str(int((time.time() - 30) * 1000))}}
    assert stale(queued, beat_interval(60)), "a heartbeat (every 20 s at HeartbeatSeconds 60) was due while it waited"
    assert not stale(queued, beat_interval(300)), "every 60 s at HeartbeatSeconds 300: none due yet"


def test_sigterm_answers_held_documents_with_job_interrupted_and_the_state_retries(waiting_document):
    stack, clients, arn, queue = waiting_document
    signalled = threading.Event()
    never = Future()
    service = service_on(queue, lambda stage, job: never, signalled=signalled)
    assert service.receive_once(1) == 1
    signalled.set()  # what the SIGTERM handler of a real service sets
    service.run()
    assert service.counts["failed"] == 1 and never.cancelled()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        events = history(clients["stepfunctions"], arn)
        failures = [e for e in events if e["type"] == "TaskFailed"]
        scheduled = [e for e in events if e["type"] == "TaskScheduled"]
        if failures and len(scheduled) >= 2:
            break
        time.sleep(0.2)
    assert failures[0]["taskFailedEventDetails"]["error"] == "JobInterrupted"
    assert len(scheduled) == 2, "the Extract state's Retry submitted the document again"
    # The retry went to the queue under a new submission id, for the next generation.
    # The retry's SubmitRayJob runs after its TaskScheduled event: on a loaded machine its
    # message can land later than one 5-second receive.
    deadline, msgs = time.monotonic() + 30, []
    while not msgs and time.monotonic() < deadline:
        msgs = clients["sqs"].receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
    [msg] = msgs
    assert json.loads(msg["Body"])["submission_id"].endswith("-r1")
    move_on(clients, stack, arn)  # end it: answer the retry's token


def test_a_message_received_after_sigterm_is_handed_back_not_held(waiting_document):
    """SIGTERM lands while the receive thread waits in a long poll: what that poll returns
    goes back to the queue, visible at once, for the next service (not held by a process
    that is leaving, hidden for the visibility timeout)."""
    stack, clients, arn, queue = waiting_document
    signalled = threading.Event()
    submitted = []
    service = service_on(queue, lambda stage, job: submitted.append(job) or Future(), signalled=signalled)
    signalled.set()
    assert service.receive_once(1) == 0
    assert submitted == [] and service.held == {}
    msgs = clients["sqs"].receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1)["Messages"]
    assert len(msgs) == 1 and json.loads(msgs[0]["Body"])["submission_id"]
    move_on(clients, stack, arn)


class LongPollAtSQS:
    """The service's SQS client, its receive held open as a long poll is at SQS until a
    message arrives: `arrive` lets it return."""

    def __init__(self, sqs):
        self.sqs, self.polling, self.arrive = sqs, threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self.sqs, name)

    def receive_message(self, **kwargs):
        self.polling.set()
        self.arrive.wait(30)
        return self.sqs.receive_message(**kwargs)


def test_sigterm_waits_for_the_long_poll_in_flight_and_hands_back_what_it_returns(waiting_document):
    """SIGTERM while the receive thread is inside a long poll: the service ends only once
    that poll came back, and the message it returned is visible again at once. A process
    that exited first left its request open at SQS (moto alike), which was still handed
    the next message, hidden from every later service for the visibility timeout (600 s):
    the document waited out a heartbeat timeout and a retry (the bench's ~5-minute
    restarts, docs/performance.md, ninth pass)."""
    stack, clients, arn, queue = waiting_document
    signalled = threading.Event()
    service = service_on(queue, lambda stage, job: Future(), signalled=signalled)
    service.idle_seconds = 600  # only the signal ends it
    service.sqs = sqs = LongPollAtSQS(service.sqs)
    runner = threading.Thread(target=service.run, daemon=True)
    runner.start()
    assert sqs.polling.wait(10), "the service never polled its queue"
    signalled.set()
    runner.join(timeout=3)
    assert runner.is_alive(), "the service ended while its long poll was still open at SQS"
    sqs.arrive.set()
    runner.join(timeout=30)
    assert not runner.is_alive()
    assert service.held == {} and service.counts["received"] == 0
    msgs = clients["sqs"].receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1)["Messages"]
    assert len(msgs) == 1, "the message the last poll returned is visible for the next service"
    move_on(clients, stack, arn)
    # The wait is at most the receive wait + 5 s; SQS allows 20 s polls at most, and Ray
    # must not SIGKILL the service before the wait ends.
    assert rayjobs.SERVICE_STOP_WAIT_S > 20 + 5


def test_documents_past_capacity_stay_held_and_run_in_the_order_received(local_aws):
    """The service puts no more documents into Ray than the cluster has CPUs (each extra
    one made Ray start a worker process that a warm worker then beat to the task). The
    others stay held, in the order received, and every one is answered."""
    stack, clients, head = local_aws
    head.run_jobs = False
    bucket = stack.outputs["DocumentBucketName"]
    for i in range(3):
        clients["s3"].put_object(Bucket=bucket, Key=f"input/cap-{i}.pdf", Body=corpus_file(GOOD).read_bytes())
    executions = executions_for(clients["stepfunctions"], stack.outputs["IngestDocumentStateMachineArn"], 3)
    queue = stack.outputs["ExtractQueueUrl"]
    wait_for_messages(clients, queue, 3)
    deadline = time.monotonic() + 30
    pool = ThreadPoolExecutor(4)
    in_ray: list[str] = []  # submission ids in Ray now
    peak, order = [0], []

    def submit(stage, job):
        sid = job["submission_id"]
        in_ray.append(sid)
        order.append(sid)
        peak[0] = max(peak[0], len(in_ray))

        def run():
            try:
                return run_document(stage, job)
            finally:
                in_ray.remove(sid)
        return pool.submit(run)

    service = service_on(queue, submit, capacity=lambda: 1)
    received = 0
    while received < 3 and time.monotonic() < deadline:
        received += service.receive_once(1)
    assert received == 3 and len(service.held) == 3 and len(order) == 1
    taken = [h.sid for h in service.held.values()]  # dict order: as received
    while service.held and time.monotonic() < deadline + 60:
        service.collect(timeout=1)
    assert peak[0] == 1 and order == taken
    assert service.counts["succeeded"] == 3 and queue_is_empty(clients, queue)
    for e in executions:  # each execution moved past Extract
        events = history(clients["stepfunctions"], e["executionArn"])
        assert any(ev["type"] == "TaskSucceeded" for ev in events)


def test_the_next_document_starts_before_the_finished_one_is_answered(local_aws):
    """A finished document leaves Ray before its answer (SendTaskSuccess, then the round's
    deletes): the next held one takes its CPU first, and the cap holds."""
    stack, clients, head = local_aws
    head.run_jobs = False
    bucket = stack.outputs["DocumentBucketName"]
    for i in range(2):
        clients["s3"].put_object(Bucket=bucket, Key=f"input/next-{i}.pdf", Body=corpus_file(GOOD).read_bytes())
    executions_for(clients["stepfunctions"], stack.outputs["IngestDocumentStateMachineArn"], 2)
    queue = stack.outputs["ExtractQueueUrl"]
    wait_for_messages(clients, queue, 2)
    deadline = time.monotonic() + 60
    pool = ThreadPoolExecutor(2)
    steps: list[tuple[str, str]] = []

    def submit(stage, job):
        steps.append(("submit", job["submission_id"]))
        return pool.submit(run_document, stage, job)

    service = service_on(queue, submit, capacity=lambda: 1)
    answer = service.answer

    def recording_answer(held, result, **kwargs):
        steps.append(("answer", held.sid))
        return answer(held, result, **kwargs)

    service.answer = recording_answer  # type: ignore[method-assign]
    received = 0
    while received < 2 and time.monotonic() < deadline:
        received += service.receive_once(1)
    [first, second] = [h.sid for h in service.held.values()]
    while service.held and time.monotonic() < deadline:
        service.collect(timeout=1)
    assert steps == [("submit", first), ("submit", second), ("answer", first), ("answer", second)]
    assert service.counts["succeeded"] == 2 and queue_is_empty(clients, queue)


def waiting_documents(local_aws, count: int, name: str):
    """`count` uploads whose Extract states wait for their tokens, their messages in the
    extract queue (the fake head starts no service)."""
    stack, clients, head = local_aws
    head.run_jobs = False
    for i in range(count):
        clients["s3"].put_object(Bucket=stack.outputs["DocumentBucketName"], Key=f"input/{name}-{i}.pdf",
                                 Body=corpus_file(GOOD).read_bytes())
    executions_for(clients["stepfunctions"], stack.outputs["IngestDocumentStateMachineArn"], count)
    queue = stack.outputs["ExtractQueueUrl"]
    wait_for_messages(clients, queue, count)
    return stack, clients, queue


def gated(pool: ThreadPoolExecutor, gate: threading.Event, futures: list):
    """A submit whose documents run once `gate` is set (so they finish in one round)."""
    def submit(stage, job):
        future = pool.submit(lambda: (gate.wait(30), run_document(stage, job))[1])
        futures.append(future)
        return future
    return submit


def receive_all(service: StageService, count: int) -> None:
    received, deadline = 0, time.monotonic() + 30
    while received < count and time.monotonic() < deadline:
        received += service.receive_once(1)
    assert received == count


class RecordedDeletes:
    """A client whose delete calls are recorded (operation, parameters), then made."""

    def __init__(self, client):
        self.client, self.calls = client, []

    def __getattr__(self, name):
        attr = getattr(self.client, name)
        if not name.startswith("delete"):
            return attr

        def call(**kwargs):
            self.calls.append((name, kwargs))
            return attr(**kwargs)
        return call


def test_documents_answered_in_one_round_are_cleaned_up_with_one_batch_delete_each(local_aws, monkeypatch):
    """Documents that finish in the same round are answered one by one, then cleaned up
    together: one DeleteMessageBatch with all their receipts and one DeleteObjects with all
    their job files, not a DeleteMessage and a DeleteObject each."""
    stack, clients, queue = waiting_documents(local_aws, 3, "batch")
    gate, futures = threading.Event(), []
    service = service_on(queue, gated(ThreadPoolExecutor(3), gate, futures))
    service.sqs = sqs = RecordedDeletes(service.sqs)
    s3 = RecordedDeletes(jobio.s3())
    monkeypatch.setattr(jobio, "s3", lambda: s3)
    receive_all(service, 3)
    receipts = sorted(h.receipt for h in service.held.values())
    keys = sorted(parse_s3_uri(h.job_uri)[1] for h in service.held.values())
    assert set(keys) <= set(job_files(clients, stack))
    gate.set()
    wait(futures, timeout=120)  # all three done: one collect round answers them
    assert service.collect(timeout=1) == 3
    assert service.counts["succeeded"] == 3 and service.held == {}
    [(op, batch)] = sqs.calls
    assert op == "delete_message_batch" and sorted(e["ReceiptHandle"] for e in batch["Entries"]) == receipts
    [(op, objects)] = s3.calls
    assert op == "delete_objects" and sorted(o["Key"] for o in objects["Delete"]["Objects"]) == keys
    assert queue_is_empty(clients, queue), "the messages are gone, not just hidden"
    # (Each execution moved on to Embed, whose own job file is in jobs/ now.)
    assert set(keys).isdisjoint(job_files(clients, stack)), "and so are their job files"


class FailsOneDelete:
    """The service's SQS client; DeleteMessageBatch fails its first entry (SQS answers per
    entry: a batch can succeed in part) and deletes the others."""

    def __init__(self, sqs):
        self.sqs, self.failed = sqs, []

    def __getattr__(self, name):
        return getattr(self.sqs, name)

    def delete_message_batch(self, QueueUrl, Entries):
        first, rest = Entries[0], Entries[1:]
        self.failed.append(first["ReceiptHandle"])
        resp = self.sqs.delete_message_batch(QueueUrl=QueueUrl, Entries=rest) if rest else {}
        return {**resp, "Failed": [*resp.get("Failed", []), {"Id": first["Id"], "SenderFault": False,
                                                             "Code": "InternalError", "Message": "try again"}]}


def test_a_message_the_batch_delete_fails_is_logged_and_the_service_goes_on(local_aws, caplog):
    """A Failed entry in DeleteMessageBatch's answer is a warning, not an error: the other
    documents are cleaned up, and the message left behind, when it comes back, is deleted as
    one already answered (not run again)."""
    stack, clients, queue = waiting_documents(local_aws, 2, "fails")
    gate, futures = threading.Event(), []
    service = service_on(queue, gated(ThreadPoolExecutor(2), gate, futures))
    service.sqs = sqs = FailsOneDelete(service.sqs)
    receive_all(service, 2)
    keys = [parse_s3_uri(h.job_uri)[1] for h in service.held.values()]
    gate.set()
    wait(futures, timeout=120)
    with caplog.at_level("WARNING"):
        assert service.collect(timeout=1) == 2
    assert service.counts["succeeded"] == 2 and service.held == {}
    [warning] = [r for r in caplog.records if r.getMessage() == "message not deleted"]
    assert warning.levelname == "WARNING" and warning.code == "InternalError"
    assert set(keys).isdisjoint(job_files(clients, stack)), "both job files are deleted all the same"
    wait_for_messages(clients, queue, 1, attribute="ApproximateNumberOfMessagesNotVisible")
    # Its visibility timeout ends: the service receives it again and deletes it.
    [receipt] = sqs.failed
    clients["sqs"].change_message_visibility(QueueUrl=queue, ReceiptHandle=receipt, VisibilityTimeout=0)
    assert service.receive_once(1) == 1
    assert len(futures) == 2 and service.held == {} and service.counts["received"] == 2
    assert queue_is_empty(clients, queue)


class ClosedTasksRefuseHeartbeats:
    """The services' Step Functions client, with AWS's answer to a heartbeat on a token it
    answered: TaskTimedOut, "the task associated with the token has already been closed"
    (SendTaskHeartbeat's errors). moto still accepts one while the execution runs on (its
    callback endpoint outlives the answer)."""

    def __init__(self, sfn):
        self.sfn, self.closed = sfn, set()

    def __getattr__(self, name):
        return getattr(self.sfn, name)

    def send_task_success(self, **kwargs):
        self.sfn.send_task_success(**kwargs)
        self.closed.add(kwargs["taskToken"])

    def send_task_heartbeat(self, **kwargs):
        if kwargs["taskToken"] in self.closed:
            from botocore.exceptions import ClientError

            raise ClientError({"Error": {"Code": "TaskTimedOut", "Message": "Provided task does not exist anymore"}},
                              "SendTaskHeartbeat")
        return self.sfn.send_task_heartbeat(**kwargs)


def test_an_answered_document_whose_cleanup_never_ran_is_dropped_when_its_message_comes_back(waiting_document):
    """A round's answers are sent before its batched delete. A service that dies in between
    leaves answered messages in the queue: each comes back as a re-delivery, so its token is
    asked first (a heartbeat, refused: the task is closed) and the document is dropped and
    cleaned up, not run a second time."""
    stack, clients, _, queue = waiting_document
    pool = ThreadPoolExecutor(1)
    dying = service_on(queue, lambda stage, job: pool.submit(run_document, stage, job))
    dying.sfn = sfn = ClosedTasksRefuseHeartbeats(dying.sfn)
    dying._cleanup_many = lambda helds: None  # type: ignore[method-assign]  # it dies before its deletes
    assert dying.receive_once(1) == 1
    [held] = dying.held.values()
    key = parse_s3_uri(held.job_uri)[1]
    deadline = time.monotonic() + 120
    while dying.held and time.monotonic() < deadline:
        dying.collect(timeout=1)
    assert dying.counts["succeeded"] == 1 and key in job_files(clients, stack)
    # Its visibility timeout ends.
    clients["sqs"].change_message_visibility(QueueUrl=queue, ReceiptHandle=held.receipt, VisibilityTimeout=0)
    submitted: list = []
    service = service_on(queue, lambda stage, job: submitted.append(job) or Future())
    service.sfn = sfn
    assert service.receive_once(1) == 1
    assert submitted == [] and service.held == {} and service.counts == {"dropped": 1}
    assert queue_is_empty(clients, queue) and key not in job_files(clients, stack)


def test_cluster_cpus_is_at_least_one_and_follows_workers_that_join():
    """The service's capacity: the cluster's CPUs, re-read every few seconds (workers that
    join are used), at least 1 (on AWS the head has none and workers scale out from zero),
    the last value kept while the GCS does not answer."""
    from ray_jobs.service import ClusterCpus

    answers: list = [0, 4, RuntimeError("GCS restarting"), 8]

    def read() -> int:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    cpus = ClusterCpus(read, every_s=0.0)
    assert [cpus(), cpus(), cpus(), cpus()] == [1, 4, 4, 8]
    cached = ClusterCpus(read, every_s=3600.0)
    answers[:] = [2, 6]
    assert [cached(), cached()] == [2, 2] and answers == [6]


def test_a_document_task_reports_its_worker_processes_cpu_and_the_answer_logs_it(monkeypatch, caplog):
    """run_document measures the CPU its worker process spent on the document (the bench
    sets it against bare's per document: docs/performance.md); the service's "document
    answered" line carries it, so a user sees each document's cost in the job log."""
    from ray_jobs import service

    def busy(job, callback):
        end = time.process_time() + 0.2
        while time.process_time() < end:  # CPU, not a sleep: a sleep costs none
            pass
        return {"chunks": 1}

    monkeypatch.setattr(service, "stage_work", lambda stage: busy)
    result = run_document("embed", {"registration": {"document_id": "d"}})
    assert result["ok"] and result["output"] == {"chunks": 1}
    assert result["cpu_s"] >= 0.2 and result["seconds"] > 0

    class NoAws(StageService):
        def __init__(self):  # answer() needs only these
            self.stage, self.lock, self.held, self.answered = "embed", threading.Lock(), {}, {}
            self.counts = {"succeeded": 0, "failed": 0}
            self.sfn = type("Sfn", (), {"send_task_success": lambda self, **kw: None})()

        def _cleanup(self, held):
            pass

    from ray_jobs.service import Held

    svc = NoAws()
    held = Held("sid-1", {"registration": {"document_id": "d"}, "task_token": "t"}, "s3://b/k", "r")
    svc.held["sid-1"] = held
    with caplog.at_level("INFO"):
        svc.answer(held, result)
    [line] = [r for r in caplog.records if r.getMessage() == "document answered"]
    assert line.task_cpu_s == result["cpu_s"] and line.document_id == "d" and line.ok is True
