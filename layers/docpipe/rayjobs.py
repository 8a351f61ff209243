"""Submitting a stage to the Ray Jobs REST API (no `import ray`: Lambda cannot carry it).

The task token and the stage input go to `s3://<bucket>/jobs/<submission_id>.json`;
the job's entrypoint names only that URI, so the token never appears in Ray's job
list, the dashboard or the logs.
"""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass

from docpipe import aws, identity
from docpipe.config import Settings
from docpipe.errors import RayHeadUnavailable, RayJobRejected

STAGES = ("extract", "embed")
# Backend choices travel to the job as runtime_env variables: one cluster serves any
# configuration, and a template parameter change needs no new Ray image. Only names and
# ARNs, never secret values (the job reads the secrets itself).
FORWARDED_ENV = ("EMBEDDING_BACKEND", "VECTOR_STORE_BACKEND", "ENRICHMENT_BACKEND",
                 "OPENAI_API_KEY_SECRET_ARN", "PINECONE_API_KEY_SECRET_ARN",
                 "PINECONE_INDEX_HOST", "PINECONE_NAMESPACE", "OPENAI_EMBEDDING_MODEL",
                 "OPENAI_BASE_URL", "EMBEDDING_CACHE", "DOCUMENT_BUCKET")
# Creating a job starts its supervisor before the API answers; a busy head takes seconds.
HTTP_TIMEOUT_S = 25


@dataclass
class Submission:
    submission_id: str
    stage: str
    job_uri: str
    already_submitted: bool


def _token(settings: Settings) -> str:
    if not settings.ray_token_secret_arn:
        return ""
    from aws_lambda_powertools.utilities import parameters

    # Cached for 5 minutes across invocations: one Secrets Manager call per container.
    return parameters.get_secret(settings.ray_token_secret_arn, max_age=300)


def post_job(settings: Settings, body: dict, token: str) -> tuple[int, str]:
    req = urllib.request.Request(
        f"{settings.ray_dashboard_url}/api/jobs/",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json",
                 **({"Authorization": f"Bearer {token}"} if token else {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")
    except (urllib.error.URLError, socket.timeout, ConnectionError, OSError) as err:
        raise RayHeadUnavailable(f"Ray Jobs API at {settings.ray_dashboard_url} unreachable: {err}") from err


def submit_stage(event: dict, settings: Settings) -> Submission:
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
    job_uri = identity.s3_uri(settings.bucket, job_key)
    body = {
        "entrypoint": f"python -m ray_jobs.{stage} --job {job_uri}",
        "submission_id": sid,
        "metadata": {"document_id": reg["document_id"], "processing_version": reg["processing_version"],
                     "stage": stage, "execution_arn": event.get("execution_arn", "")[:256]},
    }
    env_vars = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    if env_vars:
        body["runtime_env"] = {"env_vars": env_vars}
    if settings.ray_entrypoint_resources:
        body["entrypoint_resources"] = settings.ray_entrypoint_resources
    status, text = post_job(settings, body, _token(settings))
    if 200 <= status < 300:
        return Submission(sid, stage, job_uri, False)
    if "already exists" in text:
        # A re-delivered submit of the same attempt: the job is running or ran.
        return Submission(sid, stage, job_uri, True)
    if status >= 500 or status == 429:
        raise RayHeadUnavailable(f"Ray Jobs API answered {status}: {text[:300]}")
    raise RayJobRejected(f"Ray Jobs API answered {status}: {text[:300]}")
