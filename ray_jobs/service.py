"""Stage service: one long-lived Ray job per stage, fed by that stage's SQS queue.

`python -m ray_jobs.service --stage extract|embed --queue-url URL [--idle-seconds N]`

Submitted by SubmitRayJob / PublishBacklog (docpipe.rayjobs.ensure_service) with a
deterministic, generation-numbered submission id. The driver:
- long-polls the queue and holds every document it receives (nothing waits where it
  cannot heartbeat: a document waiting in Ray's task queue is held, and so heartbeated);
- runs each document as one Ray task (`num_cpus=1` plus DOCPIPE_TASK_RESOURCES, so none
  lands on the head) in the job's worker processes, where the model, tokenizer, clients
  and imports stay warm (ray_jobs.warm), no more in Ray at once than the cluster has CPUs
  (StageService.dispatch); Ray retries a task whose worker died;
- heartbeats every held token, keeps the held messages invisible, answers each token
  exactly once, then deletes the message and the job file (batched per round of answers:
  a DeleteMessageBatch per 10 messages, a DeleteObjects per bucket);
- drops a token that answers TaskTimedOut / InvalidToken (its execution moved on: the
  state's Retry already submitted it again, or it failed);
- exits after `--idle-seconds` with nothing held and nothing received; on SIGTERM stops
  receiving and answers what it holds with JobInterrupted (the state retries it at once,
  which starts the next generation) instead of leaving the tokens to time out.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from botocore.config import Config
from botocore.exceptions import ClientError

from docpipe import aws
from docpipe.config import Settings
from docpipe.errors import DocpipeError, JobInterrupted, StageFailed
from ray_jobs import jobio
from ray_jobs.callback import GONE_CODES, MAX_CAUSE
from ray_jobs.log import emit, emit_error, emit_warning, setup_process
from ray_jobs.settings import StageSettings

# Answers and heartbeats share one token bucket per account and region: a burst is
# throttled, not refused, so retry with backoff rather than lose an answer. One constant:
# docpipe.aws caches a client per Config object.
CLIENT_CONFIG = Config(retries={"max_attempts": 10, "mode": "standard"}, max_pool_connections=16)
MAX_HELD = 20000  # documents held at once; past it the service stops receiving for a moment
TASK_MAX_RETRIES = 3  # worker process or node died mid-document: Ray runs it again
WARM_UP_MAX = 64  # worker processes warmed when the service starts (one per CPU up to this)


def stage_work(stage: str) -> Callable[[dict[str, Any], Any], dict[str, Any]]:
    if stage == "extract":
        from ray_jobs.extract import extract_document

        return extract_document
    if stage == "embed":
        from ray_jobs.embed import embed_document

        return embed_document
    raise ValueError(f"unknown stage {stage!r}")


def run_document(stage: str, job: dict[str, Any]) -> dict[str, Any]:
    """The body of one document's Ray task. Errors come back as values: the driver
    answers the token with the stable code, whatever Ray does with exceptions."""
    t0, c0 = time.monotonic(), time.process_time()
    try:
        output = stage_work(stage)(job, None)
        # cpu_s: the worker process's CPU over the document (all its threads; the PDF
        # parse children are processes of their own), against bench.bare's per document.
        return {"ok": True, "output": output, "pid": os.getpid(), "seconds": round(time.monotonic() - t0, 3),
                "cpu_s": round(time.process_time() - c0, 3)}
    except DocpipeError as err:
        return {"ok": False, "error": err.code, "cause": str(err) or err.code, "pid": os.getpid()}
    except Exception as err:  # any crash still answers the task token
        return {"ok": False, "error": StageFailed.__name__, "cause": f"{type(err).__name__}: {err}"[:1000],
                "pid": os.getpid()}


def warm_up_worker(stage: str) -> int:
    from ray_jobs import warm

    return warm.warm_up(stage)


def task_resources() -> dict[str, Any]:
    """Custom resources every document task asks for (the Ray containers set
    DOCPIPE_TASK_RESOURCES to one only workers offer); empty on a one-node cluster."""
    return StageSettings.from_env().task_resources


def beat_interval(heartbeat_seconds: float) -> float:
    """Per token: well inside the state's HeartbeatSeconds, yet with thousands held no
    more often than needed (SendTaskHeartbeat shares a token bucket with the answers)."""
    floor = StageSettings.from_env().heartbeat_interval_seconds
    return max(1.0, min(max(floor, heartbeat_seconds / 4), heartbeat_seconds / 3, 60.0))


def stale(msg: dict[str, Any], interval_s: float) -> bool:
    """Whether a message's token may have timed out before we received it: a re-delivery
    (its holder died or let it go) or one that waited in the queue past its heartbeat
    interval (`beat_interval`). Such a token is heartbeated before its document runs, so a document whose
    execution moved on (and retried under a new submission) is not run a second time for
    nothing; a fresh message costs no call."""
    attrs = msg.get("Attributes") or {}
    if int(attrs.get("ApproximateReceiveCount", "1")) > 1:
        return True
    sent_ms = int(attrs.get("SentTimestamp", "0"))
    return bool(sent_ms) and time.time() - sent_ms / 1000 >= interval_s


@dataclass
class Held:
    sid: str
    job: dict[str, Any]
    job_uri: str
    receipt: str
    ref: Any = None
    received: float = field(default_factory=time.monotonic)
    next_beat: float = 0.0
    visible_at: float = 0.0

    @property
    def token(self) -> str:
        return str(self.job["task_token"])


class StageService:
    def __init__(self, stage: str, queue_url: str, idle_seconds: float, *,
                 submit: Callable[[str, dict[str, Any]], Any],
                 wait: Callable[[list[Any], float], list[Any]],
                 get: Callable[[Any], dict[str, Any]],
                 cancel: Callable[[Any], object],
                 capacity: Callable[[], int] | None = None,
                 sqs: Any = None, sfn: Any = None, signalled: threading.Event | None = None):
        self.stage, self.queue_url, self.idle_seconds = stage, queue_url, idle_seconds
        self.sqs = sqs or aws.client("sqs", config=CLIENT_CONFIG)
        self.sfn = sfn or aws.client("stepfunctions", config=CLIENT_CONFIG)
        self._submit, self._wait, self._get, self._cancel = submit, wait, get, cancel
        # How many documents may be in Ray at once (None: all it holds). The rest stay held
        # here, heartbeated, in the order received. See dispatch().
        self._capacity = capacity
        self.waiting: collections.deque[Held] = collections.deque()
        self.signalled = signalled or SIGNALLED  # SIGTERM (or the caller) asks it to stop
        self.held: dict[str, Held] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.answered: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.last_activity = time.monotonic()
        self.counts: collections.Counter[str] = collections.Counter()
        attrs = self.sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["VisibilityTimeout"])
        self.visibility_s = int(attrs["Attributes"].get("VisibilityTimeout", "30"))
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="sfn")
        self.receive_wait_s = StageSettings.from_env().receive_wait_seconds

    # --- receiving ---------------------------------------------------------------------
    def receive_once(self, wait_s: int) -> int:
        resp = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=wait_s,
                                        MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"])
        messages = resp.get("Messages", [])
        if messages and self.signalled.is_set():
            # SIGTERM came while this receive was waiting: hand the messages straight back
            # (visible now) instead of holding documents this process will never run.
            self._release(messages)
            return 0
        for msg in messages:
            self._take(msg)
        if messages:
            self.last_activity = time.monotonic()
        return len(messages)

    def _release(self, messages: list[dict[str, Any]]) -> None:
        try:
            self.sqs.change_message_visibility_batch(QueueUrl=self.queue_url, Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
                for i, m in enumerate(messages)])
        except ClientError as err:  # they come back when their visibility timeout ends
            emit_warning(message="messages not released", stage=self.stage, code=err.response["Error"]["Code"])
        emit(message="messages released", stage=self.stage, count=len(messages), reason="SIGTERM")

    def _take(self, msg: dict[str, Any]) -> None:
        try:
            body = json.loads(msg["Body"])
            sid, job_uri = body["submission_id"], body["job_uri"]
        except (ValueError, KeyError, TypeError):
            emit(message="malformed queue message dropped", stage=self.stage, message_id=msg.get("MessageId"))
            self._delete_message(msg["ReceiptHandle"])
            return
        with self.lock:
            if sid in self.held:
                return  # a duplicate delivery of what we already hold
            if sid in self.answered:
                self._delete_message(msg["ReceiptHandle"])
                return
        try:
            job = jobio.read_json(job_uri)
        except ClientError as err:
            if err.response["Error"]["Code"] in ("NoSuchKey", "404"):
                # Answered and cleaned up by an earlier holder: a re-delivery.
                self._delete_message(msg["ReceiptHandle"])
                return
            raise
        now = time.monotonic()
        limit = float(job["registration"].get("limits", {}).get("heartbeat_seconds", 300))
        interval = beat_interval(limit)
        held = Held(sid, job, job_uri, msg["ReceiptHandle"], received=now,
                    next_beat=now + interval, visible_at=now + self.visibility_s)
        with self.lock:
            self.held[sid] = held
        if stale(msg, interval):
            try:
                self._beat(held)  # drops it if its execution moved on while it waited
            except Exception as err:  # only a shortcut: in doubt, the document runs
                emit_warning(message="heartbeat at receipt failed", stage=self.stage, submission_id=sid,
                             error=type(err).__name__)
            if sid not in self.held:
                return
        with self.lock:
            self.waiting.append(held)
        self.dispatch()
        self.counts["received"] += 1
        emit(message="document received", stage=self.stage, submission_id=sid,
             document_id=job["registration"]["document_id"], held=len(self.held))

    def dispatch(self) -> int:
        """Hand waiting documents to Ray, up to `capacity` in Ray at once; returns how many.

        Ray's task submitter asks the raylet for a worker lease per queued task. A lease
        granted while this job has no idle worker starts a new worker process (~1.2 CPU s
        of imports on the local stack), and when a warm worker takes the task first the new
        process stays idle: measured, 2 to 5 such processes per stage service at the start
        of a 20-document burst. With no more tasks in Ray than the cluster has CPUs, a
        granted lease finds the job's warm worker idle."""
        sent = 0
        with self.lock:
            room = len(self.waiting) if self._capacity is None else \
                self._capacity() - sum(1 for h in self.held.values() if h.ref is not None)
            while self.waiting and room > 0:
                held = self.waiting.popleft()
                if self.held.get(held.sid) is not held:
                    continue  # dropped or answered while waiting
                held.ref = self._submit(self.stage, held.job)
                room -= 1
                sent += 1
        return sent

    def receive_loop(self) -> None:
        while not self.stopping.is_set():
            if len(self.held) >= MAX_HELD:
                time.sleep(0.5)
                continue
            try:
                self.receive_once(self.receive_wait_s)
            except Exception as err:  # a queue hiccup must not end the service
                emit_warning(message="receive failed", stage=self.stage, error=type(err).__name__, cause=str(err)[:300])
                time.sleep(2)

    # --- heartbeats and visibility -------------------------------------------------------
    def beat_due(self) -> None:
        now = time.monotonic()
        with self.lock:
            due = [h for h in self.held.values() if h.next_beat <= now]
            extend = [h for h in self.held.values() if h.visible_at - now < self.visibility_s / 2]
        for held, ok in zip(due, self.pool.map(self._beat, due), strict=True):
            if ok:
                limit = float(held.job["registration"].get("limits", {}).get("heartbeat_seconds", 300))
                held.next_beat = time.monotonic() + beat_interval(limit)
        for start in range(0, len(extend), 10):
            batch = extend[start:start + 10]
            try:
                self.sqs.change_message_visibility_batch(QueueUrl=self.queue_url, Entries=[
                    {"Id": str(i), "ReceiptHandle": h.receipt, "VisibilityTimeout": self.visibility_s}
                    for i, h in enumerate(batch)])
                for h in batch:
                    h.visible_at = time.monotonic() + self.visibility_s
            except ClientError as err:
                emit_warning(message="visibility not extended", stage=self.stage, code=err.response["Error"]["Code"])

    def _beat(self, held: Held) -> bool:
        try:
            self.sfn.send_task_heartbeat(taskToken=held.token)
            return True
        except ClientError as err:
            code = err.response["Error"]["Code"]
            if code in GONE_CODES:
                self._drop(held, code)
            else:
                emit_warning(message="heartbeat failed", stage=self.stage, submission_id=held.sid, code=code)
            return False

    def beat_loop(self) -> None:
        while not self.stopping.wait(1.0):
            try:
                self.beat_due()
            except Exception as err:
                emit_warning(message="heartbeat pass failed", stage=self.stage, error=type(err).__name__, cause=str(err)[:300])

    def _drop(self, held: Held, code: str) -> None:
        """The execution no longer waits for this token: stop the work, forget it."""
        with self.lock:
            if self.held.pop(held.sid, None) is None:
                return
            self._remember(held.sid)
        if held.ref is not None:
            self._cancel(held.ref)
        self._cleanup(held)
        self.counts["dropped"] += 1
        emit(message="token no longer waiting; document dropped", stage=self.stage,
             submission_id=held.sid, code=code)

    # --- answers ---------------------------------------------------------------------------
    def answer(self, held: Held, result: dict[str, Any], *, cleanup: bool = True) -> bool:
        """Answer the token once; False if it was dropped meanwhile (and cleaned up then).
        `cleanup=False`: the caller deletes the message and the job file (_cleanup_many)."""
        with self.lock:
            if self.held.pop(held.sid, None) is None:
                return False  # dropped meanwhile
            self._remember(held.sid)
        try:
            if result.get("ok"):
                self.sfn.send_task_success(taskToken=held.token, output=json.dumps(result["output"], default=str))
            else:
                self.sfn.send_task_failure(taskToken=held.token, error=result["error"][:256],
                                           cause=(result.get("cause") or result["error"])[:MAX_CAUSE])
            self.counts["succeeded" if result.get("ok") else "failed"] += 1
        except ClientError as err:
            code = err.response["Error"]["Code"]
            if code in GONE_CODES:
                # A late answer: the execution moved on (timed out and retried, or stopped).
                self.counts["late"] += 1
                emit(message="late answer dropped", stage=self.stage, submission_id=held.sid, code=code)
            else:
                # Not answered even after the client's retries: the token goes silent and
                # the state retries the stage; the service goes on with the others.
                self.counts["unanswered"] += 1
                emit_warning(message="answer failed; the state will retry", stage=self.stage, submission_id=held.sid,
                     code=code, cause=str(err)[:300])
        if cleanup:
            self._cleanup(held)
        self.last_activity = time.monotonic()
        reg = held.job["registration"]
        emit(message="document answered", stage=self.stage, submission_id=held.sid,
             document_id=reg["document_id"], ok=bool(result.get("ok")), error=result.get("error"),
             seconds=round(time.monotonic() - held.received, 3), worker_pid=result.get("pid"),
             task_seconds=result.get("seconds"), task_cpu_s=result.get("cpu_s"))
        return True

    def _remember(self, sid: str) -> None:
        self.answered[sid] = None
        while len(self.answered) > 100_000:
            self.answered.popitem(last=False)

    def _cleanup(self, held: Held) -> None:
        self._delete_message(held.receipt)
        try:
            jobio.delete(held.job_uri)  # it held the task token; nothing needs it any more
        except Exception:  # the bucket lifecycle removes it after a day anyway
            pass

    def _cleanup_many(self, helds: list[Held]) -> None:
        """_cleanup for a round of answered documents: fewer AWS requests per document (SQS
        bills a DeleteMessageBatch as one request; one DeleteObjects per bucket).
        Dying before this is safe: the messages come back as re-deliveries (receive count
        > 1), so _take heartbeats their answered tokens first (stale()), gets TaskTimedOut /
        InvalidToken and drops them instead of running them again."""
        for start in range(0, len(helds), 10):
            batch = helds[start:start + 10]
            try:
                resp = self.sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=[
                    {"Id": str(i), "ReceiptHandle": h.receipt} for i, h in enumerate(batch)])
            except ClientError as err:
                emit_warning(message="message not deleted", stage=self.stage, code=err.response["Error"]["Code"])
                continue
            for failed in resp.get("Failed", []):
                emit_warning(message="message not deleted", stage=self.stage, code=failed.get("Code"))
        if helds:
            try:
                jobio.delete_many([h.job_uri for h in helds])  # they held the task tokens
            except Exception:  # the bucket lifecycle removes them after a day anyway
                pass

    def _delete_message(self, receipt: str) -> None:
        try:
            self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=receipt)
        except ClientError as err:
            emit_warning(message="message not deleted", stage=self.stage, code=err.response["Error"]["Code"])

    def collect(self, timeout: float) -> int:
        """Answer every document whose task finished; returns how many."""
        self.dispatch()
        with self.lock:
            by_ref = {h.ref: h for h in self.held.values() if h.ref is not None}
        if not by_ref:
            time.sleep(min(timeout, 0.2))
            return 0
        done = self._wait(list(by_ref), timeout)
        finished = []
        for ref in done:
            held = by_ref[ref]
            try:
                result = self._get(ref)
            except Exception as err:  # worker died past its retries, cancelled, ...
                result = {"ok": False, "error": StageFailed.__name__,
                          "cause": f"the {self.stage} task was lost: {type(err).__name__}: {err}"[:1000]}
            with self.lock:
                if held.ref is ref:
                    held.ref = None  # out of Ray: its CPU can take the next document
            finished.append((held, result))
        if finished:
            # The next documents start before these are answered: an answer is a SendTask*
            # call each, then the round's deletes, during which the freed CPU would wait.
            self.dispatch()
        answered: list[Held] = []
        try:
            for held, result in finished:
                if self.answer(held, result, cleanup=False):
                    answered.append(held)
        finally:  # what was answered is cleaned up even if a later answer raised
            self._cleanup_many(answered)
        return len(done)

    # --- life cycle -------------------------------------------------------------------------
    def idle(self) -> bool:
        return not self.held and time.monotonic() - self.last_activity >= self.idle_seconds

    def interrupt(self) -> None:
        """SIGTERM: answer what we hold with JobInterrupted, so each state retries now."""
        with self.lock:
            held = list(self.held.values())
        results = {"ok": False, "error": JobInterrupted.__name__,
                   "cause": f"the {self.stage} service received SIGTERM before finishing"}
        list(self.pool.map(lambda h: self.answer(h, results), held))
        for h in held:
            if h.ref is not None:
                self._cancel(h.ref)

    def run(self) -> int:
        emit(message="stage service started", stage=self.stage, queue_url=self.queue_url,
             idle_seconds=self.idle_seconds, visibility_seconds=self.visibility_s, pid=os.getpid())
        receiver = threading.Thread(target=self.receive_loop, name="receive", daemon=True)
        beater = threading.Thread(target=self.beat_loop, name="heartbeat", daemon=True)
        receiver.start()
        beater.start()
        interrupted = False
        while True:
            if self.signalled.is_set():
                interrupted = True
                break
            self.collect(timeout=0.5)
            if self.idle():
                # One last look, so a message sent while we decided to go is not stranded.
                self.stopping.set()
                receiver.join(timeout=self.receive_wait_s + 5)
                if self.receive_once(1) == 0 and not self.held:
                    break
                self.stopping.clear()
                receiver = threading.Thread(target=self.receive_loop, name="receive", daemon=True)
                receiver.start()
        self.stopping.set()
        if interrupted:
            self.interrupt()
            # The receive thread may be inside a long poll. A process that exits now leaves
            # that request open at SQS (moto alike), which still hands it the next message,
            # hidden for the visibility timeout (600 s) from every later service: its
            # document waited a heartbeat timeout, then a retry. Wait for the poll: what it
            # returns is released (receive_once sees the signal) or, if taken just before
            # the signal, answered below. Ray waits SERVICE_STOP_WAIT_S before SIGKILL.
            receiver.join(timeout=self.receive_wait_s + 5)
            self.interrupt()
        emit(message="stage service stopped", stage=self.stage, reason="SIGTERM" if interrupted else "idle",
             **dict(self.counts))
        return 0


