"""PDF -> raw pages with one library or the other: the parsing that runs inside the limited
child (``pdf_sandbox``), importable here for unit tests.

Backends:
- ``auto``: pypdfium2 first (~20x faster than pypdf on the corpus). If pdfium cannot open
  the document (or sees no pages, or crashes), pypdf reads the whole document. If one page
  fails in pdfium or yields no text, that page alone is retried with pypdf.
- ``pypdf``: pypdf only.

A password we do not have raises ChildError("PdfEncrypted"); a document neither library can
open, or without pages, ChildError("PdfMalformed"). Out of memory always surfaces as
MemoryError (never as a broken file the other library might read).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any, TypedDict

from ray_jobs.pdf_text import has_text, normalise_text

if TYPE_CHECKING:
    import pypdf

BACKENDS = ("auto", "pypdf")
ERROR_MAX = 300  # characters kept of a per-page error message


class RawPage(TypedDict):
    page_number: int  # 1-based
    text: str  # normalised
    extractor: str  # "pdfium" | "pypdf"
    error: str | None  # set when this page failed while others succeeded


class Parsed(TypedDict):
    page_count: int
    backend: str  # "pdfium" | "pypdf": the library that opened the document
    pages: list[RawPage] | None  # None: more pages than the probe threshold



class ChildError(Exception):
    """An outcome the child reports by code (PdfEncrypted, PdfMalformed, TooLarge)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def short_error(lib: str, exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return f"{lib}: {type(exc).__name__}: {text}"[:ERROR_MAX]


def is_enomem(exc: BaseException) -> bool:
    # Under RLIMIT_AS, dlopen fails with "failed to map segment" (an OSError from ctypes,
    # an ImportError from an extension module) and mmap with ENOMEM.
    if isinstance(exc, OSError) and exc.errno == errno.ENOMEM:
        return True
    return isinstance(exc, (OSError, ImportError)) and any(
        marker in str(exc) for marker in ("failed to map segment", "Cannot allocate memory"))


def _raise_if_memory(exc: BaseException) -> None:
    """Out of memory must end the document as TooLarge, not look like a broken file
    that the other library might read."""
    if is_enomem(exc):
        raise MemoryError(str(exc)) from exc


def _pdfium_page_text(doc: Any, index: int) -> str:
    page = doc[index]
    try:
        textpage = page.get_textpage()
        try:
            text: str = textpage.get_text_range()
            return text
        finally:
            textpage.close()
    finally:
        page.close()


def _pypdf_page_text(reader: pypdf.PdfReader, index: int) -> str:
    # Plain mode: layout mode loses text on rotated pages (docs/design.md, "Facts the code relies on").
    return reader.pages[index].extract_text() or ""


def _open_pdfium(path: str, password: str) -> tuple[Any, int]:
    """-> (document, page_count). Raises ChildError or the library's exception."""
    import pypdfium2 as pdfium
    import pypdfium2.raw as pdfium_c

    try:
        doc = pdfium.PdfDocument(path, password=password)
    except pdfium.PdfiumError as exc:
        if getattr(exc, "err_code", None) == pdfium_c.FPDF_ERR_PASSWORD:
            raise ChildError("PdfEncrypted", short_error("pdfium", exc)) from exc
        raise
    return doc, len(doc)


def _open_pypdf(path: str, password: str) -> tuple[pypdf.PdfReader, int]:
    """-> (reader, page_count). Raises ChildError or the library's exception."""
    import pypdf

    reader = pypdf.PdfReader(path)
    if reader.is_encrypted:
        try:
            ok = reader.decrypt(password)
        except Exception as exc:  # unsupported algorithm, broken /Encrypt dictionary
            raise ChildError("PdfEncrypted", short_error("pypdf", exc)) from exc
        if ok == pypdf.PasswordType.NOT_DECRYPTED:
            raise ChildError("PdfEncrypted", "pypdf: the document needs a password")
    try:
        count = len(reader.pages)  # walks the page tree; raises on loops
    except pypdf.errors.FileNotDecryptedError as exc:
        raise ChildError("PdfEncrypted", short_error("pypdf", exc)) from exc
    return reader, count


class _LazyPypdf:
    """pypdf opened on first need (auto mode's per-page fallback); a failure to open is
    remembered so every fallback page does not pay for it again."""

    def __init__(self, path: str, password: str):
        self.path, self.password = path, password
        self.reader: pypdf.PdfReader | None = None
        self.count = 0
        self.error: str | None = None

    def page(self, index: int) -> tuple[str | None, str | None]:
        """-> (raw text, None) or (None, error message)."""
        if self.reader is None and self.error is None:
            try:
                self.reader, self.count = _open_pypdf(self.path, self.password)
            except MemoryError:
                raise
            except ChildError as exc:
                self.error = f"pypdf: {exc.message}"[:ERROR_MAX]
            except Exception as exc:
                _raise_if_memory(exc)
                self.error = short_error("pypdf", exc)
        if self.reader is None:  # it failed to open, now or on an earlier page
            return None, self.error
        if index >= self.count:
            return None, f"pypdf: page {index + 1} not in its {self.count}-page tree"
        try:
            return _pypdf_page_text(self.reader, index), None
        except MemoryError:
            raise
        except Exception as exc:
            return None, short_error("pypdf", exc)


def _page(number: int, text: str, extractor: str, error: str | None) -> RawPage:
    return {"page_number": number, "text": text, "extractor": extractor, "error": error}


def extract_pages(path: str, backend: str = "auto", password: str = "", first: int = 0,
                  last: int | None = None, probe_threshold: int | None = None) -> Parsed:
    """Parse pages [first, last) (0-based, last=None: to the end) in this process.

    Returns the page count, the library that opened the document and its pages with
    normalised text; with ``probe_threshold`` set and more pages than that, returns
    early with ``"pages": None`` so the caller can split the work. Raises ChildError.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: expected one of {BACKENDS}")
    doc: Any = None  # a pypdfium2 PdfDocument
    count = 0
    used = "pypdf"
    reasons: list[str] = []
    encrypted = False
    if backend == "auto":
        try:
            doc, count = _open_pdfium(path, password)
            used = "pdfium"
            if count == 0:  # pypdf sometimes finds pages in a tree pdfium rejects
                reasons.append("pdfium: no pages")
                doc.close()
                doc, used = None, "pypdf"
        except MemoryError:
            raise
        except ChildError as exc:
            encrypted = True
            reasons.append(exc.message)
        except Exception as exc:
            _raise_if_memory(exc)
            reasons.append(short_error("pdfium", exc))

    reader: pypdf.PdfReader | None = None
    if doc is None:
        try:
            reader, count = _open_pypdf(path, password)
        except MemoryError:
            raise
        except ChildError as exc:
            raise ChildError(exc.code, "; ".join([*reasons, exc.message])) from exc
        except Exception as exc:
            _raise_if_memory(exc)
            code = "PdfEncrypted" if encrypted else "PdfMalformed"
            raise ChildError(code, "; ".join([*reasons, short_error("pypdf", exc)])) from exc
        if count == 0:
            raise ChildError("PdfMalformed", "; ".join([*reasons, "pypdf: no pages"]))

    if probe_threshold is not None and count > probe_threshold:
        return {"page_count": count, "backend": used, "pages": None}

    stop = count if last is None else min(last, count)
    pages: list[RawPage] = []
    if reader is not None:  # pypdf reads the whole document
        for i in range(first, stop):
            try:
                pages.append(_page(i + 1, normalise_text(_pypdf_page_text(reader, i)), "pypdf", None))
            except MemoryError:
                raise
            except Exception as exc:
                pages.append(_page(i + 1, "", "pypdf", short_error("pypdf", exc)))
        return {"page_count": count, "backend": used, "pages": pages}

    fallback = _LazyPypdf(path, password)
    for i in range(first, stop):
        text, error = "", None
        try:
            text = normalise_text(_pdfium_page_text(doc, i))
        except MemoryError:
            raise
        except Exception as exc:
            error = short_error("pdfium", exc)
        if error is None and has_text(text):
            pages.append(_page(i + 1, text, "pdfium", None))
            continue
        # Per-page fallback: pdfium failed this page or found no text on it.
        alt, alt_error = fallback.page(i)
        if alt is not None:
            alt = normalise_text(alt)
            if has_text(alt) or error is not None:
                pages.append(_page(i + 1, alt, "pypdf", None))
                continue
        if error is not None:  # both failed: a per-page error, the other pages stand
            pages.append(_page(i + 1, "", "pdfium", f"{error}; {alt_error}"[:ERROR_MAX]))
        else:  # pdfium read the page fine; it just has no text layer
            pages.append(_page(i + 1, text, "pdfium", None))
    doc.close()
    return {"page_count": count, "backend": used, "pages": pages}
