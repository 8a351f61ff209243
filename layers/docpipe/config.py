"""Settings from environment variables: the one place their names are spelled.

template.yaml sets them on every function (and on the Ray containers); the local
stack sets the same names from the same template.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from docpipe.identity import PIPELINE_VERSION


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    return int(raw) if raw.strip() else default


@dataclass(frozen=True)
class Settings:
    control_table: str = ""
    audit_table: str = ""
    metrics_table: str = ""
    bucket: str = ""
    alerts_topic_arn: str = ""
    ray_dashboard_url: str = ""
    ray_token_secret_arn: str = ""
    ray_entrypoint_resources: dict = field(default_factory=dict)
    pipeline_version: str = PIPELINE_VERSION
    max_document_bytes: int = 100 * 1024 * 1024
    record_ttl_days: int = 365
    stale_after_seconds: int = 2 * 3600
    heartbeat_seconds: int = 300
    extract_timeout_seconds: int = 3600
    embed_timeout_seconds: int = 3600
    # Stage services (DESIGN.md "Ray execution model"): documents up to this many bytes go
    # to the stage's SQS queue and its long-lived service; 0 = every document its own job.
    stage_service_max_bytes: int = 0
    stage_queue_urls: dict = field(default_factory=dict)  # stage -> SQS queue URL
    ray_service_entrypoint_resources: dict = field(default_factory=dict)
    stage_service_idle_seconds: int = 300

    def stage_limits(self) -> dict:
        """Read by the ASL's HeartbeatSecondsPath / TimeoutSecondsPath."""
        return {"heartbeat_seconds": self.heartbeat_seconds,
                "extract_timeout_seconds": self.extract_timeout_seconds,
                "embed_timeout_seconds": self.embed_timeout_seconds}

    @classmethod
    def from_env(cls) -> "Settings":
        env = os.environ
        return cls(
            control_table=env.get("CONTROL_TABLE", ""),
            audit_table=env.get("AUDIT_TABLE", ""),
            metrics_table=env.get("METRICS_TABLE", ""),
            bucket=env.get("DOCUMENT_BUCKET", ""),
            alerts_topic_arn=env.get("ALERTS_TOPIC_ARN", ""),
            ray_dashboard_url=env.get("RAY_DASHBOARD_URL", "").rstrip("/"),
            ray_token_secret_arn=env.get("RAY_TOKEN_SECRET_ARN", ""),
            ray_entrypoint_resources=json.loads(env.get("RAY_ENTRYPOINT_RESOURCES") or "{}"),
            pipeline_version=env.get("PIPELINE_VERSION", PIPELINE_VERSION),
            max_document_bytes=_int("MAX_DOCUMENT_BYTES", 100 * 1024 * 1024),
            record_ttl_days=_int("RECORD_TTL_DAYS", 365),
            stale_after_seconds=_int("STALE_AFTER_SECONDS", 2 * 3600),
            heartbeat_seconds=_int("STAGE_HEARTBEAT_SECONDS", 300),
            extract_timeout_seconds=_int("EXTRACT_TIMEOUT_SECONDS", 3600),
            embed_timeout_seconds=_int("EMBED_TIMEOUT_SECONDS", 3600),
            stage_service_max_bytes=_int("STAGE_SERVICE_MAX_BYTES", 0),
            stage_queue_urls={stage: env[name] for stage, name in
                              (("extract", "EXTRACT_QUEUE_URL"), ("embed", "EMBED_QUEUE_URL")) if env.get(name)},
            ray_service_entrypoint_resources=json.loads(env.get("RAY_SERVICE_ENTRYPOINT_RESOURCES") or "{}"),
            stage_service_idle_seconds=_int("STAGE_SERVICE_IDLE_SECONDS", 300),
        )
