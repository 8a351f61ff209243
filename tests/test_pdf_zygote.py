"""Parse children forked from the zygote (PDF_CHILD_START=zygote, the default) give what a
new interpreter gives, and a child that hangs or crashes takes only itself down."""

from __future__ import annotations

from pathlib import Path

import pytest

from docpipe import errors
from ray_jobs import pdf_sandbox

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
FOUR_PAGES = CORPUS / "py-pdf-sample-files/004-pdflatex-4-pages/pdflatex-4-pages.pdf"
needs_corpus = pytest.mark.skipif(not FOUR_PAGES.exists(), reason="../shared/corpus not beside the checkout")


def request(path: Path) -> dict:
    return {"path": str(path), "backend": "auto", "password": "", "first": 0, "last": None,
            "probe_threshold": None, "max_memory_mb": 1024}


@needs_corpus
def test_a_zygote_child_parses_like_a_new_interpreter(monkeypatch):
    monkeypatch.setenv("PDF_CHILD_START", "exec")
    fresh = pdf_sandbox.run_child(request(FOUR_PAGES), 60)
    monkeypatch.setenv("PDF_CHILD_START", "zygote")
    first = pdf_sandbox.run_child(request(FOUR_PAGES), 60)
    zygote = pdf_sandbox._zygote["proc"].pid
    cpu = pdf_sandbox.children_cpu_seconds()
    second = pdf_sandbox.run_child(request(FOUR_PAGES), 60)
    assert first == second == fresh and len(first["pages"]) == 4
    assert pdf_sandbox._zygote["proc"].pid == zygote  # one zygote serves both
    # The forked child's CPU is counted, though it is the zygote's child, not ours.
    assert pdf_sandbox.children_cpu_seconds() > cpu


@needs_corpus
def test_a_hanging_or_crashing_child_leaves_the_zygote_serving(monkeypatch):
    monkeypatch.setenv("PDF_CHILD_START", "zygote")
    pdf_sandbox.run_child(request(FOUR_PAGES), 60)
    zygote = pdf_sandbox._zygote["proc"].pid
    with monkeypatch.context() as m:
        m.setattr(pdf_sandbox, "CHILD_CODE", "import time; time.sleep(600)")
        with pytest.raises(errors.PdfTimeout):
            pdf_sandbox.run_child(request(FOUR_PAGES), 1)
        m.setattr(pdf_sandbox, "CHILD_CODE", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
        with pytest.raises(pdf_sandbox.ChildCrashed):
            pdf_sandbox.run_child(request(FOUR_PAGES), 30)
    assert len(pdf_sandbox.run_child(request(FOUR_PAGES), 60)["pages"]) == 4
    assert pdf_sandbox._zygote["proc"].pid == zygote and pdf_sandbox._zygote["proc"].poll() is None


@needs_corpus
def test_a_dead_zygote_is_replaced(monkeypatch):
    monkeypatch.setenv("PDF_CHILD_START", "zygote")
    pdf_sandbox.run_child(request(FOUR_PAGES), 60)
    old = pdf_sandbox._zygote["proc"]
    old.kill()
    old.wait()
    assert len(pdf_sandbox.run_child(request(FOUR_PAGES), 60)["pages"]) == 4
    assert pdf_sandbox._zygote["proc"].pid != old.pid
