"""Settings from environment variables: the one place their names and defaults are spelled.

template.yaml sets them on every function (and on the Ray containers); the local stack
sets the same names from the same template. Each field names its variable and carries
its one default (`env_var`); `read_env` fills a settings class from an environment. The
Ray side's settings (ray_jobs/settings.py) are built the same way, with these helpers.
A blank value means "not set": the template passes "" for an optional parameter.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar, cast

from docpipe.identity import PIPELINE_VERSION

T = TypeVar("T")

# What travels to the Ray side in each job's runtime_env: the variables that configure
# the stages and that SubmitRayJob has (template.yaml Globals). One cluster then serves
# any configuration, and a template parameter change needs no new Ray image. Names and
# ARNs only, never secret values or credentials (the jobs read the secrets themselves).
# tests/test_settings.py checks this list against what ray_jobs.settings reads.
FORWARDED_ENV = ("EMBEDDING_BACKEND", "VECTOR_STORE_BACKEND", "ENRICHMENT_BACKEND", "OCR_BACKEND",
                 "OPENAI_API_KEY_SECRET_ARN", "PINECONE_API_KEY_SECRET_ARN",
                 "PINECONE_INDEX_HOST", "PINECONE_NAMESPACE", "OPENAI_EMBEDDING_MODEL",
                 "OPENAI_BASE_URL", "EMBEDDING_CACHE", "DOCUMENT_BUCKET")


def json_object(raw: str) -> dict[str, Any]:
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object")
    return value


_PARSERS: dict[type, Callable[[str], Any]] = {str: str, int: int, float: float, dict: json_object}


def env_var(name: str, default: T, *, parse: Callable[[str], T] | None = None) -> T:
    """A settings field read from the variable `name`, `default` when unset or blank."""
    parser = parse or _PARSERS[type(default)]
    metadata = {"env": name, "parse": parser}
    if isinstance(default, dict):
        return cast(T, field(default_factory=lambda: dict(default), metadata=metadata))
    return field(default=default, metadata=metadata)


def env_names(cls: type) -> dict[str, str]:
    """{variable: field name} of a settings class."""
    return {f.metadata["env"]: f.name for f in fields(cls) if "env" in f.metadata}


def read_env(cls: Callable[..., T], env: Mapping[str, str] | None = None, **values: Any) -> T:
    """An instance of the settings class `cls` from `env` (default: os.environ)."""
    env = os.environ if env is None else env
    for f in fields(cast(Any, cls)):
        name = f.metadata.get("env")
        raw = env.get(name, "").strip() if name else ""
        if not raw:
            continue
        try:
            values[f.name] = f.metadata["parse"](raw)
        except ValueError as err:
            raise ValueError(f"{name}={raw!r}: {err}") from err
    return cls(**values)


@dataclass(frozen=True)
class Settings:
    """What the functions read (template.yaml Globals)."""

    control_table: str = env_var("CONTROL_TABLE", "")
    audit_table: str = env_var("AUDIT_TABLE", "")
    metrics_table: str = env_var("METRICS_TABLE", "")
    bucket: str = env_var("DOCUMENT_BUCKET", "")
    alerts_topic_arn: str = env_var("ALERTS_TOPIC_ARN", "")
    ray_dashboard_url: str = env_var("RAY_DASHBOARD_URL", "", parse=lambda raw: raw.rstrip("/"))
    ray_token_secret_arn: str = env_var("RAY_TOKEN_SECRET_ARN", "")
    ray_entrypoint_resources: dict[str, Any] = env_var("RAY_ENTRYPOINT_RESOURCES", {})  # noqa: RUF009 - a field with a default_factory
    pipeline_version: str = env_var("PIPELINE_VERSION", PIPELINE_VERSION)
    max_document_bytes: int = env_var("MAX_DOCUMENT_BYTES", 100 * 1024 * 1024)
    record_ttl_days: int = env_var("RECORD_TTL_DAYS", 365)
    stale_after_seconds: int = env_var("STALE_AFTER_SECONDS", 2 * 3600)
    heartbeat_seconds: int = env_var("STAGE_HEARTBEAT_SECONDS", 300)
    extract_timeout_seconds: int = env_var("EXTRACT_TIMEOUT_SECONDS", 3600)
    embed_timeout_seconds: int = env_var("EMBED_TIMEOUT_SECONDS", 3600)
    # Stage services (docs/design.md, "Ray execution model"): documents up to this many bytes go
    # to the stage's SQS queue and its long-lived service; 0 = every document its own job.
    stage_service_max_bytes: int = env_var("STAGE_SERVICE_MAX_BYTES", 10 * 1024 * 1024)
    extract_queue_url: str = env_var("EXTRACT_QUEUE_URL", "")
    embed_queue_url: str = env_var("EMBED_QUEUE_URL", "")
    # Only the head offers service_slot, so scale-in never stops a service's driver.
    ray_service_entrypoint_resources: dict[str, Any] = env_var(  # noqa: RUF009 - a field with a default_factory
        "RAY_SERVICE_ENTRYPOINT_RESOURCES", {"service_slot": 1})
    stage_service_idle_seconds: int = env_var("STAGE_SERVICE_IDLE_SECONDS", 600)
    # FORWARDED_ENV's variables that are set: the runtime_env of every Ray job we submit.
    forwarded_env: dict[str, str] = field(default_factory=dict)

    @property
    def stage_queue_urls(self) -> dict[str, str]:
        """stage -> SQS queue URL, for the stages that have one."""
        urls = {"extract": self.extract_queue_url, "embed": self.embed_queue_url}
        return {stage: url for stage, url in urls.items() if url}

    def stage_limits(self) -> dict[str, int]:
        """Read by the ASL's HeartbeatSecondsPath / TimeoutSecondsPath."""
        return {"heartbeat_seconds": self.heartbeat_seconds,
                "extract_timeout_seconds": self.extract_timeout_seconds,
                "embed_timeout_seconds": self.embed_timeout_seconds}

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return read_env(cls, env, forwarded_env={k: env[k] for k in FORWARDED_ENV if env.get(k)})
