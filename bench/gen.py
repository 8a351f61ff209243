"""Clean, multi-page text PDFs with realistic prose, for the benchmarks.

    python -m bench.gen OUT_DIR --docs 10 --pages 5

Plain PDF syntax (Helvetica, one content stream per page), written with the small
writer of samples/make_samples.py (imported, not copied). The prose is generated from
sentence templates over a business/engineering vocabulary with money, percentages,
dates and organisation names, so enrichment, chunking and embedding see text that
looks like a report rather than lorem ipsum. Deterministic: the same (seed, pages)
gives the same bytes; every document gets its own seed, so no two are duplicates
(which RegisterDocument would skip) and no chunk text repeats across documents.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import textwrap
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]

# 22 lines of <= 88 characters at 12 pt: ~270 words (~340 tokens) per page, a report page
# with headings and white space; keeps a 1000-page document at ~1 chunk per page.
LINE_CHARS = 88
LINES_PER_PAGE = 22

_ORGS = ["Northwind Analytics Inc.", "Contoso Data Ltd", "Fabrikam Logistics", "Tailspin Energy",
         "Adventure Works Group", "Litware Systems", "Wide World Importers", "Proseware Labs",
         "Woodgrove Bank", "Lucerne Publishing", "Coho Vineyard AG", "Alpine Ski House"]
_SUBJECTS = ["the data platform", "the logistics network", "our field service teams",
             "the procurement function", "the customer success group", "the retail segment",
             "the European operations", "the cloud infrastructure", "the pricing committee",
             "the internal audit team", "the product roadmap", "the supply chain programme",
             "the onboarding process", "the risk management framework", "the analytics team"]
_VERBS = ["reduced", "improved", "reorganised", "expanded", "consolidated", "automated",
          "renegotiated", "reviewed", "simplified", "accelerated", "stabilised", "migrated"]
_OBJECTS = ["operating costs", "delivery times", "contract terms", "the billing workflow",
            "warehouse capacity", "incident response", "vendor onboarding", "quarterly forecasts",
            "energy consumption", "the data retention policy", "customer churn", "capital expenditure",
            "inventory turnover", "the release cadence", "regulatory reporting"]
_CAUSES = ["higher demand in the second half", "lower cloud infrastructure costs",
           "the move to self-service onboarding", "currency movements", "a new pricing model",
           "the integration of acquired teams", "stricter data-protection rules",
           "longer sales cycles with public-sector customers", "improved forecasting accuracy",
           "seasonal effects in the retail business", "the consolidation of two warehouses"]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December"]
_HEADINGS = ["Overview", "Financial performance", "Operations", "Risk factors", "Outlook",
             "Segment results", "Governance", "Technology", "People and culture", "Sustainability",
             "Customers and markets", "Capital allocation", "Regulatory matters", "Appendix"]


def _money(r: random.Random) -> str:
    return f"${r.uniform(0.4, 950):.1f} million"


def _pct(r: random.Random) -> str:
    return f"{r.uniform(0.5, 38):.1f}%"


def _date(r: random.Random) -> str:
    return f"{r.randint(1, 28)} {r.choice(_MONTHS)} {r.randint(2019, 2026)}"


def _sentence(r: random.Random) -> str:
    org, subj, verb, obj, cause = (r.choice(_ORGS), r.choice(_SUBJECTS), r.choice(_VERBS),
                                   r.choice(_OBJECTS), r.choice(_CAUSES))
    forms = [
        f"In fiscal year {r.randint(2019, 2026)}, {subj} {verb} {obj} by {_pct(r)}, mainly because of {cause}.",
        f"{org} {verb} {obj} on {_date(r)}, which saved about {_money(r)} over the following year.",
        f"Revenue from {subj} reached {_money(r)}, up {_pct(r)} year over year.",
        f"The board noted that {obj} remain exposed to {cause}, and asked {subj} to report again in {r.choice(_MONTHS)}.",
        f"After the review of {obj}, {org} and {r.choice(_ORGS)} agreed on a joint plan with a budget of {_money(r)}.",
        f"We expect {obj} to change by {_pct(r)} in the coming quarters, although {cause} adds uncertainty.",
        f"Since {_date(r)}, {subj} has {verb} {obj}; the effect on margins was {_pct(r)}.",
        f"Management attributes the change in {obj} to {cause} rather than to one-off items.",
        f"Capital expenditure for {subj} was {_money(r)}, or {_pct(r)} of segment revenue.",
        f"{subj[0].upper() + subj[1:]} {verb} {obj} and now publishes the results every "
        f"{r.choice(['week', 'month', 'quarter'])}.",
    ]
    return r.choice(forms)


def _page_lines(r: random.Random, number: int, title: str) -> list[str]:
    lines = [f"{title} - page {number}", ""]
    heading_at = r.randint(0, 2)
    while len(lines) < LINES_PER_PAGE:
        if heading_at == 0:
            lines += [f"{r.randint(1, 12)}.{r.randint(1, 9)} {r.choice(_HEADINGS)}", ""]
        heading_at -= 1
        paragraph = " ".join(_sentence(r) for _ in range(r.randint(3, 6)))
        lines += [*textwrap.wrap(paragraph, LINE_CHARS), ""]
    return lines[:LINES_PER_PAGE]


def _pdf_writer():
    """samples/make_samples.py's `pdf_bytes` (no package there: load it by path)."""
    spec = importlib.util.spec_from_file_location("docpipe_make_samples", _REPO / "samples" / "make_samples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.pdf_bytes


def document_bytes(seed: int, pages: int) -> bytes:
    r = random.Random(seed)
    title = f"{r.choice(_ORGS)} report {seed}"
    return _pdf_writer()([_page_lines(r, n, title) for n in range(1, pages + 1)])


def generate(out_dir: Path, docs: int, pages: int, seed: int = 1, prefix: str = "gen") -> list[Path]:
    """Write `docs` PDFs of `pages` pages into out_dir; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(docs):
        path = out_dir / f"{prefix}-{pages}p-{seed + i:05d}.pdf"
        if not path.exists():
            path.write_bytes(document_bytes(seed * 100_003 + i * 7919 + pages, pages))
        paths.append(path)
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gen", description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--docs", type=int, default=10)
    ap.add_argument("--pages", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    for p in generate(args.out_dir, args.docs, args.pages, args.seed):
        print(p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
