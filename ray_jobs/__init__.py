"""docpipe's CPU-heavy stages, run as Ray jobs (``python -m ray_jobs.<stage>``).

Pure stage code (pdf, chunking, enrichment, embedding, vector stores) lives in plain
modules that work with or without a Ray cluster; the entry points add the Ray and
Step Functions parts (warm actors, heartbeats, the task-token callback).
"""
