"""Handing a stage to Ray through the Ray Jobs REST API (no `import ray`: Lambda cannot carry it).

Two routes (docs/design.md, "Ray execution model"):
- a document up to `STAGE_SERVICE_MAX_BYTES` goes to the stage's SQS queue, read by the
  stage service: one long-lived Ray job per stage with warm workers. We make sure it is
  RUNNING (GET it, else the job list, else POST the next generation);
- a larger one (or every one, with the threshold 0) gets a Ray job of its own.

Either way the task token and the stage input go to `s3://<bucket>/jobs/<submission_id>.json`
first; the queue message and the job's entrypoint name only that URI, so the token never
appears in Ray's job list, the dashboard, SQS or the logs.
"""

from __future__ import annotations

import hashlib
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from docpipe import aws, identity
from docpipe.config import Settings
from docpipe.errors import RayHeadUnavailable, RayJobRejected

STAGES = ("extract", "embed")
# Creating a job starts its supervisor before the API answers; a busy head takes seconds.
HTTP_TIMEOUT_S = 25
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
# Ray job metadata `docpipe` says which of our jobs it is (values must be strings).
KIND_SERVICE, KIND_DOCUMENT = "stage-service", "stage-job"
# A service seen RUNNING this recently is not asked about again (per Lambda container).
ENSURE_TTL_S = 5.0
_ensured: dict[tuple[str, str, str], tuple[str, float]] = {}
# How long Ray waits between SIGTERM and SIGKILL when a service is stopped (its default:
# 3 s). A stopping service waits for its SQS long poll (at most 20 s) to return, so that
# no message is left to a dead request, and answers what it holds (ray_jobs/service.py).
SERVICE_STOP_WAIT_S = 30


@dataclass
class Submission:
    submission_id: str
    stage: str
    job_uri: str
    already_submitted: bool
    route: str = "job"  # "service" (queue + stage service) or "job" (a Ray job of its own)
    service_id: str = ""


def _token(settings: Settings) -> str:
    if not settings.ray_token_secret_arn:
        return ""
    from aws_lambda_powertools.utilities import parameters

    # Cached for 5 minutes across invocations: one Secrets Manager call per container.
    return parameters.get_secret(settings.ray_token_secret_arn, max_age=300)


