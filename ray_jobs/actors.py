"""Warm actors: heavy state loaded once per worker, reused by every job.

The embedding model loads in ~0.5 s and a Ray job costs ~2.5 s to start; loading the
model in every job (or per chunk) would dominate. A detached named actor keeps it warm
across jobs. Its name carries the backend configuration, so a job configured for
another model never talks to a stale actor.
"""

from __future__ import annotations

import hashlib
import os

NAMESPACE = "docpipe"
# Env vars that choose and configure the embedder (and so, which actor serves a job).
EMBEDDER_ENV = ("EMBEDDING_BACKEND", "OPENAI_EMBEDDING_MODEL", "OPENAI_EMBEDDING_DIMS",
                "OPENAI_API_KEY_SECRET_ARN", "OPENAI_BASE_URL", "OPENAI_TPM_BUDGET",
                "OPENAI_PRICE_PER_MTOK", "OPENAI_MAX_ATTEMPTS", "OPENAI_TIMEOUT_SECONDS",
                "TOKEN_BUDGET_TABLE", "EMBEDDING_CACHE", "EMBEDDING_CACHE_PREFIX", "DOCUMENT_BUCKET",
                "LOCAL_EMBEDDING_MODEL_DIR", "LOCAL_EMBEDDING_THREADS", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION",
                "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def _embedder_config() -> dict[str, str]:
    config = {k: os.environ[k] for k in EMBEDDER_ENV if k in os.environ}
    # A num_cpus=0 actor gets OMP_NUM_THREADS=1 from Ray; the numpy model runs its own
    # threads, so say how many cores it may use.
    config.setdefault("LOCAL_EMBEDDING_THREADS", str(os.cpu_count() or 1))
    return config


def _make():
    from ray_jobs.backends import make_embedder

    from ray_jobs.backends.embedding_cache import wrap_with_cache_from_env

    embedder = make_embedder()
    env = dict(os.environ)
    if env.get("EMBEDDING_CACHE", "auto") == "auto":
        # Pay once per distinct text with a paid API; a local model is cheaper than S3.
        env["EMBEDDING_CACHE"] = "s3" if env.get("EMBEDDING_BACKEND") == "openai" else "off"
    return wrap_with_cache_from_env(embedder, env)


class EmbedderService:
    """Plain class: the actor body, also usable in-process without Ray."""

    def __init__(self):
        self.embedder = _make()
        self.calls = 0

    def info(self) -> dict:
        return {"model": self.embedder.model, "dims": self.embedder.dims, "calls": self.calls,
                "pid": os.getpid()}

    def embed(self, texts: list[str]):
        self.calls += 1
        return self.embedder.embed(texts)


def embedder_handle():
    """(call, info): a warm actor inside Ray, else an in-process service."""
    from ray_jobs.runner import ray_available

    if not ray_available():
        service = EmbedderService()
        return service.embed, service.info()
    import ray

    config = _embedder_config()
    digest = hashlib.sha256(repr(sorted(config.items())).encode()).hexdigest()[:10]
    actor = ray.remote(num_cpus=0, max_restarts=2)(EmbedderService).options(
        name=f"embedder-{digest}", namespace=NAMESPACE, lifetime="detached",
        get_if_exists=True, runtime_env={"env_vars": config}).remote()
    return (lambda texts: ray.get(actor.embed.remote(texts))), ray.get(actor.info.remote())


# Env vars that choose and configure the vector store (and so, which actor serves a job).
STORE_ENV = ("VECTOR_STORE_BACKEND", "LANCEDB_URI", "LANCEDB_TABLE", "EMBEDDING_DIMS",
             "PINECONE_API_KEY_SECRET_ARN", "PINECONE_INDEX_HOST", "PINECONE_NAMESPACE",
             "PINECONE_MAX_ATTEMPTS", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION",
             "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


class StoreService:
    """Plain class: the vector-store writer actor's body, also usable in-process.

    Importing lancedb costs ~1.8 CPU-seconds; in a warm actor it is paid once per
    worker instead of once per document (measured with `make bench`)."""

    def __init__(self):
        from ray_jobs.backends import make_vector_store

        self.store = make_vector_store()

    def replace_document_version(self, records, document_id: str, version: str) -> dict:
        from ray_jobs.backends.version_sync import replace_document_version

        return replace_document_version(self.store, records, document_id, version)


def store_handle():
    """A callable (records, document_id, version) -> counts: the warm writer actor
    inside Ray, else an in-process store."""
    from ray_jobs.runner import ray_available

    if not ray_available():
        return StoreService().replace_document_version
    import ray

    config = {k: os.environ[k] for k in STORE_ENV if k in os.environ}
    digest = hashlib.sha256(repr(sorted(config.items())).encode()).hexdigest()[:10]
    actor = ray.remote(num_cpus=0, max_restarts=2)(StoreService).options(
        name=f"vector-store-{digest}", namespace=NAMESPACE, lifetime="detached",
        get_if_exists=True, runtime_env={"env_vars": config}).remote()

    def call(records, document_id, version):
        try:
            return ray.get(actor.replace_document_version.remote(records, document_id, version))
        except ray.exceptions.RayTaskError as err:
            # VectorStoreUnavailable & co. keep their names for the state machine's Retry.
            if isinstance(getattr(err, "cause", None), Exception):
                raise err.cause from None
            raise

    return call
