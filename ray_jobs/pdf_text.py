"""Text normalisation of extracted pages (pure; no PDF library).

``normalise_text`` is what every page's ``text`` in pages.jsonl went through; chunk offsets
refer to it. ``has_text`` decides whether a page counts as having a text layer.
"""

from __future__ import annotations

import re
import unicodedata

MIN_TEXT_CHARS = 3  # non-space characters for a page to count as having text

# A soft hyphen (U+00AD) ends a syllable: drop it and one following line break.
_SOFT_HYPHEN_BREAK = re.compile(r"\u00ad+(?:[ \t]*\n(?![ \t]*\n)[ \t]*)?")
# A word hyphenated across a line end: "infor-\nmation". Joined only when the next line
# starts in lower case, so "Just-in-\nTime" or "-\n2" keep their hyphen.
_HYPHEN_BREAK = re.compile(r"([^\W\d_])-[ \t]*\n[ \t]*([^\W\d_])")
# pdfium writes U+FFFE (get_text_range) or U+0002 (get_text_bounded) for a hyphen it found
# at a line end, in place of the hyphen and the break: "ef\ufffeficient",
# "Lucene\ufffeBM25". Like "-\n" above: dropped before a lower-case letter (a split
# syllable), a hyphen before anything else, so "Lucene-BM25" stays two searchable words
# instead of "LuceneBM25".
_PDFIUM_LINE_HYPHEN = re.compile(r"[\x02\ufffe]+[ \t]*(?:\n(?![ \t]*\n)[ \t]*)?(?=(.?))", re.S)
_SPACES = re.compile(r" {2,}")
_TRAILING = re.compile(r"[ \t]+\n")
_NEWLINES = re.compile(r"\n{3,}")


def _control_table() -> dict[int, str | None]:
    table: dict[int, str | None] = {}
    for cp in list(range(0x20)) + list(range(0x7F, 0xA0)):
        table[cp] = None
    # Vertical separators become line breaks rather than gluing lines together.
    for cp in (0x0B, 0x0C, 0x1C, 0x1D, 0x1E, 0x85, 0x2028, 0x2029):
        table[cp] = "\n"
    table[0x09] = "\t"
    table[0x0A] = "\n"
    # Invisible marks that only break words for search: zero-width space, word joiner,
    # BOM, noncharacters. ZWJ/ZWNJ stay: Arabic and Indic scripts need them.
    for cp in (0x00AD, 0x200B, 0x2060, 0xFEFF, 0xFFFE, 0xFFFF):
        table[cp] = None
    return table


_CONTROL = _control_table()


def normalise_text(s: str) -> str:
    """Normalise one page's text: line ends to \n, NFKC (ligatures), hyphenation undone,
    soft hyphens and control characters dropped, runs of spaces collapsed, trailing spaces
    and blank-line runs trimmed. Idempotent. Chunk offsets refer to this text."""
    if not s:
        return ""
    s = s.replace("\r\n", "\n").replace("\r", "\n")
    s = unicodedata.normalize("NFKC", s)  # ligatures (ﬁ -> fi), full-width forms, NBSP
    s = _SOFT_HYPHEN_BREAK.sub("", s)
    s = _PDFIUM_LINE_HYPHEN.sub(lambda m: "" if m.group(1).islower() or not m.group(1) else "-", s)
    s = s.translate(_CONTROL)
    s = _HYPHEN_BREAK.sub(lambda m: m.group(1) + m.group(2) if m.group(2).islower() else m.group(0), s)
    s = _SPACES.sub(" ", s)
    s = _TRAILING.sub("\n", s)
    s = _NEWLINES.sub("\n\n", s)
    return s.strip()


def has_text(text: str, min_chars: int = MIN_TEXT_CHARS) -> bool:
    n = 0
    for ch in text:
        if not ch.isspace():
            n += 1
            if n >= min_chars:
                return True
    return False
