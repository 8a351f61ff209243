"""ray_jobs.formats: DOCX, HTML, Markdown and plain text into pages.jsonl rows (one per
section). Every fixture is written by the test into tmp_path."""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import docx
import pytest
from lxml import etree

from docpipe import errors
from ray_jobs import formats, formats_docx
from ray_jobs.chunking import chunk_pages, document_text
from ray_jobs.formats import extract_file
from ray_jobs.pdf import ExtractResult
from ray_jobs.pdf_text import has_text, normalise_text

ROW_KEYS = {"document_id", "processing_version", "page_number", "text", "char_count", "has_text",
            "extractor", "error", "locator"}


def extract(path: Path, doc_type: str, **kw) -> ExtractResult:
    res = extract_file(str(path), doc_type, document_id="doc1", processing_version="v1-test", **kw)
    assert_consistent(res, doc_type)
    return res


def assert_consistent(res: ExtractResult, doc_type: str) -> None:
    assert res.page_count == len(res.pages) >= 1
    assert [r["page_number"] for r in res.pages] == list(range(1, res.page_count + 1))
    assert res.pages_with_text + res.pages_without_text == res.page_count
    assert res.page_errors == 0
    assert res.extractor == doc_type and res.stats == {doc_type: res.page_count}
    for row in res.pages:
        assert set(row) == ROW_KEYS
        assert row["document_id"] == "doc1" and row["processing_version"] == "v1-test"
        assert row["char_count"] == len(row["text"])
        assert row["has_text"] == has_text(row["text"])
        assert row["extractor"] == doc_type and row["error"] is None
        assert row["text"] == normalise_text(row["text"])


def sections(res: ExtractResult) -> list[tuple[str, str]]:
    return [(r["locator"], r["text"]) for r in res.pages]


# --- DOCX ---------------------------------------------------------------------------------


def make_docx(path: Path) -> Path:
    d = docx.Document()
    d.add_paragraph("Operator Handbook", style="Title")
    d.add_paragraph("Written for the night shift.")
    d.add_heading("Installation", level=1)
    d.add_paragraph("Install the package first.")
    d.add_heading("Requirements", level=2)
    d.add_paragraph("Python 3.11", style="List Bullet")
    d.add_paragraph("Two cores", style="List Bullet")
    table = d.add_table(rows=3, cols=3)
    for i, row in enumerate([["Setting", "Value", "Unit"], ["memory", "2048", "MB"], ["timeout", "300", "s"]]):
        for j, value in enumerate(row):
            table.cell(i, j).text = value
    d.add_paragraph("After the table.")
    d.add_heading("Checks", level=3)
    d.add_heading("Disk space", level=4)  # deeper than 3: a line of the Checks section
    d.add_paragraph("Keep 10 GB free.")
    d.add_heading("Usage", level=1)
    d.add_paragraph("Run the pipeline.")
    d.save(str(path))
    return path


def test_docx_sections_follow_headings_with_title_tables_and_lists(tmp_path):
    res = extract(make_docx(tmp_path / "handbook.docx"), "docx")
    assert sections(res) == [
        ("Operator Handbook", "Operator Handbook\n\nWritten for the night shift."),
        ("Operator Handbook › Installation", "Installation\n\nInstall the package first."),
        ("Operator Handbook › Installation › Requirements",
         "Requirements\n\nPython 3.11\nTwo cores\n\nSetting | Value | Unit\nmemory | 2048 | MB\ntimeout | 300 | s"
         "\n\nAfter the table."),
        ("Operator Handbook › Installation › Requirements › Checks", "Checks\n\nDisk space\n\nKeep 10 GB free."),
        ("Operator Handbook › Usage", "Usage\n\nRun the pipeline."),
    ]
    assert res.pages_with_text == 5 and res.pages_without_text == 0