class ClusterCpus:
    """The cluster's CPUs now (at least 1: on AWS the first document arrives before the
    worker service has scaled out from zero), from `read` (pdf_parallel.cluster_cpus in
    the service) again every `every_s` seconds so that workers that join are used."""

    def __init__(self, read: Callable[[], int], every_s: float = 5.0):
        self.read, self.every_s = read, every_s
        self.value, self.read_at = 1, -every_s

    def __call__(self) -> int:
        now = time.monotonic()
        if now - self.read_at >= self.every_s:
            self.read_at = now
            try:
                self.value = max(1, self.read())
            except Exception as err:  # keep the last value; the GCS may be restarting
                emit_warning(message="cluster resources not read", error=type(err).__name__)
        return self.value


SIGNALLED = threading.Event()  # set by the SIGTERM handler (signals reach the main thread only)


def watch_cluster(address: str, every_s: float = 10.0, misses: int = 3) -> None:
    """Exit when the cluster's GCS stops answering: a driver whose cluster is gone would
    otherwise keep receiving messages it can never run (and hide them from the next one)."""
    import socket

    host, _, port = address.rpartition(":")
    missed = 0
    while True:
        time.sleep(every_s)
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
            missed = 0
        except OSError:
            missed += 1
            if missed >= misses:
                emit_error(message="Ray cluster unreachable; stage service exits", address=address)
                os._exit(2)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ray_jobs.service",
                                 description="docpipe stage service: a long-lived Ray job that runs the documents "
                                             "of one stage from its SQS queue (docs/design.md, Ray execution model).")
    ap.add_argument("--stage", required=True, choices=("extract", "embed"))
    ap.add_argument("--queue-url", required=True, help="the stage's SQS queue")
    idle = Settings.stage_service_idle_seconds  # the one default (STAGE_SERVICE_IDLE_SECONDS)
    ap.add_argument("--idle-seconds", type=float, default=idle,
                    help=f"exit after this long with nothing held and nothing received (default {idle})")
    args = ap.parse_args(argv)
    setup_process()

    import ray

    from ray_jobs.pdf_parallel import cluster_cpus

    ray.init(ignore_reinit_error=True, log_to_driver=True)
    gcs = ray.get_runtime_context().gcs_address
    threading.Thread(target=watch_cluster, args=(gcs,), name="watch-cluster", daemon=True).start()
    remote = ray.remote(run_document).options(num_cpus=1, resources=task_resources() or None,
                                              max_retries=TASK_MAX_RETRIES)

    # One warm-up per CPU the cluster has now: Ray starts that many worker processes for
    # this job at once and each loads the stage's model and imports before a document
    # arrives (a document that starts a cold worker waits seconds for it). Not awaited: a
    # failed warm-up only means the first document warms its worker itself.
    warm = ray.remote(warm_up_worker).options(num_cpus=1, resources=task_resources() or None)
    cpus = ray.available_resources().get("CPU", 1)  # type: ignore[no-untyped-call]  # ray leaves it untyped
    for _ in range(max(1, min(WARM_UP_MAX, int(cpus)))):
        warm.remote(args.stage)

    def wait(refs: list[Any], timeout: float) -> list[Any]:
        # Back as soon as one is done, then take every other one that is done too.
        done, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        if done:
            done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        return done

    service = StageService(args.stage, args.queue_url, args.idle_seconds,
                           submit=lambda stage, job: remote.remote(stage, job), wait=wait, get=ray.get,
                           cancel=lambda ref: ray.cancel(ref, force=False), capacity=ClusterCpus(cluster_cpus))
    signal.signal(signal.SIGTERM, lambda *_: SIGNALLED.set())
    return service.run()


if __name__ == "__main__":
    from ray_jobs.runner import main_exit

    main_exit(main())
