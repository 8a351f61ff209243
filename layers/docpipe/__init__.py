"""docpipe: the shared domain code of the PDF ingestion pipeline.

Lambda handlers (functions/) and Ray jobs (ray_jobs/) both import this package.
It must never import `ray`: Lambda packages cannot carry it.
"""

__version__ = "0.1.0"