def test_docx_reads_tracked_insertions_and_content_controls_but_not_deleted_text(tmp_path):
    d = docx.Document()
    d.add_heading("Changes", level=1)
    d.add_paragraph("placeholder")
    src = tmp_path / "src.docx"
    d.save(str(src))
    w = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
    body_xml = (f'<w:p xmlns:w="{w}"><w:r><w:t xml:space="preserve">kept </w:t></w:r>'
                '<w:ins w:id="1" w:author="a"><w:r><w:t>inserted</w:t></w:r></w:ins>'
                '<w:del w:id="2" w:author="a"><w:r><w:delText>deleted</w:delText></w:r></w:del></w:p>')
    sdt_xml = (f'<w:sdt xmlns:w="{w}"><w:sdtContent><w:p><w:r><w:t>cover page text</w:t></w:r></w:p>'
               '</w:sdtContent></w:sdt>')
    data = src.read_bytes()
    doc_xml = zipfile.ZipFile(io.BytesIO(data)).read("word/document.xml").decode()
    start = doc_xml.rindex("<w:p>", 0, doc_xml.index("placeholder"))
    end = doc_xml.index("</w:p>", start) + len("</w:p>")
    assert "placeholder" in doc_xml[start:end]
    doc_xml = doc_xml[:start] + body_xml.replace(f' xmlns:w="{w}"', "") + sdt_xml.replace(f' xmlns:w="{w}"', "") + doc_xml[end:]
    path = rewrite_member(src, tmp_path / "tracked.docx", "word/document.xml", doc_xml.encode())
    res = extract(path, "docx")
    assert sections(res) == [("Changes", "Changes\n\nkept inserted\n\ncover page text")]


def rewrite_member(src: Path, dst: Path, name: str, content: bytes) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, content if info.filename == name else zin.read(info.filename))
    return dst


