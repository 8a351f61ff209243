"""docpipe benchmarks: `python -m bench` (see bench/__main__.py and docs/performance.md).

Modules: gen (clean text PDFs), bare (docpipe's stage code without the pipeline around
it), peer (the usual LangChain ingestion), e2e (the local stack, per-document timeline),
procs (memory and CPU from /proc), cost (AWS list prices), run (one run), report (tables).
"""
