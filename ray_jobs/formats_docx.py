"""DOCX -> blocks (for ray_jobs.formats), with python-docx.

Before python-docx sees the bytes (`check_package`): an OLE compound file (what Word
writes for a password-protected document, and the old binary .doc) is refused as such;
the file must be a zip holding word/document.xml; a zip bomb (members unpacking to more
than MAX_UNPACKED_BYTES in all, or a large member compressed more than MAX_RATIO:1) is
TooLarge. zipfile never inflates a member past the size its directory declares (a lie
fails the CRC check), so the declared sizes bound the memory used.

python-docx parses every part with lxml parsers built with resolve_entities=False (and
lxml's defaults: no DTD loading, no network), so an external entity in document.xml is
never read (tests/test_formats.py checks it).

Reading order is the body's XML children: paragraphs and tables, and the content of
block-level content controls (w:sdt, e.g. a cover page), which python-docx's
iter_inner_content skips. A paragraph's text includes tracked insertions, hyperlinks,
fields and inline content controls (python-docx's Paragraph.text has only direct runs
and hyperlinks) but not deleted text; a text box's paragraphs follow its anchor
paragraph. Headings: paragraph styles "Heading 1".."Heading 3" (by style name, so a
localised style id works; a style based on one counts as one) or outline level 1-3;
the first "Title" paragraph names the document and heads every heading path.
Consecutive list paragraphs are one block, a line each; a table row is one line of
cells (a merged cell once). Headers, footers, footnotes and comments are not read.
"""

from __future__ import annotations

import io
import re
import zipfile
from typing import Any

import docx

from docpipe import errors
from ray_jobs.formats_common import CELL_SEPARATOR, Block, Parsed, one_line

OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
MAIN_PART = "word/document.xml"
MAX_UNPACKED_BYTES = 256 * 1024 * 1024
MAX_RATIO = 200  # deflate on real documents: ~5-30:1 for XML
RATIO_MIN_BYTES = 1024 * 1024  # small members may compress more; they cannot hurt
MAX_MEMBERS = 10_000

_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_MC_FALLBACK = "{http://schemas.openxmlformats.org/markup-compatibility/2006}Fallback"
P, TBL, TR, TC, SDT, SDT_CONTENT, CUSTOM_XML = (_W + t for t in ("p", "tbl", "tr", "tc", "sdt", "sdtContent", "customXml"))
T, TAB, BR, CR, NO_BREAK_HYPHEN, TXBX = (_W + t for t in ("t", "tab", "br", "cr", "noBreakHyphen", "txbxContent"))
VAL, STYLE_ID, TYPE = _W + "val", _W + "styleId", _W + "type"
# Never text: properties, deleted or moved-away runs, a text box's fallback copy.
_SKIP = frozenset({_W + "pPr", _W + "rPr", _W + "del", _W + "moveFrom", _MC_FALLBACK})
_CONTAINERS = frozenset({SDT, SDT_CONTENT, CUSTOM_XML})
TITLE = -1  # style level of the Title style
_HEADING_NAME = re.compile(r"heading ([1-3])")
_HEADING_ID = re.compile(r"heading([1-3])")


def check_package(data: bytes) -> None:
    """Refuse what is not a DOCX zip, or a zip bomb, before python-docx unpacks it."""
    if data.startswith(OLE_MAGIC):
        raise errors.DocumentMalformed(
            "the DOCX file is an OLE compound file, not a zip: a password-protected (encrypted) Word "
            "document, or an old binary .doc renamed. Remove the password or save it as .docx, then upload it again")
    bio = io.BytesIO(data)
    if not zipfile.is_zipfile(bio):
        raise errors.DocumentMalformed("the DOCX file is not a zip archive (a .docx is one): it is damaged "
                                       "or not a Word document")
    try:
        with zipfile.ZipFile(bio) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError) as exc:
        raise errors.DocumentMalformed(f"the DOCX file's zip directory is damaged: {exc}") from exc
    if MAIN_PART not in {i.filename for i in infos}:
        raise errors.DocumentMalformed(f"the DOCX file is a zip without {MAIN_PART}: not a Word document "
                                       "(another Office type or a zip renamed .docx?)")
    if len(infos) > MAX_MEMBERS:
        raise errors.TooLarge(f"the DOCX file holds {len(infos)} files, over the limit of {MAX_MEMBERS}")
    total = sum(i.file_size for i in infos)
    if total > MAX_UNPACKED_BYTES:
        raise errors.TooLarge(f"the DOCX file unpacks to {total / 2**20:.0f} MB, over the limit of "
                              f"{MAX_UNPACKED_BYTES / 2**20:.0f} MB")
    for i in infos:
        if i.file_size > RATIO_MIN_BYTES and i.file_size > MAX_RATIO * max(1, i.compress_size):
            raise errors.TooLarge(f"the DOCX file's {i.filename} unpacks {i.file_size // max(1, i.compress_size)} "
                                  f"times larger than it is stored (over {MAX_RATIO}:1: a zip bomb?)")


def read_docx(data: bytes) -> Parsed:
    check_package(data)
    document = docx.Document(io.BytesIO(data))
    reader = _Reader(_style_levels(document.styles.element))
    reader.container(document.element.body)
    reader.end_list()
    return Parsed(reader.blocks, reader.title, title_heads_paths=True)


