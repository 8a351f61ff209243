"""Pages -> chunks (the rows of ``chunks/<doc>/<ver>/chunks.jsonl``), sized in the
embedding model's own tokens.

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

Tokens
------
Sizes are in the tokens of the model that embeds the chunks (``tokens.chunk_tokenizer``:
all-MiniLM-L6-v2's WordPiece, window 254 content tokens, or OpenAI's cl100k_base, window
8191), special tokens excluded. ``max_tokens`` above the window is an error: the embedder
would silently drop the rest. ``token_count`` is the chunk's count in that tokenizer, and
no chunk exceeds ``max_tokens``.

Splitting
---------
The text is cut into pieces at paragraph breaks (a blank line, which includes page
breaks), then line breaks, then sentence ends; a piece still over ``max_tokens`` is cut
at whitespace between words, and a single "word" still over it (CJK text without spaces,
long URLs) into windows at the tokenizer's own token boundaries. Separators stay with the
piece before them, so pieces tile the text exactly. Each piece is counted once, all of
a document's in one batch. Each cut is ranked: page break (``page_breaks="prefer"``) >
paragraph > sentence end (including a line ending a sentence) > line break > word >
token window.

Merging
-------
Pieces are merged greedily while the sum of their counts stays within ``max_tokens``.
Where the chunk ends: at the strongest-ranked cut among those that leave the chunk at
least half full (ties: the last one), so chunks end at page, paragraph or sentence ends
when they can. WordPiece counts add up across a cut at whitespace or punctuation, so the
sum is the chunk's count; across any other cut (and always for BPE, whose counts are not
additive) the chunk text is counted again and pieces are given back until it fits.

The next chunk starts with the last whole pieces of the previous chunk that fit in
``overlap_tokens`` (none if its last piece alone is bigger; with ``prefer``, none from
before a page break, so a chunk that starts a page starts at its top), and always adds
at least one new piece. Whitespace-only chunks are skipped. The output is a pure
function of the input: the same pages, arguments and tokenizer give identical chunks.

Pages and sections
------------------
``page_breaks`` (CHUNK_PAGE_BREAKS) for PDF pages: ``cross`` chunks run on across page
breaks like across paragraphs; ``prefer`` (default) ends a chunk at a page break when
that leaves it at least half full; ``never`` chunks each page on its own, so no chunk
spans two pages. ``page_start``..``page_end`` cite the span. Pages that carry a
``locator`` (DOCX, HTML, Markdown and text files: each "page" is a section under one
heading) are always chunked one section at a time, so a chunk's ``locator`` names
exactly where it comes from.
"""

from __future__ import annotations

import bisect
import hashlib
import re
from typing import Any

from ray_jobs import tokens
from ray_jobs.tokens import ChunkTokenizer

PAGE_SEPARATOR = "\n\n"
PAGE_BREAK_MODES = ("cross", "prefer", "never")
MIN_MAX_TOKENS = 4  # one character is at most 4 UTF-8 bytes, so at most 4 BPE tokens

# Cut ranks: lower is a better place to end a chunk.
PAGE, PARAGRAPH, SENTENCE, LINE, WORD, WINDOW, END = 0, 1, 2, 3, 4, 5, -1

_PARAGRAPH = re.compile(r"\n[ \t]*\n\s*")
_LINE = re.compile(r"\n\s*")
# Western sentence ends need the following space; CJK full stops need none.
_SENTENCE = re.compile(r"[.!?…]+[\"'”’»)\]]*[ \t]+|[。！？]+[」』”’)）]*[ \t]*")
_WORD = re.compile(r"\s+")
_SENTENCE_END_BEFORE = re.compile(r"[.!?…。！？][\"'”’»)\]」』）]*\s*$")

_WINDOW_SLICE_CHARS = 40_000  # token windows are cut from slices this long


def document_text(pages: list[dict[str, Any]]) -> str:
    """The document text that chunk offsets refer to (see the module docstring)."""
    return PAGE_SEPARATOR.join((p.get("text") or "") for p in _ordered(pages))


