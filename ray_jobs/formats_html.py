"""HTML -> blocks (for ray_jobs.formats), with lxml.html.

Decoding (formats_common.decode_bytes): a BOM, else UTF-8 when the bytes are valid UTF-8,
else the charset the file declares in its first 4 KB (<meta charset>, <meta http-equiv
content="...; charset=...">, an XML declaration; the labels browsers read as
windows-1252 read so, per WHATWG), else detection. We decode rather than hand libxml2
the bytes: it reads a declared iso-8859-1 "€" as U+0080 and UTF-8 mislabelled latin-1 as
mojibake. The text is then parsed (lxml recovers from malformed markup, as browsers do);
libxml2's HTML parser loads no DTD and no external entity.

Dropped with their content: script, style, noscript, template, svg, iframe, object, embed,
head (its <title> is kept as the document title), nav (menus repeat on every page of a
site and say nothing about this one), and elements with the `hidden` attribute. Block
elements break lines; h1-h3 start sections (h4-h6 are lines of their section); a table
row is one line of cells; <pre> keeps its lines; elsewhere whitespace collapses as a
browser shows it. Images are not text (their alt text is usually "logo" or "icon").
The parser runs with huge_tree so that nesting up to 2048 levels (hundreds of unclosed
tags are common in old pages) is read; beyond that libxml2 gives up, which is
DocumentMalformed rather than a silent "no text".
"""

from __future__ import annotations

import codecs
import re
from typing import Any

import lxml.html  # type: ignore[import-untyped]  # lxml ships no type information (lxml-stubs is not pinned)
from lxml import etree

from docpipe import errors
from ray_jobs.formats_common import BlockWriter, Parsed, one_line
from ray_jobs.formats_common import decode_bytes as _decode_bytes

DROPPED = ("script", "style", "noscript", "template", "svg", "iframe", "object", "embed", "head", "nav", "title")
HEADINGS = {"h1": 1, "h2": 2, "h3": 3}
PARAGRAPH_ELEMENTS = frozenset({
    "p", "div", "section", "article", "main", "header", "footer", "aside", "blockquote", "pre", "table",
    "ul", "ol", "dl", "menu", "figure", "figcaption", "form", "fieldset", "legend", "address", "h4", "h5",
    "h6", "hr", "details", "summary", "center", "caption", "body", "dialog", "hgroup",
})
LINE_ELEMENTS = frozenset({"li", "br", "dt", "dd", "option", "tbody", "thead", "tfoot"})
CELLS = frozenset({"td", "th"})

_PRESCAN_BYTES = 4096
_DECLARED = re.compile(rb"""<meta[^>]+?charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)"""
                       rb"""|<\?xml[^>]+encoding\s*=\s*["']([A-Za-z0-9_.:-]+)""", re.IGNORECASE)
# WHATWG Encoding: these labels mean windows-1252 in a browser.
_AS_CP1252 = {"iso8859-1", "latin-1", "ascii", "cp1252"}
_XML_DECLARATION = re.compile(r"\A\s*<\?xml[^>]*>")
_HTML_WS = re.compile(r"[ \t\n\r\f]+")


def _parser() -> Any:
    # huge_tree: libxml2 otherwise gives up at 256 levels of nesting and returns an empty
    # document, and pages with hundreds of unclosed <font> or <div> tags nest that deep.
    # The walk below is iterative and the file size is bounded before parsing.
    return lxml.html.HTMLParser(huge_tree=True)


def declared_encoding(data: bytes) -> str | None:
    """The Python codec of the charset the document declares near its start, if known."""
    m = _DECLARED.search(data[:_PRESCAN_BYTES])
    if not m:
        return None
    label = (m.group(1) or m.group(2) or b"").decode("ascii", errors="replace")
    try:
        name = codecs.lookup(label).name
    except LookupError:
        return None
    if name in _AS_CP1252:
        return "cp1252"
    if name.startswith(("utf-16", "utf-32")):
        return "utf-8"  # a declaration read as ASCII cannot be UTF-16: browsers take UTF-8
    return name


def decode_html(data: bytes) -> tuple[str, str]:
    return _decode_bytes(data, declared_encoding(data))


def read_html(data: bytes) -> Parsed:
    text, _encoding = decode_html(data)
    # lxml refuses a str with an XML encoding declaration; NUL is not text.
    text = _XML_DECLARATION.sub("", text, count=1).replace("\x00", "")
    if not text.strip():
        return Parsed()
    parser = _parser()
    try:
        root = lxml.html.document_fromstring(text, parser=parser)
    except etree.ParserError:  # "Document is empty": neither markup nor text
        _check_limits(parser)
        return Parsed()
    _check_limits(parser)
    title_el = root.find(".//title")
    title = one_line(title_el.text_content()) if title_el is not None else ""
    writer = BlockWriter()
    walk(root, writer)
    return Parsed(writer.finish(), title)


def _check_limits(parser: Any) -> None:
    """libxml2 stops at a resource limit (nesting over 2048 levels even with huge_tree)
    and returns what it had, often nothing: say so rather than "no text"."""
    for entry in parser.error_log:
        if entry.type_name == "ERR_RESOURCE_LIMIT":
            raise errors.DocumentMalformed(f"the HTML file is beyond the parser's limits ({entry.message.strip()})")


def walk(root: Any, writer: BlockWriter) -> None:
    """Write the text of the tree under `root` (an lxml.html element) into `writer`."""
    etree.strip_elements(root, *DROPPED, with_tail=False)
    for hidden in root.xpath("descendant-or-self::*[@hidden]"):
        if hidden is not root:
            hidden.drop_tree()  # keeps its tail
    etree.strip_tags(root, etree.Comment, etree.ProcessingInstruction)
    pre = 0
    for event, el in etree.iterwalk(root, events=("start", "end")):
        tag = el.tag if isinstance(el.tag, str) else ""
        if event == "start":
            if tag in HEADINGS or tag in CELLS:
                writer.begin_capture()
            elif tag == "tr":
                writer.begin_row()
            elif tag in PARAGRAPH_ELEMENTS:
                writer.brk(paragraph=True)
            elif tag in LINE_ELEMENTS:
                writer.brk()
            if tag == "pre":
                pre += 1
            _text(writer, el.text, pre)
            continue
        if tag in HEADINGS:
            writer.heading(HEADINGS[tag], writer.end_capture())
        elif tag in CELLS:
            writer.cell(writer.end_capture())
        elif tag == "tr":
            writer.end_row()
        elif tag in PARAGRAPH_ELEMENTS:
            writer.brk(paragraph=True)
        elif tag in LINE_ELEMENTS and tag != "br":
            writer.brk()
        if tag == "pre":
            pre -= 1
        if el is not root:
            _text(writer, el.tail, pre)


def _text(writer: BlockWriter, s: str | None, pre: int) -> None:
    if s:
        writer.text(s if pre else _HTML_WS.sub(" ", s))


def fragment_walk(html: str, writer: BlockWriter) -> None:
    """Text of an HTML fragment (a Markdown file's raw HTML block) into `writer`."""
    html = html.replace("\x00", "")
    if not html.strip():
        return
    try:
        root = lxml.html.fragment_fromstring(html, create_parent="div", parser=_parser())
    except etree.ParserError:
        return
    walk(root, writer)
