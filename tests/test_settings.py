"""One typed settings object per side (docpipe.config.Settings for the functions,
ray_jobs.settings.StageSettings for the Ray side), one default per knob, and one list of
the variables that travel from the functions to the Ray jobs (docpipe.config.FORWARDED_ENV).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import boto3
import pytest
from cfn_yaml import load
from moto import mock_aws

from docpipe.config import FORWARDED_ENV, Settings, env_names
from ray_jobs.backends.base import EmbeddingResult
from ray_jobs.settings import StageSettings

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load(REPO / "template.yaml")


@pytest.fixture(scope="module")
def cluster() -> dict[str, Any]:
    return load(REPO / "infra" / "ray-cluster.yaml")


def function_env(template: dict[str, Any]) -> dict[str, Any]:
    """Every variable a function gets: Globals, then each function's own."""
    env = dict(template["Globals"]["Function"]["Environment"]["Variables"])
    for res in template["Resources"].values():
        if res["Type"] == "AWS::Serverless::Function":
            env.update(res["Properties"].get("Environment", {}).get("Variables", {}))
    return env


def container_env(cluster: dict[str, Any]) -> dict[str, Any]:
    """Every variable a Ray container or the Query function gets (both branches of an If)."""
    env: dict[str, Any] = {}
    for res in cluster["Resources"].values():
        if res["Type"] == "AWS::ECS::TaskDefinition":
            for container in res["Properties"]["ContainerDefinitions"]:
                for item in container.get("Environment", []):
                    for e in item["Fn::If"][1:] if "Fn::If" in item else [item]:
                        for entry in e if isinstance(e, list) else [e]:
                            if "Name" in entry:  # not the other branch's AWS::NoValue
                                env.setdefault(entry["Name"], entry["Value"])
        elif res["Type"] == "AWS::Lambda::Function":
            for name, value in res["Properties"].get("Environment", {}).get("Variables", {}).items():
                env.setdefault(name, value)
    return env


def defaults_fed_by_parameters(env: dict[str, Any], parameters: dict[str, Any], cls: type) -> dict[str, tuple[Any, Any]]:
    """{variable: (the template parameter's default as the setting parses it, the setting's
    default)} for each variable of `cls` set from a parameter with a non-blank default
    (a blank value means "unset": the setting's default applies)."""
    by_field = {f.name: f for f in fields(cls)}
    out = {}
    for var, field_name in env_names(cls).items():
        value = env.get(var)
        if not (isinstance(value, dict) and "Ref" in value and value["Ref"] in parameters):
            continue
        raw = str(parameters[value["Ref"]].get("Default", "")).strip()
        if raw:
            f = by_field[field_name]
            default = f.default_factory() if callable(f.default_factory) else f.default
            out[var] = (f.metadata["parse"](raw), default)
    return out


# ------------------------------------------------------------------------ one list, one default
def test_forwarded_env_is_what_the_ray_side_reads_of_the_functions_env(template):
    """A variable the functions have and the Ray side reads must travel in runtime_env
    (else a parameter change never reaches a running cluster), and nothing else does."""
    ray_side = set(env_names(StageSettings))
    assert set(FORWARDED_ENV) == ray_side & set(function_env(template))
    assert len(FORWARDED_ENV) == len(set(FORWARDED_ENV))


def test_template_parameter_defaults_are_the_settings_defaults(template, cluster):
    checked = {}
    for env, parameters, cls in ((function_env(template), template["Parameters"], StageSettings),
                                 (function_env(template), template["Parameters"], Settings),
                                 (container_env(cluster), cluster["Parameters"], StageSettings)):
        for var, (from_template, from_settings) in defaults_fed_by_parameters(env, parameters, cls).items():
            assert from_template == from_settings, (cls.__name__, var)
            checked[var] = from_settings
    # The knobs whose defaults used to differ between the hops, among others.
    assert {"EMBEDDING_CACHE", "EMBEDDING_BACKEND", "VECTOR_STORE_BACKEND", "PINECONE_NAMESPACE",
            "OPENAI_EMBEDDING_MODEL", "OPENAI_TPM_BUDGET", "STAGE_SERVICE_IDLE_SECONDS",
            "STAGE_SERVICE_MAX_BYTES", "STAGE_HEARTBEAT_SECONDS"} <= set(checked), sorted(checked)


def test_functions_forward_exactly_the_set_variables():
    env = {"EMBEDDING_BACKEND": "openai", "OPENAI_BASE_URL": "", "CONTROL_TABLE": "control",
           "PINECONE_NAMESPACE": "docs", "RAY_TOKEN_SECRET_ARN": "arn:secret"}
    settings = Settings.from_env(env)
    assert settings.forwarded_env == {"EMBEDDING_BACKEND": "openai", "PINECONE_NAMESPACE": "docs"}
    assert settings.control_table == "control"


# ------------------------------------------------------------------------ the Ray side's values
def test_unset_or_blank_means_the_default_and_values_are_typed():
    assert StageSettings.from_env({}) == StageSettings() == StageSettings.from_env({"PDF_TIMEOUT_SECONDS": " "})
    s = StageSettings.from_env({"PDF_TIMEOUT_SECONDS": "30", "EMBED_BATCH_SIZE": "8", "EMBEDDING_CACHE": " S3 ",
                                "DOCPIPE_TASK_RESOURCES": '{"worker": 1}'})
    assert (s.pdf_timeout_seconds, s.embed_batch_size, s.embedding_cache, s.task_resources) == (30.0, 8, "s3", {"worker": 1})