def _ordered(pages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(pages, key=lambda p: p["page_number"])


class _Chunker:
    def __init__(self, doc: str, max_tokens: int, tokenizer: ChunkTokenizer,
                 page_starts: list[int] | None = None):
        self.doc = doc
        self.max_tokens = max_tokens
        self.tok = tokenizer
        # Where PDF pages start, when a page break is a cut of its own rank ("prefer").
        self.page_starts = page_starts
        # pieces: parallel lists of start, end, token count, rank of the cut after it
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.counts: list[int] = []
        self.ranks: list[int] = []

    # -- token counting ------------------------------------------------------------------
    def _count_spans(self, spans: list[tuple[int, int]]) -> list[int | None]:
        """Token counts of doc[a:b], one batch; None for a span too long to count in one
        call (it cannot fit: splitting it further only moves cuts). For a tokenizer that
        is not additive, the count as itself or trimmed, whichever is more: a piece may
        end up alone in a chunk, trimmed, and trimming can add BPE tokens (" 😀" is one
        token and a byte; "😀" alone is two)."""
        limit = self.tok.max_chars
        idx = [i for i, (a, b) in enumerate(spans) if limit is None or b - a <= limit]
        texts = [self.doc[spans[i][0]:spans[i][1]] for i in idx]
        counts = self.tok.counts(texts)
        if not self.tok.additive:
            trimmed = [(k, t.strip()) for k, t in enumerate(texts) if t.strip() != t]
            for (k, _), n in zip(trimmed, self.tok.counts([t for _, t in trimmed]), strict=True):
                counts[k] = max(counts[k], n)
        out: list[int | None] = [None] * len(spans)
        for i, n in zip(idx, counts, strict=True):
            out[i] = n
        return out

    def _count_as_chunk(self, text: str) -> int:
        n = self.tok.count(text)
        if not self.tok.additive and text.strip() != text:
            n = max(n, self.tok.count(text.strip()))
        return n

    # -- splitting -----------------------------------------------------------------------
    def _rank_of_cut(self, pos: int) -> int:
        """Rank of a cut at `pos` by the separator that ends there."""
        if pos >= len(self.doc):
            return END
        if self.page_starts and self._page_break_before(pos):
            return PAGE
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

    def _page_break_before(self, pos: int) -> bool:
        """Whether the text before `pos` (whitespace skipped) is on an earlier page."""
        assert self.page_starts is not None
        i = pos - 1
        while i >= 0 and self.doc[i].isspace():
            i -= 1
        return i >= 0 and bisect.bisect_right(self.page_starts, i) < bisect.bisect_right(self.page_starts, pos)

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

    def _sentences(self, start: int, end: int, level: int, out: list[tuple[int, int]]) -> None:
        """Paragraphs, lines and sentences are always separated: fine pieces let a chunk
        end at a good place and let the overlap be whole sentences."""
        if start >= end:
            return
        if level == 3:
            out.append((start, end))
            return
        pattern = (_PARAGRAPH, _LINE, _SENTENCE)[level]
        for a, b in self._cuts(pattern, self.doc, start, end):
            self._sentences(a, b, level + 1, out)

    def split(self, regions: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Cut each region [start, end) into pieces of at most max_tokens; -> each
        region's range of piece indexes."""
        limit = self.max_tokens
        per_region: list[list[tuple[int, int]]] = []
        for a, b in regions:
            spans: list[tuple[int, int]] = []
            self._sentences(a, b, 0, spans)
            per_region.append(spans)
        sentences = [s for spans in per_region for s in spans]
        counts = self._count_spans(sentences)
        # The words of the sentences over the limit, counted in one more batch.
        words: dict[int, list[tuple[int, int]]] = {}
        for i, ((a, b), n) in enumerate(zip(sentences, counts, strict=True)):
            if n is None or n > limit:
                spans = self._cuts(_WORD, self.doc, a, b)
                if len(spans) > 1:
                    words[i] = spans
        flat = [w for spans in words.values() for w in spans]
        word_counts = iter(self._count_spans(flat))

        ranges: list[tuple[int, int]] = []
        i = 0
        for spans in per_region:
            first = len(self.starts)
            for a, b in spans:
                n = counts[i]
                if n is not None and n <= limit:
                    self._add(a, b, n)
                elif i in words:
                    for wa, wb in words[i]:
                        wn = next(word_counts)
                        if wn is not None and wn <= limit:
                            self._add(wa, wb, wn)
                        else:
                            self._windows(wa, wb)
                else:
                    self._windows(a, b)
                i += 1
            ranges.append((first, len(self.starts)))
        return ranges

    def _windows(self, start: int, end: int) -> None:
        """Windows of at most max_tokens, cut where the tokenizer's tokens start (a
        character split between tokens is left for the next window)."""
        limit, tok = self.max_tokens, self.tok
        pos = start
        while pos < end:
            slice_end = min(end, pos + _WINDOW_SLICE_CHARS)
            seg = self.doc[pos:slice_end]
            starts = [s for s, _ in tok.offsets(seg)]
            cur, i = 0, 0  # the window's start in seg and its first token
            while cur < len(seg):
                j = i + limit  # the first token of the next window
                if j >= len(starts):
                    if slice_end < end and cur > 0:
                        break  # the slice's last tokens may run on past it: slice again
                    cut = len(seg)
                else:
                    cut = max(starts[j], cur + 1)
                n = self._window_count(seg, starts, cur, cut)
                while n > limit and cut - cur > 1:  # re-tokenised on its own it counts more: shrink
                    j = bisect.bisect_left(starts, cut) - max(1, n - limit)
                    cut = starts[j] if i < j < len(starts) and starts[j] > cur else cut - 1
                    n = self._window_count(seg, starts, cur, cut)
                self._add(pos + cur, pos + cut, n)
                cur = cut
                i = bisect.bisect_left(starts, cur)
            pos += cur

    def _window_count(self, seg: str, starts: list[int], a: int, b: int) -> int:
        if self.tok.additive and self.tok.is_boundary(seg, a) and self.tok.is_boundary(seg, b):
            # Both ends are where the tokenizer cuts anyway: the tokens between them.
            return bisect.bisect_left(starts, b) - bisect.bisect_left(starts, a)
        return self._count_as_chunk(seg[a:b])

    # -- merging -------------------------------------------------------------------------
    def _trimmed(self, first: int, last: int) -> tuple[int, int]:
        s, e = self.starts[first], self.ends[last]
        while s < e and self.doc[s].isspace():
            s += 1
        while e > s and self.doc[e - 1].isspace():
            e -= 1
        return s, e

    def merge(self, lo: int, hi: int, overlap_tokens: int) -> list[tuple[int, int, int]]:
        """Pieces lo..hi-1 -> [(char_start, char_end, token_count)] of the chunks."""
        counts, ranks, limit = self.counts, self.ranks, self.max_tokens
        # unsafe[k]: cuts before piece k across which counts may not add up.
        unsafe = [0]
        for k in range(lo, hi):
            ok = self.tok.additive and self.tok.is_boundary(self.doc, self.ends[k])
            unsafe.append(unsafe[-1] + (not ok))
        out: list[tuple[int, int, int]] = []
        first = lo  # first piece of the current chunk
        fresh = lo  # first piece not yet in any emitted chunk
        while fresh < hi:
            total, last = 0, first - 1
            while last + 1 < hi and total + counts[last + 1] <= limit:
                last += 1
                total += counts[last]
            if last < fresh:  # the overlap leaves no room for a new piece: shorten it
                first += 1
                continue
            cut = last
            if last < hi - 1:
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
                if self.tok.additive and unsafe[cut - lo] == unsafe[first - lo]:
                    # Every cut inside is a boundary: the pieces' counts add up to the
                    # chunk's (trimmed whitespace has no tokens).
                    count = sum(counts[first:cut + 1])
                else:
                    count = self._count_as_chunk(self.doc[s:e])
                if count <= limit:
                    break
                # Counts did not add up across a cut: give one piece back.
                if cut > fresh:
                    cut -= 1
                elif first < fresh:
                    first += 1
                else:  # cannot happen: a single piece was counted to fit on its own
                    raise AssertionError(f"piece {cut} has {count} > {limit} tokens")
            if s < e:
                out.append((s, e, count))
            fresh = cut + 1
            # Overlap: the last whole pieces of this chunk within overlap_tokens, never
            # from before a page break the chunk ended at or crossed.
            nxt, carried = cut + 1, 0
            while (nxt - 1 > first and ranks[nxt - 1] != PAGE
                   and carried + counts[nxt - 1] <= overlap_tokens):
                nxt -= 1
                carried += counts[nxt]
            first = nxt
        return out


def _validate(max_tokens: int, overlap_tokens: int, page_breaks: str, tokenizer: ChunkTokenizer) -> None:
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise ValueError(f"max_tokens must be an int, got {max_tokens!r}")
    if isinstance(overlap_tokens, bool) or not isinstance(overlap_tokens, int):
        raise ValueError(f"overlap_tokens must be an int, got {overlap_tokens!r}")
    if max_tokens <= 0:
        raise ValueError(f"max_tokens must be > 0, got {max_tokens}")
    if max_tokens < MIN_MAX_TOKENS:
        raise ValueError(f"max_tokens must be >= {MIN_MAX_TOKENS} (one character can take "
                         f"{MIN_MAX_TOKENS} tokens), got {max_tokens}")
    if max_tokens > tokenizer.window:
        raise ValueError(f"CHUNK_MAX_TOKENS={max_tokens} is over the window of the embedding model's "
                         f"tokenizer ({tokenizer.name}: {tokenizer.window} tokens): the embedder "
                         f"would drop the rest of a chunk")
    if overlap_tokens < 0:
        raise ValueError(f"overlap_tokens must be >= 0, got {overlap_tokens}")
    if overlap_tokens >= max_tokens:
        raise ValueError(f"overlap_tokens ({overlap_tokens}) must be < max_tokens ({max_tokens})")
    if page_breaks not in PAGE_BREAK_MODES:
        raise ValueError(f"CHUNK_PAGE_BREAKS={page_breaks!r}: expected one of {', '.join(PAGE_BREAK_MODES)}")


def chunk_pages(pages: list[dict[str, Any]], *, document_id: str, processing_version: str,
                max_tokens: int = 254, overlap_tokens: int = 32, page_breaks: str = "prefer",
                tokenizer: ChunkTokenizer | None = None) -> list[dict[str, Any]]:
    """Chunk a document's pages (pages.jsonl rows; only `page_number`, `text` and
    `locator` are read) into chunks.jsonl rows, sized in `tokenizer` (default: the
    configured embedding model's, `tokens.chunk_tokenizer()`). See the module docstring."""
    tok = tokenizer if tokenizer is not None else tokens.chunk_tokenizer()
    _validate(max_tokens, overlap_tokens, page_breaks, tok)
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

    sections = any(p.get("locator") for p in ordered)
    if sections or page_breaks == "never":
        # Sections (DOCX/HTML/Markdown/text): no chunk spans two, so each chunk's
        # locator is the one place it comes from and its citation is exact. PDF pages
        # with "never": likewise one page at a time.
        regions = [(start, start + len(p.get("text") or "")) for p, start in zip(ordered, page_starts, strict=True)]
    else:
        regions = [(0, len(doc))]
    chunker = _Chunker(doc, max_tokens, tok, page_starts if page_breaks == "prefer" and not sections else None)
    spans: list[tuple[int, int, int]] = []
    for lo, hi in chunker.split(regions):
        spans += chunker.merge(lo, hi, overlap_tokens)
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
            "token_count": count,  # in the embedding model's tokens
            "content_hash": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        })
    return rows
