"""Keyword terms for BM25 search: one normalisation for the index and for the query.

Both stores match the same terms (docs: the "Vector store API" of issue #12):
LanceDB indexes `keyword_text(text)` with a whitespace tokenizer (no lower-casing, stemming,
stop words or ASCII folding of its own: the text is already normalised here) and computes
BM25 with its own corpus statistics; Pinecone stores `sparse_vector(text)` with each record
and scores a query's `sparse_query(text)` by dot product.

Normalisation, in order:
- Unicode NFKC, casefold, NFKC again (full-width forms, ligatures, "ß" -> "ss", "Ⅳ" -> "iv").
- Accents are KEPT ("résumé" and "resume" are different terms): folding them would also
  strip the vowel signs of Indic scripts, which are combining marks too.
- A term is a run of letters, digits and combining marks; everything else separates terms
  ("Form 1040" -> form, 1040; "e-mail" -> e, mail). One exception keeps figures whole:
  a "." or "," between two digits stays inside the term ("$32.0 billion" -> 32.0,
  billion; "1,234.5" -> 1,234.5), so an exact figure is one discriminating term.
- Runs of scripts written without spaces (Han, Hiragana, Katakana, Hangul, Thai, Lao,
  Khmer, Myanmar) become overlapping character bigrams, a one-character run that
  character alone ("增长率" -> 增长, 长率), so Chinese matches without a dictionary.
- Terms longer than MAX_TERM_CHARS (hashes, base64, run-together junk) are dropped.

Sparse vectors (Pinecone): index = CRC-32 of the term's UTF-8 (a stable unsigned 32-bit
hash, what Pinecone's uint32 indices take); a document's value = the BM25 term-frequency
part tf*(k1+1)/(tf + k1*(1 - b + b*len/AVG_TERMS)) with k1 = 1.2, b = 0.75 and a FIXED
average length AVG_TERMS (Pinecone keeps no corpus statistics; 200 terms is about a chunk
of 254 MiniLM word pieces). A query's value is 1 per unique term (no IDF is known at query
time), except STOPWORDS at 0.1 so that "the" cannot outweigh "revenue". At most
MAX_SPARSE_TERMS (Pinecone's limit per record) of a document's highest-weighted terms are kept.
"""

from __future__ import annotations

import unicodedata
import zlib
from collections import Counter
from functools import lru_cache
from typing import TypedDict

K1 = 1.2
B = 0.75
AVG_TERMS = 200
MAX_TERM_CHARS = 40
MAX_SPARSE_TERMS = 1000
STOPWORD_WEIGHT = 0.1
# English function words: only the query side of the sparse vectors weights them down.
STOPWORDS = frozenset(
    ("a", "an", "and", "are", "as", "at", "be", "by", "do", "does", "did", "for", "from", "has", "have",
     "how", "in", "is", "it", "its", "of", "on", "or", "that", "the", "this", "to", "was", "were", "what",
     "when", "where", "which", "who", "why", "will", "with")
)

# Blocks of scripts written without spaces between words.
_UNSPACED = (
    (0x0E00, 0x0EFF),  # Thai, Lao
    (0x1000, 0x109F),  # Myanmar
    (0x1100, 0x11FF),  # Hangul Jamo
    (0x1780, 0x17FF),  # Khmer
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x3130, 0x318F),  # Hangul compatibility Jamo
    (0x31F0, 0x31FF),  # Katakana phonetic extensions
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xAC00, 0xD7AF),  # Hangul syllables
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0x20000, 0x3FFFF),  # CJK extensions B onwards
)
_SEP, _WORD, _UNSPACED_CLASS, _MARK = 0, 1, 2, 3


class SparseVector(TypedDict):
    indices: list[int]
    values: list[float]


@lru_cache(maxsize=65536)
def _char_class(ch: str) -> int:
    category = unicodedata.category(ch)[0]
    if category == "M":
        return _MARK  # joins the run it follows
    if category not in ("L", "N"):
        return _SEP
    code = ord(ch)
    if code >= 0x0E00 and any(lo <= code <= hi for lo, hi in _UNSPACED):
        return _UNSPACED_CLASS
    return _WORD


def normalise(text: str) -> str:
    """NFKC, casefolded (see the module docstring)."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())


def terms(text: str) -> list[str]:
    """The text's terms in order, repeats kept (see the module docstring)."""
    text = normalise(text)
    out: list[str] = []
    run: list[str] = []
    kind = _SEP

    def flush() -> None:
        if kind == _WORD:
            if len(run) <= MAX_TERM_CHARS:
                out.append("".join(run))
        elif kind == _UNSPACED_CLASS:
            if len(run) == 1:
                out.append(run[0])
            else:
                out.extend(run[i] + run[i + 1] for i in range(len(run) - 1))
        run.clear()

    last = len(text) - 1
    for i, ch in enumerate(text):
        cls = _char_class(ch)
        if cls == _MARK:
            if kind == _SEP:
                kind = _WORD
            run.append(ch)
            continue
        if cls == _SEP:
            # A figure's "." or "," stays inside it: 32.0, 1,234.5
            if ch in ".," and kind == _WORD and run[-1].isdecimal() and i < last and text[i + 1].isdecimal():
                run.append(ch)
                continue
            flush()
            kind = _SEP
            continue
        if cls != kind:
            flush()
            kind = cls
        run.append(ch)
    flush()
    return out


def keyword_text(text: str) -> str:
    """The terms joined by single spaces: what LanceDB's whitespace tokenizer indexes."""
    return " ".join(terms(text))


def term_index(term: str) -> int:
    """The sparse-vector dimension of a term: CRC-32 of its UTF-8, an unsigned 32-bit int."""
    return zlib.crc32(term.encode("utf-8"))


def _as_sparse(weights: dict[int, float]) -> SparseVector:
    ordered = sorted(weights.items())
    return {"indices": [i for i, _ in ordered], "values": [v for _, v in ordered]}


def sparse_vector(text: str) -> SparseVector:
    """A document's hashed terms with BM25 term-frequency weights (empty for no terms)."""
    counts = Counter(terms(text))
    length = sum(counts.values())
    norm = K1 * (1 - B + B * length / AVG_TERMS)
    weights: dict[int, float] = {}
    for term, tf in counts.items():
        index = term_index(term)  # a (rare) hash collision adds the two terms' weights
        weights[index] = weights.get(index, 0.0) + tf * (K1 + 1) / (tf + norm)
    if len(weights) > MAX_SPARSE_TERMS:
        kept = sorted(weights.items(), key=lambda iv: (-iv[1], iv[0]))[:MAX_SPARSE_TERMS]
        weights = dict(kept)
    return _as_sparse(weights)


def sparse_query(text: str) -> SparseVector:
    """A query's hashed unique terms: 1 each, STOPWORDS 0.1 (empty for no terms; the first
    MAX_SPARSE_TERMS unique terms of a longer query)."""
    weights: dict[int, float] = {}
    for term in list(dict.fromkeys(terms(text)))[:MAX_SPARSE_TERMS]:
        index = term_index(term)
        weights[index] = weights.get(index, 0.0) + (STOPWORD_WEIGHT if term in STOPWORDS else 1.0)
    return _as_sparse(weights)
