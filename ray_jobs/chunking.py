"""Pages -> chunks (the rows of ``chunks/<doc>/<ver>/chunks.jsonl``).

Document text and offsets
-------------------------
``document_text(pages)`` is every page's ``text``, in ``page_number`` order, joined by
``"\\n\\n"``. Every page contributes, including pages without text (their text is empty
or a few characters), so the offsets of a page never depend on whether its neighbours
have text: with an empty page 2, the document text is ``p1 + "\\n\\n" + "" + "\\n\\n" + p3``.
Page texts are used as given (pdf.extract_pdf already normalised them).

A chunk's ``char_start``/``char_end`` are offsets into that string (end exclusive, in
Python ``str`` code points), and ``text == document_text(pages)[char_start:char_end]``
always. Chunk text never starts or ends with whitespace (the span is trimmed), so
``page_start`` is the page holding its first character and ``page_end`` the page holding
its last; the ``"\\n\\n"`` separators belong to no page.

Splitting
---------
The text is cut into pieces, recursively, at paragraph breaks (a blank line, which
includes page breaks), then line breaks, then sentence ends; a piece still over
``max_tokens`` is cut at whitespace between words, and a single "word" still over it
(CJK text without spaces, long URLs) into token windows. Separators stay with the piece
before them, so pieces tile the text exactly. Each cut is ranked:
paragraph > sentence end (including a line ending a sentence) > line break > word > token
window.

Merging
-------
Pieces are merged greedily while the sum of their token counts stays within
``max_tokens``. Where the chunk ends: at the strongest-ranked cut among those that leave
the chunk at least half full (ties: the last one), so chunks end at paragraph or
sentence ends when they can. The exact ``count_tokens`` of the final chunk text is then
checked (BPE counts are not additive) and pieces are given back until it fits, so no
chunk ever exceeds ``max_tokens``.

The next chunk starts with the last whole pieces of the previous chunk that fit in
``overlap_tokens`` (none if its last piece alone is bigger), and always adds at least
one new piece. Whitespace-only chunks are skipped. The output is a pure function of the
input: the same pages and arguments give identical chunks.

Sections
--------
Pages that carry a ``locator`` (DOCX, HTML, Markdown and text files: each "page" is a
section under one heading) are chunked one section at a time, so no chunk spans two
sections and a chunk's ``locator`` names exactly where it comes from. PDF pages are
chunked across page breaks (``page_start``..``page_end`` cite the span).
"""

from __future__ import annotations

import bisect
import hashlib
import re
from typing import Any

from ray_jobs import tokens

PAGE_SEPARATOR = "\n\n"
MIN_MAX_TOKENS = 4  # one character is at most 4 UTF-8 bytes, so at most 4 tokens

# Cut ranks: lower is a better place to end a chunk.
PARAGRAPH, SENTENCE, LINE, WORD, WINDOW, END = 0, 1, 2, 3, 4, -1

_PARAGRAPH = re.compile(r"\n[ \t]*\n\s*")
_LINE = re.compile(r"\n\s*")
# Western sentence ends need the following space; CJK full stops need none.
_SENTENCE = re.compile(r"[.!?…]+[\"'”’»)\]]*[ \t]+|[。！？]+[」』”’)）]*[ \t]*")
_WORD = re.compile(r"\s+")
_SENTENCE_END_BEFORE = re.compile(r"[.!?…。！？][\"'”’»)\]」』）]*\s*$")

_TOKENIZE_MAX_BYTES = 200_000  # bpe-openai refuses inputs over 200k tokens (or 1M chars)
_WINDOW_SLICE_CHARS = 40_000  # token windows are cut from slices this long


def document_text(pages: list[dict[str, Any]]) -> str:
    """The document text that chunk offsets refer to (see the module docstring)."""
    return PAGE_SEPARATOR.join((p.get("text") or "") for p in _ordered(pages))


