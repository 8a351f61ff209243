"""Write the sample PDFs of `docpipe demo` (plain PDF syntax, no dependencies).

    python samples/make_samples.py      # rewrites samples/*.pdf

The texts are ours (Apache-2.0 like the project); they exercise money, percentages,
dates and organisations for the local enrichment, and several pages for page spans.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent

DOCS = {
    "annual-report-2025.pdf": [
        ["Northwind Analytics Inc. Annual Report 2025",
         "",
         "Revenue grew 18.4% year over year to $412.7 million in fiscal year 2025.",
         "Operating margin improved to 21% from 17% in FY2024, driven by the data",
         "platform business and lower cloud infrastructure costs.",
         "The board approved a dividend of $0.42 per share, payable on March 15, 2026."],
        ["Segment results",
         "",
         "Platform subscriptions contributed $268.1 million, up 24 percent.",
         "Professional services declined 3% to $96.4 million as customers moved",
         "to self-service onboarding. Q4 2025 was the strongest quarter on record.",
         "Northwind Analytics Inc. acquired Contoso Data Ltd on 1 July 2025."],
        ["Outlook",
         "",
         "For 2026 we expect revenue between $470 million and $485 million,",
         "growth of 14% to 17%, with capital expenditure of about 6% of revenue.",
         "Risks include currency movements, data-protection rules and competition."],
    ],
    "pipeline-runbook.pdf": [
        ["docpipe operations runbook",
         "",
         "When a document fails, its control item carries the error code and the",
         "errors/ prefix holds a report and a copy of the input. The original upload",
         "under input/ is never modified. Common codes: PdfEncrypted (password",
         "needed), PdfMalformed (unreadable file), PdfNoText (scanned pages without",
         "a text layer), TooLarge (over the size limit) and StageTimeout."],
        ["Retries and alerts",
         "",
         "Transient errors such as RayHeadUnavailable or EmbeddingRateLimited are",
         "retried by the state machine with exponential backoff and full jitter.",
         "Every failure publishes an alert to the SNS topic of the stack."],
    ],
}


def _escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def pdf_bytes(pages: list[list[str]]) -> bytes:
    objects: list[bytes] = []
    n_pages = len(pages)
    font_id = 3 + 2 * n_pages
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(n_pages))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {n_pages} >>".encode())
    for i, lines in enumerate(pages):
        ops = ["BT", "/F1 12 Tf", "72 740 Td", "16 TL"]
        for line in lines:
            ops.append(f"({_escape(line)}) Tj T*")
        ops.append("ET")
        stream = "\n".join(ops).encode("latin-1")
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
                       f"/Resources << /Font << /F1 {font_id} 0 R >> >> /Contents {4 + 2 * i} 0 R >>".encode())
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for num, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{num} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def main() -> None:
    for name, pages in DOCS.items():
        (HERE / name).write_bytes(pdf_bytes(pages))
    # A broken upload, to show what a failure looks like: truncated mid-file.
    (HERE / "broken-upload.pdf").write_bytes(pdf_bytes(DOCS["pipeline-runbook.pdf"])[:300])


if __name__ == "__main__":
    main()
