"""What the format readers share: the block list they produce, text decoding, and a
writer that turns a walk over markup (HTML elements, Markdown tokens) into blocks.

A reader returns `Parsed`: body blocks and headings (level 1-3) in reading order, plus
the document's title. ray_jobs.formats turns that into sections.
"""

from __future__ import annotations

import codecs
import re
import unicodedata
from dataclasses import dataclass, field

import charset_normalizer

CELL_SEPARATOR = " | "


@dataclass(frozen=True)
class Block:
    text: str  # body text: lines, paragraphs separated by a blank line; a heading: one line
    level: int = 0  # 0 body text, 1..3 a heading that starts a section


@dataclass
class Parsed:
    blocks: list[Block] = field(default_factory=list)
    title: str = ""  # HTML <title> / DOCX Title paragraph: locator of the text before any heading
    # The title heads every heading path: a DOCX Title paragraph is the visible top of the
    # outline ("Travel policy › Hotels"); an HTML <title> is metadata, usually the h1 again.
    title_heads_paths: bool = False


_WS = re.compile(r"\s+")
_LINE_EDGES = re.compile(r"[^\S\n]*\n[^\S\n]*")
_BLANK_RUNS = re.compile(r"\n{3,}")


def one_line(s: str) -> str:
    """Whitespace runs (newlines included) to one space, trimmed: headings and cells."""
    return _WS.sub(" ", s).strip()


def tidy(s: str) -> str:
    """Spaces around line ends dropped and blank-line runs cut to one."""
    return _BLANK_RUNS.sub("\n\n", _LINE_EDGES.sub("\n", s)).strip()


# --- decoding ------------------------------------------------------------------------------

_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"),
         (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))
# Characters a Western text in windows-1252 has besides letters (see _looks_western).
_WESTERN_SIGNS = set("€‚„…†‡ˆ‰‹‘’“”•–—˜™›«»°§©®¶·¡¿£¥¢×÷±µ¹²³¼½¾ª º\u00a0\u00ad")


def _looks_western(data: bytes) -> bool:
    """Whether `data` reads as Western European text in windows-1252: every non-ASCII
    character a letter or common typographic sign, and accented letters a minority of the
    letters (a Cyrillic or Greek single-byte text also decodes to Latin letters, but
    nearly all of them non-ASCII). charset_normalizer guesses wrong on short Western
    texts (it read "café naïve" as cp1006), and windows-1252 is the commonest non-UTF-8
    encoding of the files people upload."""
    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError:  # 0x81, 0x8D, 0x8F, 0x90, 0x9D are undefined in cp1252
        return False
    ascii_letters = other_letters = 0
    for ch in text:
        if ch.isascii():
            ascii_letters += ch.isalpha()
        elif unicodedata.category(ch).startswith("L"):
            other_letters += 1
        elif ch not in _WESTERN_SIGNS:
            return False
    return other_letters * 3 <= ascii_letters + other_letters


def decode_bytes(data: bytes, declared: str | None = None) -> tuple[str, str]:
    """(text, encoding used). A BOM wins, then UTF-8 when the bytes are valid UTF-8 (text
    in a legacy encoding almost never is, and pages declaring latin-1 while serving UTF-8
    are common), then `declared` (the encoding a file states, e.g. HTML's <meta charset>)
    when the bytes decode with it, then windows-1252 when the text looks Western, then
    charset_normalizer's best guess, then latin-1, which decodes any bytes: this never
    fails."""
    for bom, name in _BOMS:
        if data.startswith(bom):
            return data[len(bom):].decode(name, errors="replace"), name
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    if declared:
        try:
            return data.decode(declared), declared
        except (UnicodeDecodeError, LookupError):
            pass  # a wrong declaration is common: detect instead
    if _looks_western(data):
        return data.decode("cp1252"), "cp1252"
    best = charset_normalizer.from_bytes(data).best()
    if best is not None and best.encoding:
        try:
            return data.decode(best.encoding), best.encoding
        except (UnicodeDecodeError, LookupError):
            pass
    return data.decode("latin-1"), "latin-1"


# --- writer ----------------------------------------------------------------------------------


class BlockWriter:
    """Collects a walk's text into Blocks: body text with line and paragraph breaks,
    headings, and table rows (cells joined by CELL_SEPARATOR, one line per row). While a
    heading or cell is being collected, everything inside it goes onto one line."""

    def __init__(self) -> None:
        self.blocks: list[Block] = []
        self._body: list[str] = []
        self._captures: list[list[str]] = []  # headings / cells being collected, innermost last
        self._rows: list[list[str]] = []  # table rows being collected, innermost last
        # Breaks are written only before the next text, the stronger one winning, so
        # "</li><li>" or "</p>\n<p>" give one line or paragraph break, never more.
        self._pending = 0  # 0 none, 1 line break, 2 paragraph break

    def text(self, s: str) -> None:
        if not s:
            return
        if self._captures:
            self._captures[-1].append(s)
            return
        if s.isspace() and (self._pending or not self._body):
            return  # whitespace between blocks
        if self._pending and self._body:
            self._body.append("\n" * self._pending)
        self._pending = 0
        self._body.append(s)

    def brk(self, paragraph: bool = False) -> None:
        """A line break, or a paragraph break (a blank line)."""
        if self._captures:
            self._captures[-1].append(" ")
        else:
            self._pending = max(self._pending, 2 if paragraph else 1)

    def begin_capture(self) -> None:
        self._captures.append([])

    def end_capture(self) -> str:
        return one_line("".join(self._captures.pop())) if self._captures else ""

    def heading(self, level: int, text: str) -> None:
        """A heading of level 1-3 starts a section; inside a heading or cell it is text."""
        if not text:
            return
        if self._captures:
            self.text(f" {text} ")
            return
        self._flush()
        self.blocks.append(Block(text, level))

    def begin_row(self) -> None:
        self._rows.append([])

    def cell(self, text: str) -> None:
        if self._rows:
            self._rows[-1].append(text)
        else:  # a cell outside any row: plain text
            self.text(f" {text} ")

    def end_row(self) -> None:
        cells = self._rows.pop() if self._rows else []
        if not any(cells):
            return
        line = CELL_SEPARATOR.join(cells)
        if self._captures:  # a table inside a cell: its rows stay in that cell
            self.text(f" {line} ")
        else:
            self.brk()
            self.text(line)
            self.brk()

    def finish(self) -> list[Block]:
        self._flush()
        return self.blocks

    def _flush(self) -> None:
        text = tidy("".join(self._body))
        self._body = []
        self._pending = 0
        if text:
            self.blocks.append(Block(text))
