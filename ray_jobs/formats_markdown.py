"""Markdown -> blocks (for ray_jobs.formats), with markdown-it-py (CommonMark + tables).

YAML front matter (``---`` ... ``---`` or ``...`` at the very start) is dropped. ATX and
setext headings of level 1-3 start sections; deeper ones are lines of their section.
Inline markup goes (links keep their text, images their alt text, code spans their
code); a paragraph is one line, a hard break starts a new one; code blocks keep their
lines; a list item is a line; a table row is a line of cells; raw HTML blocks are read
as HTML (formats_html), so an ``<h1>`` there is a heading too.
"""

from __future__ import annotations

import re

from markdown_it import MarkdownIt
from markdown_it.token import Token

from ray_jobs.formats_common import BlockWriter, Parsed, decode_bytes
from ray_jobs.formats_html import fragment_walk

_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(?:.*?\n)?(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.DOTALL)
_LIST_OPEN = ("bullet_list_open", "ordered_list_open")
_LIST_CLOSE = ("bullet_list_close", "ordered_list_close")
_PARAGRAPH_BREAKS = frozenset({"table_open", "table_close", "blockquote_open", "blockquote_close", "hr"})

_parser: MarkdownIt | None = None


def _markdown() -> MarkdownIt:
    global _parser
    if _parser is None:
        # CommonMark's preset stops at 20 levels of nesting and silently drops what lies
        # deeper (and after it); 100 keeps real documents whole and recursion shallow.
        _parser = MarkdownIt("commonmark", {"maxNesting": 100}).enable("table")
    return _parser


def strip_front_matter(text: str) -> str:
    return _FRONT_MATTER.sub("", text, count=1)


def read_markdown(data: bytes) -> Parsed:
    text, _encoding = decode_bytes(data)
    text = strip_front_matter(text.replace("\r\n", "\n").replace("\r", "\n"))
    writer = BlockWriter()
    lists = 0  # list nesting: a paragraph inside a list item ends a line, not a paragraph
    heading: int | None = None  # level of the section heading being collected
    for tok in _markdown().parse(text):
        kind = tok.type
        if kind == "heading_open":
            level = int(tok.tag[1:])
            if level <= 3:
                heading = level
                writer.begin_capture()
            else:
                writer.brk(paragraph=True)
        elif kind == "heading_close":
            if heading is not None:
                writer.heading(heading, writer.end_capture())
                heading = None
            else:
                writer.brk(paragraph=True)
        elif kind == "inline":
            writer.text(_inline(tok.children or []))
        elif kind == "paragraph_close":
            writer.brk(paragraph=not lists)
        elif kind in _LIST_OPEN:
            lists += 1
            writer.brk(paragraph=lists == 1)
        elif kind in _LIST_CLOSE:
            lists -= 1
            writer.brk(paragraph=not lists)
        elif kind == "list_item_open":
            writer.brk()
        elif kind in ("fence", "code_block"):
            writer.brk(paragraph=not lists)
            writer.text(tok.content)
            writer.brk(paragraph=not lists)
        elif kind == "html_block":
            writer.brk(paragraph=True)
            fragment_walk(tok.content, writer)
            writer.brk(paragraph=True)
        elif kind == "tr_open":
            writer.begin_row()
        elif kind == "tr_close":
            writer.end_row()
        elif kind in ("th_open", "td_open"):
            writer.begin_capture()
        elif kind in ("th_close", "td_close"):
            writer.cell(writer.end_capture())
        elif kind in _PARAGRAPH_BREAKS:
            writer.brk(paragraph=True)
    return Parsed(writer.finish())


def _inline(children: list[Token]) -> str:
    out: list[str] = []
    for child in children:
        kind = child.type
        if kind in ("text", "code_inline", "image"):  # an image's content is its alt text
            out.append(child.content)
        elif kind == "softbreak":
            out.append(" ")  # a wrapped line of the same paragraph
        elif kind == "hardbreak":
            out.append("\n")
    return "".join(out)
