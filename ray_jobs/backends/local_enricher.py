"""Embedded enrichment backend: key phrases and rule-based entities, offline.

The production backend is Amazon Comprehend; this one needs no network and no model,
only regular expressions, and is deterministic (same text -> same output).

- key_phrases: RAKE (Rose et al., 2010). Candidate phrases are the runs of words between
  stopwords and punctuation; a word scores degree/frequency (degree = the lengths of the
  candidate phrases it occurs in, summed); a phrase scores the sum of its words' scores.
  Candidates over 4 words are dropped (they are usually table rows or lists, not
  phrases). Top 8 by score, ties by first appearance; the surface form is the first one
  seen.
- entities: MONEY, PERCENT, DATE and ORGANIZATION by rules (see the patterns below).
  Where matches overlap the earliest, then longest, wins; de-duplicated by (type, text)
  in order of first appearance.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

MAX_KEY_PHRASES = 8
MAX_PHRASE_WORDS = 4

# A general English stopword list (function words, auxiliaries, common adverbs), after
# the SMART and NLTK lists, trimmed to words that never carry a key phrase.
STOPWORDS = frozenset("""
a about above across after afterwards again against all almost alone along already also
although always am among amongst an and another any anybody anyhow anyone anything anyway
anywhere are around as at be became because become becomes becoming been before
beforehand behind being below beside besides between beyond both but by can cannot could
did do does doing done down due during each eg e.g either else elsewhere enough etc even
ever every everybody everyone everything everywhere except few for former formerly from
further furthermore had has have having he hence her here hereafter hereby herein hers
herself him himself his how however i ie i.e if in indeed into is it its itself just last
latter latterly least less let like made make many may me meanwhile might mine more
moreover most mostly much must my myself namely neither never nevertheless next no nobody
none noone nor not nothing now nowhere of off often on once one only onto or other others
otherwise our ours ourselves out over own per perhaps please put rather re same see seem
seemed seeming seems several she should since so some somehow someone something sometime
sometimes somewhere still such than that the their theirs them themselves then thence
there thereafter thereby therefore therein thereupon these they this those though through
throughout thru thus to together too toward towards under until up upon us use used using
very via was we well were what whatever when whence whenever where whereafter whereas
whereby wherein whereupon wherever whether which while whither who whoever whole whom
whose why will with within without would yet you your yours yourself yourselves
s t d ll m o re ve y ain aren couldn didn doesn hadn hasn haven isn ma mightn mustn
needn shan shouldn wasn weren won wouldn also get gets got go goes going gone says said
shall upon within without among two three four five six seven eight nine ten first second
new old per via
""".split())  # noqa: SIM905 (a word list reads best as running text)

# Words that only qualify numbers or dates: never a key phrase on their own.
NUMERIC_WORDS = frozenset("""
january february march april may june july august september october november december
jan feb mar apr jun jul aug sep sept oct nov dec monday tuesday wednesday thursday friday
saturday sunday thousand thousands million millions billion billions trillion bn mn
percent pct usd eur gbp jpy chf cad aud cny inr
""".split())  # noqa: SIM905

_WORD = re.compile(r"[^\W\d_](?:[\w'’-]*[^\W_])?|\d+(?:[.,]\d+)*")
# Phrase delimiters: sentence and clause punctuation, brackets, quotes, line breaks.
_DELIMITERS = re.compile(r"[.,;:!?()\[\]{}\"“”‘’/\\|<>=+*#@&%$€£¥§•·–—…\n\t]+|\s'|'\s")

_MONTHS = (r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
           r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)")
_NUMBER = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"
_SCALE = r"(?:thousand|million|billion|trillion|mn|bn|[mbkMBK])\b"
_CURRENCY_CODE = r"(?:USD|EUR|GBP|JPY|CHF|CAD|AUD|CNY|INR|SEK|NOK|DKK)"
_CURRENCY_WORD = r"(?:dollars?|euros?|pounds?(?: sterling)?|yen|francs?)"

_MONEY = re.compile(
    rf"(?:US|A|C|HK|NZ|S)?[$€£¥]\s?(?:{_NUMBER})(?:\s?{_SCALE})?"
    rf"|\b{_CURRENCY_CODE}\s?(?:{_NUMBER})(?:\s?{_SCALE})?"
    rf"|\b(?:{_NUMBER})(?:\s?{_SCALE})?\s?(?:{_CURRENCY_CODE}|{_CURRENCY_WORD})\b"
)
_PERCENT = re.compile(rf"[-+]?(?:{_NUMBER})\s?(?:%|percent\b|per cent\b|percentage points?\b|pct\b)")
_DATE = re.compile(
    r"\b\d{4}-\d{2}-\d{2}\b"  # ISO 8601: 2024-03-01
    rf"|\b{_MONTHS}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}\b"  # March 1, 2024
    rf"|\b\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTHS}\.?,?\s+\d{{4}}\b"  # 1 March 2024
    rf"|\b{_MONTHS}\.?\s+\d{{4}}\b"  # March 2024
    r"|\b\d{1,2}/\d{1,2}/\d{4}\b"  # 03/01/2024 (order left as written)
    r"|\b[Qq][1-4]\s?(?:FY\s?)?'?\d{2,4}\b"  # Q3 2023, Q3 FY24
    r"|\b[1-4]Q\s?'?\d{2,4}\b"  # 3Q23
    r"|\b[Hh][12]\s(?:FY\s?)?\d{4}\b"  # H1 2024
    r"|\bFY\s?'?\d{2,4}\b"  # FY2022, FY 22
)

# Legal forms end a name; the other suffixes may also sit inside one ("Deutsche Bank AG").
_LEGAL_FORM = r"(?:Inc\.?|Corp\.?|Corporation|Ltd\.?|LLC|L\.L\.C\.|plc|PLC|GmbH|AG|S\.A\.|Company|Co\.)"
_INSTITUTION = r"(?:Bank|University|Agency|Department|Commission|Institute)"
_END = r"(?![\w&])"
# A capitalised word or an acronym with dots ("J.P."); never a legal form.
_CAP = rf"(?!{_LEGAL_FORM}{_END})(?:[A-Z](?:\.[A-Z])+\.?|[A-Z][\w'’-]*)"
# Lower-case joiners inside names ("Bank of England", "Procter & Gamble"). Not "and": it
# mostly joins two names ("the University of Oxford and Stanford University").
_JOIN = r"(?:of|for|the|de|du|der|&)"
_ORGANIZATIONS = (
    # "Acme Widgets Inc.", "Deutsche Bank AG", "Federal Trade Commission", "Chase & Co."
    re.compile(rf"\b{_CAP}(?:,?[ \t]+(?:{_JOIN}[ \t]+)?{_CAP}){{0,5}},?[ \t]+(?:&[ \t]+)?"
               rf"(?:{_LEGAL_FORM}|{_INSTITUTION}){_END}"),
    # "University of Oxford", "Department of Energy", "National Institute of Standards"
    re.compile(rf"\b(?:[A-Z][\w'’-]+[ \t]+){{0,3}}(?:{_INSTITUTION}|Ministry)[ \t]+of[ \t]+(?:the[ \t]+)?"
               rf"{_CAP}(?:[ \t]+{_CAP}){{0,3}}"),
)
# Capitalised words that start sentences rather than names ("The Acme Corp." -> "Acme Corp.").
_LEADING_NOISE = re.compile(r"^(?:(?:The|A|An|In|On|At|By|For|From|With|And|But|Or|Our|Their|Its|His|Her|"
                            r"This|That|These|Those|When|While|After|Before|Since|As|If|Yesterday|Today|"
                            r"Both|Each|Every)[ \t]+)+")
_ENTITY_RULES = (("MONEY", _MONEY), ("PERCENT", _PERCENT), ("DATE", _DATE),
                 *(("ORGANIZATION", pattern) for pattern in _ORGANIZATIONS))


def key_phrases(text: str, top: int = MAX_KEY_PHRASES) -> list[str]:
    """RAKE key phrases of `text` (see the module docstring)."""
    candidates: list[list[str]] = []
    for fragment in _DELIMITERS.split(text or ""):
        run: list[str] = []
        for m in _WORD.finditer(fragment):
            word = m.group()
            lower = word.lower()
            if (lower in STOPWORDS or lower in NUMERIC_WORDS or len(word) < 2
                    or any(ch.isdigit() for ch in word)):
                if run:
                    candidates.append(run)
                run = []
            else:
                run.append(word)
        if run:
            candidates.append(run)
    candidates = [c for c in candidates if len(c) <= MAX_PHRASE_WORDS]
    if not candidates:
        return []

    frequency: dict[str, int] = defaultdict(int)
    degree: dict[str, int] = defaultdict(int)
    for phrase in candidates:
        for word in phrase:
            w = word.lower()
            frequency[w] += 1
            degree[w] += len(phrase)
    score_of = {w: degree[w] / frequency[w] for w in frequency}

    scored: dict[str, tuple[float, int, str]] = {}
    for order, phrase in enumerate(candidates):
        key = " ".join(w.lower() for w in phrase)
        if key not in scored:
            scored[key] = (sum(score_of[w.lower()] for w in phrase), order, " ".join(phrase))
    ranked = sorted(scored.values(), key=lambda item: (-item[0], item[1]))
    return [surface for _, _, surface in ranked[:top]]


def entities(text: str) -> list[dict[str, str]]:
    """MONEY, PERCENT, DATE and ORGANIZATION entities of `text` (see the module docstring)."""
    found: list[tuple[int, int, str, str]] = []
    for kind, pattern in _ENTITY_RULES:
        for m in pattern.finditer(text or ""):
            start, value = m.start(), m.group().strip()
            if kind == "ORGANIZATION":
                trimmed = _LEADING_NOISE.sub("", value)
                start += len(value) - len(trimmed)
                value = trimmed
                if " " not in value:  # only the suffix was left, e.g. "The Company"
                    continue
            found.append((start, start + len(value), kind, value))
    found.sort(key=lambda f: (f[0], -(f[1] - f[0])))
    out, seen, taken_until = [], set(), -1
    for start, end, kind, value in found:
        if start < taken_until:  # overlaps an earlier, longer match
            continue
        taken_until = end
        if (kind, value) not in seen:
            seen.add((kind, value))
            out.append({"type": kind, "text": value})
    return out


class LocalEnricher:
    """The `Enricher` of ray_jobs/backends/base.py, offline and deterministic."""

    name = "local"

    def __init__(self, max_key_phrases: int = MAX_KEY_PHRASES):
        self.max_key_phrases = max_key_phrases

    def enrich(self, texts: list[str]) -> list[dict[str, Any]]:
        return [{"key_phrases": key_phrases(t, self.max_key_phrases), "entities": entities(t)} for t in texts]