def ray_request(settings: Settings, method: str, path: str, token: str, body: dict[str, Any] | None = None) -> tuple[int, str]:
    req = urllib.request.Request(
        f"{settings.ray_dashboard_url}{path}",
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"Content-Type": "application/json",
                 **({"Authorization": f"Bearer {token}"} if token else {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as err:
        raise RayHeadUnavailable(f"Ray Jobs API at {settings.ray_dashboard_url} unreachable: {err}") from err


def post_job(settings: Settings, body: dict[str, Any], token: str) -> tuple[int, str]:
    return ray_request(settings, "POST", "/api/jobs/", token, body)


def _refused(status: int, text: str) -> Exception:
    """The error for an answer that is neither success nor a case the caller handles."""
    if status >= 500 or status == 429:
        return RayHeadUnavailable(f"Ray Jobs API answered {status}: {text[:300]}")
    return RayJobRejected(f"Ray Jobs API answered {status}: {text[:300]}")


def _accepted(status: int, text: str) -> bool:
    """True when created now, False when the submission id existed; raises otherwise."""
    if 200 <= status < 300:
        return True
    if "already exists" in text:
        return False  # a re-delivered submit of the same attempt: the job is running or ran
    raise _refused(status, text)


def prepare_stage(event: dict[str, Any], settings: Settings) -> Submission:
    """Write jobs/<submission_id>.json (the token and the inputs) and choose the route."""
    stage = event["stage"]
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
    reg = event["registration"]
    sid = identity.submission_id(stage, reg["document_id"], reg["processing_version"],
                                 event.get("execution_name", ""), int(event.get("retry_count", 0)))
    job_key = f"{identity.PREFIXES['jobs']}/{sid}.json"
    job = {
        "submission_id": sid,
        "stage": stage,
        "task_token": event["task_token"],
        "registration": reg,
        "inputs": event.get("inputs") or {},
        "execution_arn": event.get("execution_arn", ""),
    }
    aws.client("s3").put_object(Bucket=settings.bucket, Key=job_key,
                                Body=json.dumps(job).encode(), ContentType="application/json",
                                ServerSideEncryption="AES256")
    route = "service" if uses_service(settings, stage, reg) else "job"
    return Submission(sid, stage, identity.s3_uri(settings.bucket, job_key), False, route=route)


def uses_service(settings: Settings, stage: str, reg: dict[str, Any]) -> bool:
    return (settings.stage_service_max_bytes > 0 and stage in settings.stage_queue_urls
            and int(reg.get("size") or 0) <= settings.stage_service_max_bytes)


def dispatch_stage(sub: Submission, event: dict[str, Any], settings: Settings) -> Submission:
    """Hand a prepared stage to Ray. A stage service may answer the token within
    milliseconds, so the caller records the submission before calling this."""
    reg, stage = event["registration"], sub.stage
    token = _token(settings)
    if sub.route == "service":
        aws.client("sqs").send_message(
            QueueUrl=settings.stage_queue_urls[stage],
            MessageBody=json.dumps({"job_uri": sub.job_uri, "submission_id": sub.submission_id,
                                    "stage": stage, "document_id": reg["document_id"],
                                    "processing_version": reg["processing_version"]}))
        # After the message: a service that just went idle still finds it (see ray_jobs/service.py).
        try:
            sub.service_id = ensure_service(settings, stage, token)
        except Exception:
            # The state retries under a new submission id; without its job file the
            # message just sent is dropped by whichever service receives it.
            bucket, key = identity.parse_s3_uri(sub.job_uri)
            aws.client("s3").delete_object(Bucket=bucket, Key=key)
            raise
        return sub
    body = {
        "entrypoint": f"python -m ray_jobs.{stage} --job {sub.job_uri}",
        "submission_id": sub.submission_id,
        "metadata": {"docpipe": KIND_DOCUMENT, "document_id": reg["document_id"],
                     "processing_version": reg["processing_version"],
                     "stage": stage, "execution_arn": event.get("execution_arn", "")[:256]},
    }
    env_vars = settings.forwarded_env
    if env_vars:
        body["runtime_env"] = {"env_vars": env_vars}
    if settings.ray_entrypoint_resources:
        body["entrypoint_resources"] = settings.ray_entrypoint_resources
    sub.already_submitted = not _accepted(*post_job(settings, body, token))
    return sub


# --- stage services -----------------------------------------------------------------------
def service_config(settings: Settings, stage: str) -> tuple[str, dict[str, str]]:
    """(digest, env): a service serves one configuration; another gets its own service."""
    env = settings.forwarded_env
    blob = json.dumps({"env": env, "queue": settings.stage_queue_urls.get(stage, ""),
                       "idle": settings.stage_service_idle_seconds}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:8], env


def service_submission_id(stage: str, digest: str, generation: int) -> str:
    return identity.safe_name("docpipe-service", stage, digest, f"g{generation}")


def list_jobs(settings: Settings, token: str) -> list[dict[str, Any]]:
    status, text = ray_request(settings, "GET", "/api/jobs/", token)
    if status != 200:
        raise _refused(status, text)
    jobs: list[dict[str, Any]] = json.loads(text)
    return jobs


def services(jobs: list[dict[str, Any]], stage: str | None = None) -> list[dict[str, Any]]:
    """Our stage services in `jobs`, newest generation first."""
    found = [j for j in jobs if (j.get("metadata") or {}).get("docpipe") == KIND_SERVICE
             and (stage is None or j["metadata"].get("stage") == stage)]
    return sorted(found, key=lambda j: int(j["metadata"].get("generation", "0")), reverse=True)


def ensure_service(settings: Settings, stage: str, token: str, jobs: list[dict[str, Any]] | None = None) -> str:
    """Make sure a service for `stage` (this configuration) is RUNNING or PENDING;
    returns its submission id. Two callers racing POST the same generation: one wins,
    the other reads 'already exists', so there is never more than one per generation."""
    digest, env = service_config(settings, stage)
    if jobs is None:
        # Listing every job costs the head (and its GCS) far more than reading one: a
        # warm Lambda asks about the service it saw last, and not at all for a few seconds.
        known = _ensured.get((settings.ray_dashboard_url, stage, digest))
        if known and time.monotonic() - known[1] < ENSURE_TTL_S:
            return known[0]
        if known and job_status(settings, known[0], token) not in (None, *TERMINAL):
            _ensured[(settings.ray_dashboard_url, stage, digest)] = (known[0], time.monotonic())
            return known[0]
        jobs = list_jobs(settings, token)
    mine = [j for j in services(jobs, stage) if j["metadata"].get("config") == digest]
    if mine and mine[0].get("status") not in TERMINAL:
        _ensured[(settings.ray_dashboard_url, stage, digest)] = (mine[0]["submission_id"], time.monotonic())
        return str(mine[0]["submission_id"])
    generation = int(mine[0]["metadata"]["generation"]) + 1 if mine else 1
    sid = service_submission_id(stage, digest, generation)
    body = {
        "entrypoint": (f"python -m ray_jobs.service --stage {stage} "
                       f"--queue-url {settings.stage_queue_urls[stage]} "
                       f"--idle-seconds {settings.stage_service_idle_seconds}"),
        "submission_id": sid,
        "metadata": {"docpipe": KIND_SERVICE, "stage": stage, "generation": str(generation),
                     "config": digest},
        # The driver only polls, heartbeats and answers: no CPU, and a resource that only
        # the node scale-in never removes (the head) offers.
        "entrypoint_num_cpus": 0,
    }
    # Read by the job's supervisor, whose runtime_env carries the job's env_vars.
    body["runtime_env"] = {"env_vars": {**env, "RAY_JOB_STOP_WAIT_TIME_S": str(SERVICE_STOP_WAIT_S)}}
    if settings.ray_service_entrypoint_resources:
        body["entrypoint_resources"] = settings.ray_service_entrypoint_resources
    _accepted(*post_job(settings, body, token))
    _ensured[(settings.ray_dashboard_url, stage, digest)] = (sid, time.monotonic())
    return sid


def job_status(settings: Settings, submission_id: str, token: str) -> str | None:
    """A job's status, or None when the head does not know it."""
    status, text = ray_request(settings, "GET", f"/api/jobs/{submission_id}", token)
    if status == 404:
        return None
    if status != 200:
        raise _refused(status, text)
    status_name: str | None = json.loads(text).get("status")
    return status_name


def reap_finished_jobs(settings: Settings, token: str, jobs: list[dict[str, Any]]) -> int:
    """Delete the records of our finished jobs: Ray keeps each one until deleted
    (ray-project/ray #30152). The newest generation of each service stays, so the next
    generation number is still known."""
    keep = set()
    for stage in STAGES:
        newest: dict[str, str] = {}
        for j in services(jobs, stage):
            newest.setdefault(j["metadata"].get("config", ""), j["submission_id"])
        keep |= set(newest.values())
    deleted = 0
    for j in jobs:
        kind = (j.get("metadata") or {}).get("docpipe")
        if kind in (KIND_SERVICE, KIND_DOCUMENT) and j.get("status") in TERMINAL \
                and j.get("submission_id") and j["submission_id"] not in keep:
            status, _ = ray_request(settings, "DELETE", f"/api/jobs/{j['submission_id']}", token)
            deleted += status == 200
    return deleted


def queue_depth(sqs: Any, url: str) -> dict[str, int]:
    """Messages waiting in a stage queue (visible) and held by a service (in flight)."""
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return {"visible": int(attrs.get("ApproximateNumberOfMessages", 0)),
            "held": int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0))}


def queue_depths(settings: Settings) -> dict[str, dict[str, int]]:
    """Per stage: queue_depth of its queue."""
    return {stage: queue_depth(aws.client("sqs"), url) for stage, url in settings.stage_queue_urls.items()}