def _ordered(pages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(pages, key=lambda p: p["page_number"])


def _count_as_chunk(text: str) -> int:
    """Tokens of a piece, as itself or trimmed, whichever is more: a piece may end up
    alone in a chunk, trimmed, and trimming can add tokens (" 😀" is one token and a
    byte; "😀" alone is two)."""
    n = tokens.count_tokens(text)
    stripped = text.strip()
    if stripped != text:
        n = max(n, tokens.count_tokens(stripped))
    return n


class _Chunker:
    def __init__(self, doc: str, max_tokens: int):
        self.doc = doc
        self.max_tokens = max_tokens
        # pieces: parallel lists of start, end, token count, rank of the cut after it
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.counts: list[int] = []
        self.ranks: list[int] = []

    # -- token counting ------------------------------------------------------------------
    def _fits(self, start: int, end: int) -> tuple[bool, int]:
        """(fits in max_tokens, its token count or -1 when not counted)."""
        text = self.doc[start:end]
        nbytes = len(text.encode("utf-8"))
        if nbytes > _TOKENIZE_MAX_BYTES:
            # Too long to tokenise in one call. At <= 128 bytes per token it cannot fit
            # any realistic limit; if it could, splitting it further only moves cuts.
            return False, -1
        n = _count_as_chunk(text)
        return n <= self.max_tokens, n

    # -- splitting -----------------------------------------------------------------------
    def _rank_of_cut(self, pos: int) -> int:
        """Rank of a cut at `pos` by the separator that ends there."""
        if pos >= len(self.doc):
            return END
        back = self.doc[max(0, pos - 12):pos]
        stripped = back.rstrip()
        sep = back[len(stripped):]
        if sep.count("\n") >= 2:
            return PARAGRAPH
        if _SENTENCE_END_BEFORE.search(back):
            return SENTENCE
        if "\n" in sep:
            return LINE
        if sep:
            return WORD
        return WINDOW

    def _add(self, start: int, end: int, count: int) -> None:
        self.starts.append(start)
        self.ends.append(end)
        self.counts.append(count)
        self.ranks.append(self._rank_of_cut(end))

    @staticmethod
    def _cuts(pattern: re.Pattern[str], text: str, start: int, end: int) -> list[tuple[int, int]]:
        spans, pos = [], start
        for m in pattern.finditer(text, start, end):
            if start < m.end() < end:
                spans.append((pos, m.end()))
                pos = m.end()
        spans.append((pos, end))
        return spans

    def split(self, start: int, end: int, level: int = 0) -> None:
        """Cut [start, end) into pieces of at most max_tokens, recursively."""
        if start >= end:
            return
        if level < 3:
            # Paragraphs, lines and sentences are always separated: fine pieces let a
            # chunk end at a good place and let the overlap be whole sentences.
            pattern = (_PARAGRAPH, _LINE, _SENTENCE)[level]
            for a, b in self._cuts(pattern, self.doc, start, end):
                self.split(a, b, level + 1)
            return
        fits, n = self._fits(start, end)
        if fits:
            self._add(start, end, n)
            return
        if level == 3:  # words
            spans = self._cuts(_WORD, self.doc, start, end)
            if len(spans) > 1:
                for a, b in spans:
                    self.split(a, b, 4)
                return
        self._windows(start, end)

    def _windows(self, start: int, end: int) -> None:
        """Token windows of at most max_tokens, cut at character boundaries."""
        enc = tokens.encoding()
        pos = start
        while pos < end:
            slice_end = min(end, pos + _WINDOW_SLICE_CHARS)
            seg = self.doc[pos:slice_end]
            toks = enc.encode_ordinary(seg)
            if len(toks) <= self.max_tokens and _count_as_chunk(seg) <= self.max_tokens:
                self._add(pos, slice_end, _count_as_chunk(seg))
                pos = slice_end
                continue
            nbytes = sum(len(enc.decode_single_token_bytes(t)) for t in toks[: self.max_tokens])
            # The characters whose bytes the first max_tokens tokens cover (a character
            # split between tokens is left for the next window).
            length = len(seg.encode("utf-8")[:nbytes].decode("utf-8", errors="ignore"))
            length = max(1, length)
            # Re-tokenised on its own a window can count differently: shrink until it fits.
            while length > 1:
                n = _count_as_chunk(seg[:length])
                if n <= self.max_tokens:
                    break
                length -= max(1, (n - self.max_tokens))
            self._add(pos, pos + length, _count_as_chunk(seg[:length]))
            pos += length

    # -- merging -------------------------------------------------------------------------
    def _trimmed(self, first: int, last: int) -> tuple[int, int]:
        s, e = self.starts[first], self.ends[last]
        while s < e and self.doc[s].isspace():
            s += 1
        while e > s and self.doc[e - 1].isspace():
            e -= 1
        return s, e

    def merge(self, overlap_tokens: int) -> list[tuple[int, int, int]]:
        """-> [(char_start, char_end, token_count)] of the chunks."""
        counts, ranks, limit = self.counts, self.ranks, self.max_tokens
        n = len(counts)
        out: list[tuple[int, int, int]] = []
        first = 0  # first piece of the current chunk
        fresh = 0  # first piece not yet in any emitted chunk
        while fresh < n:
            total, last = 0, first - 1
            while last + 1 < n and total + counts[last + 1] <= limit:
                last += 1
                total += counts[last]
            if last < fresh:  # the overlap leaves no room for a new piece: shorten it
                first += 1
                continue
            cut = last
            if last < n - 1:
                # End at the best-ranked cut that leaves the chunk at least half full.
                best, filled = None, 0
                for k in range(first, last + 1):
                    filled += counts[k]
                    if k >= fresh and filled * 2 >= limit and (best is None or ranks[k] <= ranks[best]):
                        best = k
                if best is not None:
                    cut = best
            while True:
                s, e = self._trimmed(first, cut)
                if s == e:
                    count = 0
                    break
                count = tokens.count_tokens(self.doc[s:e])
                if count <= limit:
                    break
                # BPE merges across pieces made the sum an underestimate: give one back.
                if cut > fresh:
                    cut -= 1
                elif first < fresh:
                    first += 1
                else:  # cannot happen: a single piece was counted to fit on its own
                    raise AssertionError(f"piece {cut} has {count} > {limit} tokens")
            if s < e:
                out.append((s, e, count))
            fresh = cut + 1
            # Overlap: the last whole pieces of this chunk within overlap_tokens.
            nxt, carried = cut + 1, 0
            while nxt - 1 > first and carried + counts[nxt - 1] <= overlap_tokens:
                nxt -= 1
                carried += counts[nxt]
            first = nxt
        return out


def _validate(max_tokens: int, overlap_tokens: int) -> None:
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise ValueError(f"max_tokens must be an int, got {max_tokens!r}")
    if isinstance(overlap_tokens, bool) or not isinstance(overlap_tokens, int):
        raise ValueError(f"overlap_tokens must be an int, got {overlap_tokens!r}")
    if max_tokens <= 0:
        raise ValueError(f"max_tokens must be > 0, got {max_tokens}")
    if max_tokens < MIN_MAX_TOKENS:
        raise ValueError(f"max_tokens must be >= {MIN_MAX_TOKENS} (one character can take "
                         f"{MIN_MAX_TOKENS} tokens), got {max_tokens}")
    if overlap_tokens < 0:
        raise ValueError(f"overlap_tokens must be >= 0, got {overlap_tokens}")
    if overlap_tokens >= max_tokens:
        raise ValueError(f"overlap_tokens ({overlap_tokens}) must be < max_tokens ({max_tokens})")


def chunk_pages(pages: list[dict[str, Any]], *, document_id: str, processing_version: str,
                max_tokens: int = 400, overlap_tokens: int = 50) -> list[dict[str, Any]]:
    """Chunk a document's pages (pages.jsonl rows; only `page_number` and `text` are
    read) into chunks.jsonl rows. See the module docstring for offsets and splitting."""
    _validate(max_tokens, overlap_tokens)
    ordered = _ordered(pages)
    numbers = [p["page_number"] for p in ordered]
    if len(set(numbers)) != len(numbers):
        raise ValueError("pages contain a page_number twice")
    doc = document_text(ordered)
    if not doc.strip():
        return []

    # Where each page's text starts in `doc`: a character at offset i belongs to the
    # last page starting at or before i (separators are whitespace, never in a chunk's
    # first or last character).
    page_starts, pos = [], 0
    for p in ordered:
        page_starts.append(pos)
        pos += len(p.get("text") or "") + len(PAGE_SEPARATOR)

    if any(p.get("locator") for p in ordered):
        # Sections (DOCX/HTML/Markdown/text): no chunk spans two, so each chunk's
        # locator is the one place it comes from and its citation is exact.
        spans: list[tuple[int, int, int]] = []
        for p, start in zip(ordered, page_starts, strict=True):
            section = _Chunker(doc, max_tokens)
            section.split(start, start + len(p.get("text") or ""))
            spans += section.merge(overlap_tokens)
    else:
        chunker = _Chunker(doc, max_tokens)
        chunker.split(0, len(doc))
        spans = chunker.merge(overlap_tokens)
    rows: list[dict[str, Any]] = []
    for s, e, count in spans:
        text = doc[s:e]
        rows.append({
            "document_id": document_id,
            "processing_version": processing_version,
            "chunk_index": len(rows),
            "page_start": numbers[bisect.bisect_right(page_starts, s) - 1],
            "page_end": numbers[bisect.bisect_right(page_starts, e - 1) - 1],
            "char_start": s,
            "char_end": e,
            # The chunk's section (DOCX/HTML/Markdown/text pages carry one; PDF pages do
            # not: their page numbers are the locator).
            "locator": ordered[bisect.bisect_right(page_starts, s) - 1].get("locator") or "",
            "text": text,
            "token_count": count,
            "content_hash": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        })
    return rows