@pytest.mark.parametrize("name, value", [("EMBED_BATCH_SIZE", "many"), ("DOCPIPE_TASK_RESOURCES", "[1]"),
                                         ("EMBEDDING_CACHE", "redis"), ("PDF_TIMEOUT_SECONDS", "soon")])
def test_a_malformed_value_is_refused_with_its_variable_named(name, value):
    with pytest.raises(ValueError, match=name):
        StageSettings.from_env({name: value})


@pytest.mark.parametrize("env, mode, batch", [({}, "memory", 64),
                                              ({"EMBEDDING_BACKEND": "openai"}, "s3", 1024),
                                              ({"EMBEDDING_BACKEND": "openai", "EMBEDDING_CACHE": "off"}, "off", 1024),
                                              ({"EMBEDDING_CACHE": "s3", "EMBED_BATCH_SIZE": "16"}, "s3", 16)])
def test_auto_values_are_resolved_from_the_backend(env, mode, batch):
    s = StageSettings.from_env(env)
    assert (s.embedding_cache_mode(), s.texts_per_embed_call()) == (mode, batch)


class CountingEmbedder:
    model, dims = "counting", 2

    def __init__(self) -> None:
        self.texts: list[str] = []

    def embed(self, texts: list[str]) -> EmbeddingResult:
        self.texts += texts
        return EmbeddingResult(vectors=[[float(len(t)), 1.0] for t in texts], tokens=len(texts))


def test_a_paid_embedder_gets_the_s3_cache_when_nothing_says_otherwise(monkeypatch):
    """EMBEDDING_CACHE unset with the OpenAI backend: the same texts are not paid for twice
    (the cache's own reader used to default to off, the worker's to auto)."""
    from ray_jobs.backends.embedding_cache import wrap_with_cache_from_env

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="docs")
        inner = CountingEmbedder()
        embedder = wrap_with_cache_from_env(inner, {"EMBEDDING_BACKEND": "openai", "DOCUMENT_BUCKET": "docs"},
                                            client=s3)
        first = embedder.embed(["alpha", "beta"])
        second = embedder.embed(["alpha", "beta"])
        assert inner.texts == ["alpha", "beta"], "the second call was served from S3"
        assert second.vectors == first.vectors and second.cache_hits == 2
        assert s3.list_objects_v2(Bucket="docs", Prefix="embedding-cache/")["KeyCount"] == 2
    assert wrap_with_cache_from_env(inner, {}).store.__class__.__name__ == "LruCacheStore"  # the local model: memory


def test_warm_objects_follow_the_configuration(monkeypatch, tmp_path):
    from ray_jobs import warm

    monkeypatch.setenv("VECTOR_STORE_BACKEND", "lancedb")
    monkeypatch.setenv("LANCEDB_URI", str(tmp_path / "a"))
    first = warm.vector_store()
    assert warm.vector_store() is first, "one per process and configuration"
    monkeypatch.setenv("LANCEDB_URI", str(tmp_path / "b"))
    second = warm.vector_store()
    assert second is not first and second.uri == str(tmp_path / "b")


# ------------------------------------------------------------------------ one log shape
def test_ray_side_log_lines_have_the_functions_shape():
    """Powertools JSON on stdout, service "docpipe" as template.yaml gives the functions."""
    code = ("from ray_jobs.log import emit\n"
            "from ray_jobs.log import emit_error\n"
            "emit(message='stage started', stage='extract', name='doc', pid=7)\n"
            "emit_error('callback rejected', code='InvalidToken')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    started, rejected = (json.loads(line) for line in out.splitlines())
    service = load(REPO / "template.yaml")["Globals"]["Function"]["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"]
    assert {k: started[k] for k in ("level", "message", "service", "stage", "pid", "name_")} == {
        "level": "INFO", "message": "stage started", "service": service, "stage": "extract", "pid": 7,
        "name_": "doc"}
    assert "timestamp" in started and started["location"].startswith("<module>")
    assert (rejected["level"], rejected["code"], rejected["service"]) == ("ERROR", "InvalidToken", service)


def test_a_malformed_setting_still_answers_the_token_naming_it(monkeypatch):
    """The job reads its settings after its heartbeats started: a bad value fails the
    stage at once with the variable named, instead of a silent token that times out."""
    import signal

    from ray_jobs import runner
    from ray_jobs.callback import TaskCallback
    from ray_jobs.extract import extract_document

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1", "PDF_TIMEOUT_SECONDS": "soon"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    answers: list[dict[str, str]] = []

    class Sfn:
        def send_task_heartbeat(self, **kw: str) -> None:
            pass

        def send_task_success(self, **kw: str) -> None:
            answers.append({"success": kw["output"]})

        def send_task_failure(self, **kw: str) -> None:
            answers.append(kw)

    monkeypatch.setattr(runner, "TaskCallback", lambda token, stage: TaskCallback(token, stage, client=Sfn()))
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        with mock_aws():
            s3 = boto3.client("s3")
            s3.create_bucket(Bucket="docs")
            s3.put_object(Bucket="docs", Key="input/a.pdf", Body=b"%PDF-1.4")
            job = {"task_token": "token-1", "submission_id": "s1", "inputs": {},
                   "registration": {"document_id": "d1", "processing_version": "v1-0", "bucket": "docs",
                                    "s3_key": "input/a.pdf"}}
            s3.put_object(Bucket="docs", Key="jobs/s1.json", Body=json.dumps(job).encode())
            assert runner.run("extract", extract_document, ["--job", "s3://docs/jobs/s1.json"]) == 1
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    [answer] = answers
    assert answer["taskToken"] == "token-1" and answer["error"] == "StageFailed"
    assert "PDF_TIMEOUT_SECONDS='soon'" in answer["cause"]