def test_docx_external_entity_is_not_resolved(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    src = tmp_path / "src.docx"
    d = docx.Document()
    d.add_paragraph("Visible before")
    d.save(str(src))
    doc_xml = zipfile.ZipFile(src).read("word/document.xml").decode()
    decl_end = doc_xml.index("?>") + 2
    root_tag = doc_xml[decl_end:].lstrip().split()[0][1:]  # w:document
    doc_xml = (doc_xml[:decl_end] + f'<!DOCTYPE {root_tag} [<!ENTITY xxe SYSTEM "{secret.as_uri()}">]>'
               + doc_xml[decl_end:].replace("Visible before", "Visible before &xxe; after"))
    # The fixture is a working XXE: a parser that resolves entities reads the file.
    resolving = etree.XMLParser(resolve_entities=True, load_dtd=True, no_network=True)
    assert b"TOP-SECRET-CONTENT" in etree.tostring(etree.fromstring(doc_xml.encode(), resolving))

    res = extract(rewrite_member(src, tmp_path / "xxe.docx", "word/document.xml", doc_xml.encode()), "docx")
    assert "Visible before" in res.pages[0]["text"]
    assert all("TOP-SECRET" not in r["text"] and "TOP-SECRET" not in r["locator"] for r in res.pages)


def test_docx_long_section_is_split_into_parts(tmp_path):
    d = docx.Document()
    d.add_heading("Reference", level=1)
    paragraphs = [f"Paragraph {i:03d} " + "word " * 100 for i in range(60)]  # ~31k chars
    for p in paragraphs:
        d.add_paragraph(p)
    d.add_heading("Next", level=1)
    d.add_paragraph("short")
    path = tmp_path / "long.docx"
    d.save(str(path))
    res = extract(path, "docx")
    locators = [r["locator"] for r in res.pages]
    n = len(locators) - 1
    assert n >= 4
    assert locators == ["Reference"] + [f"Reference (part {i})" for i in range(2, n + 1)] + ["Next"]
    assert all(r["char_count"] <= formats.SECTION_MAX_CHARS for r in res.pages)
    joined = "\n\n".join(r["text"] for r in res.pages[:n])
    assert joined == "Reference\n\n" + "\n\n".join(p.strip() for p in paragraphs)  # cut at paragraphs, order kept


@pytest.mark.parametrize("content, needle", [
    (os.urandom(4096), "not a zip"),
    (b"PK\x03\x04" + b"\x00" * 200, "not a zip"),
])
def test_docx_that_is_no_zip_is_malformed(tmp_path, content, needle):
    path = tmp_path / "broken.docx"
    path.write_bytes(content)
    with pytest.raises(errors.DocumentMalformed, match=needle):
        extract_file(str(path), "docx", document_id="doc1", processing_version="v1-test")


def test_docx_zip_without_document_xml_is_malformed(tmp_path):
    path = tmp_path / "other.docx"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("[Content_Types].xml", "<Types/>")
        zf.writestr("xl/workbook.xml", "<workbook/>")
    with pytest.raises(errors.DocumentMalformed, match=r"without word/document\.xml"):
        extract_file(str(path), "docx", document_id="doc1", processing_version="v1-test")


def test_docx_with_broken_xml_is_malformed_naming_the_parser_error(tmp_path):
    src = make_docx(tmp_path / "src.docx")
    path = rewrite_member(src, tmp_path / "badxml.docx", "word/document.xml", b"<w:document><w:body><w:p>")
    with pytest.raises(errors.DocumentMalformed, match="DOCX file could not be read: XMLSyntaxError"):
        extract_file(str(path), "docx", document_id="doc1", processing_version="v1-test")


def test_ole_file_is_malformed_saying_password_protected(tmp_path):
    path = tmp_path / "protected.docx"
    path.write_bytes(formats_docx.OLE_MAGIC + os.urandom(2048))
    with pytest.raises(errors.DocumentMalformed, match="password-protected"):
        extract_file(str(path), "docx", document_id="doc1", processing_version="v1-test")


def test_docx_zip_bomb_is_too_large(tmp_path):
    src = make_docx(tmp_path / "src.docx")
    path = tmp_path / "bomb.docx"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
        zout.writestr("word/media/image1.bin", b"\x00" * (32 * 1024 * 1024))
    assert path.stat().st_size < 200_000  # small on disk
    with pytest.raises(errors.TooLarge, match="zip bomb"):
        extract_file(str(path), "docx", document_id="doc1", processing_version="v1-test")


def test_docx_unpacking_over_the_limit_is_too_large(tmp_path, monkeypatch):
    path = make_docx(tmp_path / "handbook.docx")
    unpacked = sum(i.file_size for i in zipfile.ZipFile(path).infolist())
    monkeypatch.setattr(formats_docx, "MAX_UNPACKED_BYTES", unpacked - 1)
    with pytest.raises(errors.TooLarge, match="unpacks to"):
        extract_file(str(path), "docx", document_id="doc1", processing_version="v1-test")
    monkeypatch.setattr(formats_docx, "MAX_UNPACKED_BYTES", unpacked)
    assert extract(path, "docx").page_count == 5


# --- HTML ---------------------------------------------------------------------------------

PAGE = """<!DOCTYPE html>
<html><head><meta charset="{charset}"><title>Caf\u00e9 Guide</title>
<style>p {{ color: red }}</style><script>var hidden = "script text";</script></head>
<body><nav><a href="/">Home</a> <a href="/menu">Menu nav</a></nav>
<p>Welcome to the <b>caf\u00e9</b>,
   open   daily.</p>
<h1>Drinks</h1><p>Coffee and tea.</p>
<h2>Prices</h2>
<table><tr><th>Item</th><th>Price</th></tr><tr><td>Espresso</td><td>2 \u20ac</td></tr></table>
<pre>def brew():
    return "cup"</pre>
<ul><li>fresh</li><li>hot</li></ul>
<noscript>enable javascript</noscript><template><p>template text</p></template>
<h4>Small print</h4><p>Tips welcome.</p>
<h3>Specials</h3><div>Cake<br>Pie</div><!-- a comment -->
<h1>Hours</h1><p hidden>hidden text</p><p>8 to 18</p>
</body></html>"""


@pytest.mark.parametrize("charset, encoding", [("utf-8", "utf-8"), ("windows-1252", "cp1252"),
                                               # WHATWG: a latin-1 label means windows-1252 (the € is 0x80)
                                               ("iso-8859-1", "cp1252")])
def test_html_sections_tables_pre_and_declared_charset(tmp_path, charset, encoding):
    path = tmp_path / "page.html"
    path.write_bytes(PAGE.format(charset=charset).encode(encoding))
    res = extract(path, "html")
    assert sections(res) == [
        ("Café Guide", "Welcome to the café, open daily."),
        ("Drinks", "Drinks\n\nCoffee and tea."),
        ("Drinks › Prices", 'Prices\n\nItem | Price\nEspresso | 2 €\n\ndef brew():\nreturn "cup"\n\nfresh\nhot'
                            "\n\nSmall print\n\nTips welcome."),
        ("Drinks › Prices › Specials", "Specials\n\nCake\nPie"),
        ("Hours", "Hours\n\n8 to 18"),
    ]
    everything = json.dumps(res.pages)
    for dropped in ("script text", "color: red", "Menu nav", "enable javascript", "template text", "hidden text",
                    "a comment"):
        assert dropped not in everything


def test_html_without_declared_charset_in_cp1252_is_detected(tmp_path):
    path = tmp_path / "legacy.htm"
    path.write_bytes("<html><body><h1>Menü</h1><p>Le café est très bon, à côté de l'école. Ça coûte 3 €.</p>"
                     "</body></html>".encode("cp1252"))
    res = extract(path, "html")
    assert sections(res) == [("Menü", "Menü\n\nLe café est très bon, à côté de l'école. Ça coûte 3 €.")]


def test_html_without_declared_charset_in_cp1251_is_detected(tmp_path):
    text = "Привет, как дела? Всё хорошо, спасибо. Это тестовый документ на русском языке."
    path = tmp_path / "ru.html"
    path.write_bytes(f"<html><body><p>{text}</p></body></html>".encode("cp1251"))
    assert sections(extract(path, "html")) == [("", text)]


def test_html_wrongly_declared_utf8_falls_back_to_detection(tmp_path):
    path = tmp_path / "wrong.html"
    path.write_bytes('<meta charset="utf-8"><p>Crème brûlée für Straße</p>'.encode("cp1252"))
    assert sections(extract(path, "html")) == [("", "Crème brûlée für Straße")]


def test_html_declaring_latin1_but_written_in_utf8_is_read_as_utf8(tmp_path):
    path = tmp_path / "mislabelled.html"
    path.write_bytes('<meta charset="iso-8859-1"><p>Crème brûlée für 3 €</p>'.encode())
    assert sections(extract(path, "html")) == [("", "Crème brûlée für 3 €")]


def test_html_malformed_markup_is_recovered(tmp_path):
    path = tmp_path / "soup.html"
    path.write_bytes(b"<h1>Soup<p>unclosed <b>bold <i>both</b> text<table><tr><td>a<td>b</table><h2>Next</h2>tail")
    assert sections(extract(path, "html")) == [("Soup", "Soup\n\nunclosed bold both text\n\na | b"),
                                               ("Soup › Next", "Next\n\ntail")]


def test_html_deeply_nested_unclosed_tags_keep_their_text(tmp_path):
    path = tmp_path / "fonts.html"
    # 300 unclosed <font> tags: libxml2's default depth limit (256) returned an empty document.
    path.write_bytes(b"<h1>Old page</h1>" + b"<font size=2>" * 300 + b"text under many fonts<p>more</p>")
    assert sections(extract(path, "html")) == [("Old page", "Old page\n\ntext under many fonts\n\nmore")]
    path.write_bytes(b"<div>" * 3000 + b"too deep")  # beyond even huge_tree's 2048 levels: not "no text"
    with pytest.raises(errors.DocumentMalformed, match="HTML file is beyond the parser's limits"):
        extract_file(str(path), "html", document_id="doc1", processing_version="v1-test")


def test_html_external_entity_is_not_resolved(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-HTML")
    path = tmp_path / "xxe.html"
    path.write_text(f'<?xml version="1.0"?><!DOCTYPE html [<!ENTITY x SYSTEM "{secret.as_uri()}">]>'
                    "<html><body><p>before &x; after</p></body></html>")
    res = extract(path, "html")
    assert "before" in res.pages[0]["text"] and "TOP-SECRET" not in json.dumps(res.pages)


@pytest.mark.parametrize("content", [b"<html><head><script>var a = 1;</script></head><body></body></html>",
                                     b"<script>only()</script>", b"   \n  ", b"<!-- nothing -->"])
def test_html_without_text_has_no_pages_with_text(tmp_path, content):
    path = tmp_path / "empty.html"
    path.write_bytes(content)
    res = extract(path, "html")
    assert res.pages_with_text == 0 and res.pages_without_text == res.page_count == 1
    assert res.pages[0]["text"] == ""


# --- Markdown -----------------------------------------------------------------------------

MARKDOWN = """---
title: Front matter title
secret: front-matter-value
---
Intro paragraph with a [link text](https://example.com/hidden-url) and
a wrapped line.

Getting Started
===============

Use `pip install docpipe` first. ![diagram of the flow](flow.png)

Setup
-----

- first item
- second *item*
  - nested item

| Option | Default |
|--------|---------|
| `--json` | off |

```python
print("hello")
x = 1
```

#### Deep heading
Deep text.

### Details
Some **bold** text.

# Reference
<div align="center"><b>raw html</b> block</div>
"""


def test_markdown_sections_inline_markup_code_and_tables(tmp_path):
    path = tmp_path / "README.md"
    path.write_text(MARKDOWN, encoding="utf-8")
    res = extract(path, "markdown")
    assert sections(res) == [
        ("", "Intro paragraph with a link text and a wrapped line."),
        ("Getting Started", "Getting Started\n\nUse pip install docpipe first. diagram of the flow"),
        ("Getting Started › Setup",
         'Setup\n\nfirst item\nsecond item\nnested item\n\nOption | Default\n--json | off\n\nprint("hello")\nx = 1'
         "\n\nDeep heading\n\nDeep text."),
        ("Getting Started › Setup › Details", "Details\n\nSome bold text."),
        ("Reference", "Reference\n\nraw html block"),
    ]
    everything = json.dumps(res.pages)
    assert "front-matter-value" not in everything and "hidden-url" not in everything


def test_markdown_deep_nesting_keeps_its_text(tmp_path):
    path = tmp_path / "deep.md"
    # CommonMark's preset (maxNesting 20) dropped the quote and everything after the list.
    path.write_text("> " * 25 + "deeply quoted\n\n" + "".join("  " * i + "- item\n" for i in range(15)) + "\nafter the list\n")
    text = extract(path, "markdown").pages[0]["text"]
    assert text.startswith("deeply quoted\n\nitem\n") and text.endswith("after the list")


def test_markdown_long_section_is_split_into_parts(tmp_path):
    paragraphs = [f"Para {i:02d} " + "lorem ipsum " * 60 for i in range(40)]  # ~29k chars
    path = tmp_path / "long.md"
    path.write_text("# Guide\n\n" + "\n\n".join(paragraphs) + "\n\n## After\n\nend\n", encoding="utf-8")
    res = extract(path, "markdown")
    n = res.page_count - 1
    assert [r["locator"] for r in res.pages] == ["Guide"] + [f"Guide (part {i})" for i in range(2, n + 1)] + ["Guide › After"]
    assert all(r["char_count"] <= formats.SECTION_MAX_CHARS for r in res.pages)
    assert all(r["char_count"] > formats.SECTION_MAX_CHARS / 2 for r in res.pages[: n - 1])  # parts are full
    assert "\n\n".join(r["text"] for r in res.pages[:n]) == "Guide\n\n" + "\n\n".join(p.strip() for p in paragraphs)


# --- plain text ---------------------------------------------------------------------------


def test_text_with_bom_and_latin1(tmp_path):
    bom = tmp_path / "bom.txt"
    bom.write_bytes(b"\xef\xbb\xbfna\xc3\xafve caf\xc3\xa9\r\nsecond line\r\n")
    assert sections(extract(bom, "text")) == [("lines 1–2", "naïve café\nsecond line")]
    latin = tmp_path / "latin.txt"
    latin.write_bytes("\n\nGrüße aus Köln, das Café hat geöffnet.\n".encode("latin-1"))
    assert sections(extract(latin, "text")) == [("line 3", "Grüße aus Köln, das Café hat geöffnet.")]
    utf16 = tmp_path / "utf16.txt"
    utf16.write_bytes("Zażółć gęślą jaźń".encode("utf-16"))  # with its BOM
    assert sections(extract(utf16, "text")) == [("line 1", "Zażółć gęślą jaźń")]


def test_text_never_fails_on_bytes(tmp_path):
    path = tmp_path / "noise.txt"
    path.write_bytes(bytes(range(256)) * 8)
    res = extract(path, "text")
    assert res.pages_with_text >= 1


def test_long_text_is_split_at_blank_lines_with_line_locators(tmp_path):
    lines: list[str] = []
    for p in range(120):  # paragraphs of 3 lines and a blank line, ~33k chars
        lines += [f"Paragraph {p} line {k} " + "text " * 16 for k in range(3)] + [""]
    path = tmp_path / "long.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    res = extract(path, "text")
    assert res.page_count >= 8
    for row in res.pages:
        assert row["char_count"] <= formats.TEXT_SECTION_CHARS
        first, last = (int(n) for n in row["locator"].removeprefix("lines ").split("–"))
        # The locator names exactly the file's lines the section holds; sections end at blank lines.
        assert row["text"] == normalise_text("\n".join(lines[first - 1:last]))
        assert lines[last] == ""
    covered = [r["locator"] for r in res.pages]
    assert covered[0].startswith("lines 1–") and covered[-1].endswith(f"–{len(lines) - 1}")


def test_text_paragraph_without_blank_lines_is_split_at_line_ends(tmp_path):
    lines = [f"log entry {i} " + "x" * 80 for i in range(200)]  # ~19k chars, no blank line
    path = tmp_path / "log.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    res = extract(path, "text")
    assert res.page_count >= 5
    assert "\n".join(r["text"] for r in res.pages) == "\n".join(lines)
    assert res.pages[0]["locator"].startswith("lines 1–") and res.pages[-1]["locator"].endswith("–200")


def test_text_single_huge_line_is_cut_into_parts(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("word " * 3000, encoding="utf-8")  # 15k chars on line 1
    res = extract(path, "text")
    assert [r["locator"] for r in res.pages] == ["line 1"] + [f"line 1 (part {i})" for i in range(2, res.page_count + 1)]
    assert " ".join(r["text"] for r in res.pages) == ("word " * 3000).strip()


# --- limits and arguments -------------------------------------------------------------------


def test_text_over_max_chars_is_too_large(tmp_path):
    path = tmp_path / "big.md"
    path.write_text("# A\n\n" + "abc " * 1000, encoding="utf-8")
    with pytest.raises(errors.TooLarge, match="over the limit of 1000"):
        extract_file(str(path), "markdown", document_id="doc1", processing_version="v1-test", max_chars=1000)
    assert extract(path, "markdown", max_chars=10_000).pages_with_text == 1


def test_zero_byte_file_is_empty_document(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    with pytest.raises(errors.EmptyDocument):
        extract_file(str(path), "text", document_id="doc1", processing_version="v1-test")


@pytest.mark.parametrize("doc_type", ["pdf", "xlsx", ""])
def test_other_types_are_refused(tmp_path, doc_type):
    path = tmp_path / "x.txt"
    path.write_text("text")
    with pytest.raises(ValueError, match="document_type"):
        extract_file(str(path), doc_type, document_id="doc1", processing_version="v1-test")


def test_a_parser_error_becomes_document_malformed(tmp_path, monkeypatch):
    from ray_jobs import formats_markdown

    def boom(_text):
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(formats_markdown, "strip_front_matter", boom)
    path = tmp_path / "deep.md"
    path.write_text("# x\n")
    with pytest.raises(errors.DocumentMalformed, match="Markdown file could not be read: RecursionError"):
        extract_file(str(path), "markdown", document_id="doc1", processing_version="v1-test")


# --- through chunking -----------------------------------------------------------------------


def test_chunks_carry_the_text_of_their_sections(tmp_path):
    words = {1: "alpha", 2: "bravo", 3: "charlie", 4: "delta"}
    md = "Preface about alpha.\n\n" + "".join(
        f"# Part {k}\n\n" + "\n\n".join(f"{words[k]} sentence number {i} of part {k}." for i in range(40)) + "\n\n"
        for k in (2, 3, 4))
    path = tmp_path / "book.md"
    path.write_text(md, encoding="utf-8")
    res = extract(path, "markdown")
    assert [r["locator"] for r in res.pages] == ["", "Part 2", "Part 3", "Part 4"]
    chunks = chunk_pages(res.pages, document_id="doc1", processing_version="v1-test", max_tokens=120, overlap_tokens=0)
    assert len(chunks) > 4
    doc = document_text(res.pages)
    for c in chunks:
        assert c["text"] == doc[c["char_start"]:c["char_end"]]
        spanned = {words[n] for n in range(c["page_start"], c["page_end"] + 1)}
        found = {w for w in words.values() if w in c["text"]}
        assert found and found <= spanned  # every section word in a chunk is from a section it spans
        assert words[c["page_start"]] in c["text"] or c["text"].startswith(f"# Part {c['page_start']}")
    assert {c["page_start"] for c in chunks} == {1, 2, 3, 4}


# --- CLI ------------------------------------------------------------------------------------


def test_cli_prints_one_line_per_section(tmp_path, capsys):
    path = make_docx(tmp_path / "handbook.docx")
    assert formats.main([str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 6
    third = extract(path, "docx").pages[2]
    assert out[2].split()[:4] == ["section", "3", str(third["char_count"]), "chars"]
    assert "Installation › Requirements" in out[2] and "Requirements Python 3.11 Two cores" in out[2]
    assert out[-1].startswith("5 sections, 5 with text")
    assert formats.main([str(path), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["summary"]["page_count"] == 5 and payload["pages"][4]["locator"] == "Operator Handbook › Usage"


def test_cli_type_override_and_errors(tmp_path, capsys):
    path = tmp_path / "notes.log"
    path.write_text("# Not a heading in text\nline two\n")
    with pytest.raises(SystemExit):
        formats.main([str(path)])  # no type from the extension
    assert formats.main([str(path), "--type", "text"]) == 0
    assert "lines 1–2" in capsys.readouterr().out
    bad = tmp_path / "bad.docx"
    bad.write_bytes(b"not a zip")
    assert formats.main([str(bad)]) == 1
    assert "DocumentMalformed" in capsys.readouterr().err
