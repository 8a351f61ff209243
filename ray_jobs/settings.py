"""The Ray side's settings: every environment variable ray_jobs reads, with its one default.

Values come from the Ray containers' environment (infra/ray-cluster.yaml) with the job's
runtime_env on top: SubmitRayJob and PublishBacklog forward docpipe.config.FORWARDED_ENV,
so a template parameter change reaches the stages without a new image. Read them with
`StageSettings.from_env()` where they are used, not once at import: the local stack and
the tests run many configurations in one process.

Not here: what boto3 reads itself (AWS_ENDPOINT_URL*, credentials), what Ray sets for a
process (RAY_*, OMP_NUM_THREADS) and the ECS agent's address (ray_jobs/node_guard.py).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from docpipe import costs
from docpipe.config import env_var, read_env

CACHE_MODES = ("auto", "off", "s3", "memory")


@dataclass(frozen=True)
class StageSettings:
    # --- backends (ray_jobs/backends): which one, then each one's knobs -------------------
    embedding_backend: str = env_var("EMBEDDING_BACKEND", "local")
    vector_store_backend: str = env_var("VECTOR_STORE_BACKEND", "lancedb")
    enrichment_backend: str = env_var("ENRICHMENT_BACKEND", "local")
    # auto = s3 for a paid embedding API, memory for the local model (embedding_cache_mode).
    embedding_cache: str = env_var("EMBEDDING_CACHE", "auto", parse=str.lower)
    embedding_cache_prefix: str = env_var("EMBEDDING_CACHE_PREFIX", "embedding-cache/")
    # Vectors the memory cache keeps per worker process (~1.8 KB each for the local model).
    embedding_cache_memory_entries: int = env_var("EMBEDDING_CACHE_MEMORY_ENTRIES", 10000)
    document_bucket: str = env_var("DOCUMENT_BUCKET", "")
    # Texts per embed call; 0 = the embedding backend's own (texts_per_embed_call).
    embed_batch_size: int = env_var("EMBED_BATCH_SIZE", 0)

    local_embedding_model_dir: str = env_var("LOCAL_EMBEDDING_MODEL_DIR", "")  # "" = the wheel's model
    local_embedding_threads: int = env_var("LOCAL_EMBEDDING_THREADS", 0)  # 0 = Ray's OMP_NUM_THREADS, else all cores
    # onnx-int8 (the encoder's MatMuls in int8, ~2.5x onnx per CPU-second; cosine to the model >= 0.98) |
    # onnx (float32, the model's vectors to ~1e-6) | numpy (no onnxruntime). docs/retrieval.md
    # measures int8's effect on retrieval.
    local_embedding_runtime: str = env_var("LOCAL_EMBEDDING_RUNTIME", "onnx-int8", parse=str.lower)

    openai_api_key_secret_arn: str = env_var("OPENAI_API_KEY_SECRET_ARN", "")
    openai_base_url: str = env_var("OPENAI_BASE_URL", "")  # "" = api.openai.com
    openai_embedding_model: str = env_var("OPENAI_EMBEDDING_MODEL", "text-embedding-3-small")
    openai_embedding_dims: int = env_var("OPENAI_EMBEDDING_DIMS", 0)  # 0 = the model's own
    openai_timeout_seconds: float = env_var("OPENAI_TIMEOUT_SECONDS", 120.0)
    openai_price_per_mtok: float = env_var("OPENAI_PRICE_PER_MTOK", 0.02)  # text-embedding-3-small list price, USD
    openai_max_attempts: int = env_var("OPENAI_MAX_ATTEMPTS", 6)
    openai_tpm_budget: int = env_var("OPENAI_TPM_BUDGET", 0)  # tokens per minute; 0 = no budget
    token_budget_table: str = env_var("TOKEN_BUDGET_TABLE", "")  # "" = a budget per process

    lancedb_uri: str = env_var("LANCEDB_URI", ".docpipe/vectors")
    lancedb_table: str = env_var("LANCEDB_TABLE", "chunks")
    embedding_dims: int = env_var("EMBEDDING_DIMS", 384)

    pinecone_api_key_secret_arn: str = env_var("PINECONE_API_KEY_SECRET_ARN", "")
    pinecone_index_host: str = env_var("PINECONE_INDEX_HOST", "")
    pinecone_namespace: str = env_var("PINECONE_NAMESPACE", "docpipe")

    comprehend_language: str = env_var("COMPREHEND_LANGUAGE", "en")
    comprehend_pii: str = env_var("COMPREHEND_PII", "off", parse=str.lower)
    comprehend_max_attempts: int = env_var("COMPREHEND_MAX_ATTEMPTS", 5)

    # --- extract (ray_jobs/extract.py, ray_jobs/pdf.py) ---------------------------------
    pdf_backend: str = env_var("PDF_BACKEND", "auto")
    pdf_timeout_seconds: float = env_var("PDF_TIMEOUT_SECONDS", 300.0)
    pdf_max_memory_mb: int = env_var("PDF_MAX_MEMORY_MB", 2048)
    pdf_parallel_threshold_pages: int = env_var("PDF_PARALLEL_THRESHOLD_PAGES", 200)
    # How a parse/render child starts: zygote (forked from a process that already imported
    # the parsers) | exec (a new interpreter each time; ~0.1 CPU-s more per document).
    pdf_child_start: str = env_var("PDF_CHILD_START", "zygote", parse=str.lower)
    # --- OCR of pages without a text layer (ray_jobs/ocr.py; docs/formats-and-ocr.md) -----
    # none | local (an offline engine in the Ray image) | textract (Amazon Textract).
    ocr_backend: str = env_var("OCR_BACKEND", "local", parse=str.lower)
    ocr_engine: str = env_var("OCR_ENGINE", "rapidocr", parse=str.lower)  # local: rapidocr | tesseract
    # 300: rapidocr found every expected phrase of the corpus scans (150: 42 of 48) for ~10%
    # more CPU per page (docs/formats-and-ocr.md).
    ocr_dpi: int = env_var("OCR_DPI", 300)
    ocr_max_pages: int = env_var("OCR_MAX_PAGES", 500)  # pages OCR'd per document; the rest stay without text
    ocr_timeout_seconds: float = env_var("OCR_TIMEOUT_SECONDS", 1800.0)  # per document, all its pages
    ocr_min_confidence: float = env_var("OCR_MIN_CONFIDENCE", 0.5)  # lines below it are dropped (0..1)
    ocr_threads: int = env_var("OCR_THREADS", 0)  # 0 = Ray's OMP_NUM_THREADS, else 1
    ocr_parallel_threshold_pages: int = env_var("OCR_PARALLEL_THRESHOLD_PAGES", 8)  # more: Ray tasks
    textract_price_per_page: float = env_var("TEXTRACT_PRICE_PER_PAGE", costs.TEXTRACT_PER_PAGE)  # list price, USD
    textract_async_min_pages: int = env_var("TEXTRACT_ASYNC_MIN_PAGES", 2)
    textract_max_attempts: int = env_var("TEXTRACT_MAX_ATTEMPTS", 6)
    textract_poll_seconds: float = env_var("TEXTRACT_POLL_SECONDS", 5.0)
    # --- chunk (ray_jobs/chunking.py; docs/retrieval.md): sizes in the embedding model's
    # own tokens (special tokens excluded), never above its window (ray_jobs/tokens.py).
    chunk_max_tokens: int = env_var("CHUNK_MAX_TOKENS", 254)
    # 254/0: the eval's best (docs/retrieval.md); overlap only helped the vector mode.
    chunk_overlap_tokens: int = env_var("CHUNK_OVERLAP_TOKENS", 0)
    # PDF page breaks: cross (chunks run on across pages) | prefer (a chunk ends at a page
    # break when it is at least half full) | never (each page is chunked on its own).
    chunk_page_breaks: str = env_var("CHUNK_PAGE_BREAKS", "prefer", parse=str.lower)

    # --- query (ray_jobs/search.py): vector | keyword | hybrid (reciprocal rank fusion) ---
    # keyword: the eval's best mode, ahead of hybrid and vector on every metric
    # (docs/retrieval.md); all-MiniLM-L6-v2 reads English only.
    query_mode: str = env_var("QUERY_MODE", "keyword", parse=str.lower)
    # The vector list's weight in hybrid's fusion (the keyword list's is 1): 0.5 measured
    # better than 1 on the eval (docs/retrieval.md).
    hybrid_vector_weight: float = env_var("HYBRID_VECTOR_WEIGHT", 0.5)

    # --- stage services and jobs (ray_jobs/service.py, ray_jobs/callback.py) ------------
    # JSON of the custom resources every document task asks for; the Ray containers set
    # one only workers offer, so no document lands on the head. {} on a one-node cluster.
    task_resources: dict[str, Any] = env_var("DOCPIPE_TASK_RESOURCES", {})  # noqa: RUF009 - a default_factory
    heartbeat_interval_seconds: float = env_var("DOCPIPE_HEARTBEAT_INTERVAL", 20.0)
    # SQS long polling: at most 20 s; shorter makes SIGTERM and idle exits quicker.
    receive_wait_seconds: int = env_var("STAGE_SERVICE_RECEIVE_WAIT_SECONDS", 10)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StageSettings:
        """The settings of `env` (default: this process's environment). Raises ValueError
        naming the variable when a value does not parse."""
        settings = read_env(cls, env)
        settings.embedding_cache_mode()  # an unknown cache mode fails here, not mid-document
        return settings

    def embedding_cache_mode(self) -> str:
        """EMBEDDING_CACHE with ``auto`` resolved: pay once per distinct text with a paid
        API; a local model is cheaper than S3 but dearer than a hash lookup, so it caches
        in the worker's memory. infra/ray-cluster.yaml grants the workers embedding-cache/
        under the same rule (condition UseEmbeddingCache)."""
        if self.embedding_cache not in CACHE_MODES:
            raise ValueError(f"EMBEDDING_CACHE={self.embedding_cache!r}: expected one of {', '.join(CACHE_MODES)}")
        if self.embedding_cache == "auto":
            return "s3" if self.embedding_backend == "openai" else "memory"
        return self.embedding_cache

    def texts_per_embed_call(self) -> int:
        """The local model wants small batches; the OpenAI embedder splits under the
        API's limits itself, so it gets large ones (fewer requests)."""
        if self.embed_batch_size > 0:
            return self.embed_batch_size
        return 1024 if self.embedding_backend == "openai" else 64

    def key(self) -> str:
        """The whole configuration as one string: objects built from it are cached under it."""
        return json.dumps(asdict(self), sort_keys=True)