def _style_levels(styles: Any) -> dict[str, tuple[int, bool]]:
    """Paragraph style id -> (level: 0 body, 1-3 heading, TITLE; whether it is a list style)."""
    raw: dict[str, tuple[str, str, int | None, bool]] = {}  # id -> name, based on, outline level, numbered
    for s in styles.iterchildren(_W + "style"):
        if s.get(TYPE, "paragraph") != "paragraph" or not s.get(STYLE_ID):
            continue
        name = s.find(_W + "name")
        based = s.find(_W + "basedOn")
        outline = s.find(f"{_W}pPr/{_W}outlineLvl")
        raw[s.get(STYLE_ID)] = (
            (name.get(VAL, "") if name is not None else "").lower(),
            based.get(VAL, "") if based is not None else "",
            _int(outline.get(VAL)) if outline is not None else None,
            s.find(f"{_W}pPr/{_W}numPr") is not None,
        )

    def resolve(sid: str, depth: int = 0) -> tuple[int, bool]:
        if sid not in raw or depth > 10:
            return 0, False
        name, based, outline, numbered = raw[sid]
        listed = numbered or name.startswith("list")
        m = _HEADING_NAME.fullmatch(name)
        if m:
            return int(m.group(1)), listed
        if name == "title":
            return TITLE, listed
        if outline is not None and 0 <= outline <= 2:
            return outline + 1, listed
        level, base_listed = resolve(based, depth + 1) if based else (0, False)
        return level, listed or base_listed

    return {sid: resolve(sid) for sid in raw}


def _int(s: str | None) -> int | None:
    try:
        return int(s) if s is not None else None
    except ValueError:
        return None


class _Reader:
    def __init__(self, styles: dict[str, tuple[int, bool]]) -> None:
        self.styles = styles
        self.blocks: list[Block] = []
        self.title = ""
        self._list: list[str] = []  # lines of the list being read

    def end_list(self) -> None:
        if self._list:
            self.blocks.append(Block("\n".join(self._list)))
            self._list = []

    def container(self, el: Any) -> None:
        """Paragraphs and tables of a body, cell, text box or content control, in order."""
        for child in el.iterchildren():
            tag = child.tag
            if tag == P:
                self.paragraph(child)
            elif tag == TBL:
                self.end_list()
                rows = table_lines(child)
                if rows:
                    self.blocks.append(Block("\n".join(rows)))
            elif tag in _CONTAINERS:
                self.container(child)

    def paragraph(self, p: Any) -> None:
        boxes: list[Any] = []
        text = paragraph_text(p, boxes)
        level, listed = self._level(p)
        if level > 0 and one_line(text):
            self.end_list()
            self.blocks.append(Block(one_line(text), level))
        elif text.strip():
            if level == TITLE and not self.title:
                self.title = one_line(text)
            if listed:
                self._list.append(one_line(text))
            else:
                self.end_list()
                self.blocks.append(Block(text.strip()))
        for box in boxes:
            self.container(box)

    def _level(self, p: Any) -> tuple[int, bool]:
        ppr = p.find(_W + "pPr")
        if ppr is None:
            return 0, False
        style = ppr.find(_W + "pStyle")
        sid = style.get(VAL, "") if style is not None else ""
        level, listed = self.styles.get(sid, (0, False))
        if sid and sid not in self.styles:  # a style id without a definition (non-Word writers)
            m = _HEADING_ID.fullmatch(sid.lower())
            level = int(m.group(1)) if m else 0
        outline = ppr.find(_W + "outlineLvl")
        direct = _int(outline.get(VAL)) if outline is not None else None
        if level == 0 and direct is not None and 0 <= direct <= 2:
            level = direct + 1
        return level, listed or ppr.find(_W + "numPr") is not None


def paragraph_text(p: Any, boxes: list[Any]) -> str:
    """The visible text of a paragraph; its text boxes are appended to `boxes`."""
    out: list[str] = []
    stack = [p.iterchildren()]
    while stack:
        el = next(stack[-1], None)
        if el is None:
            stack.pop()
            continue
        tag = el.tag
        if not isinstance(tag, str) or tag in _SKIP:
            continue
        if tag == T:
            out.append(el.text or "")
        elif tag == TAB:
            out.append("\t")
        elif tag in (BR, CR):
            out.append("\n")
        elif tag == NO_BREAK_HYPHEN:
            out.append("-")
        elif tag == TXBX:
            boxes.append(el)
        elif len(el):
            stack.append(el.iterchildren())
    return "".join(out)


def table_lines(tbl: Any) -> list[str]:
    """One line per row, cells joined; a nested table's rows stay inside their cell."""
    lines = []
    for tr in tbl.iterchildren(TR):
        cells = [one_line(cell_text(tc)) for tc in tr.iterchildren(TC)]
        if any(cells):
            lines.append(CELL_SEPARATOR.join(cells))
    return lines


def cell_text(tc: Any) -> str:
    parts: list[str] = []
    for child in tc.iterchildren():
        if child.tag == P:
            boxes: list[Any] = []
            parts.append(paragraph_text(child, boxes))
            parts.extend(cell_text(box) for box in boxes)
        elif child.tag == TBL:
            parts.extend(table_lines(child))
        elif child.tag in _CONTAINERS:
            parts.append(cell_text(child))
    return " ".join(parts)
