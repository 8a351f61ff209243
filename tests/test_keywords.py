"""ray_jobs.keywords: the terms both vector stores match on."""

from __future__ import annotations

import pytest

from ray_jobs import keywords
from ray_jobs.keywords import keyword_text, sparse_query, sparse_vector, term_index, terms


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Revenue was $32.0 billion.", ["revenue", "was", "32.0", "billion"]),
        ("Form 1040, line 7: 1,234.56", ["form", "1040", "line", "7", "1,234.56"]),
        ("e-mail snake_case 3.", ["e", "mail", "snake", "case", "3"]),
        ("ＦＵＬＬ　ｗｉｄｔｈ ﬁnance Straße", ["full", "width", "finance", "strasse"]),  # NFKC + casefold
        ("Résumé RÉSUMÉ resume", ["résumé", "résumé", "resume"]),  # accents kept
        ("हिन्दी भाषा", ["हिन्दी", "भाषा"]),  # vowel signs (combining marks) stay in the word
        ("营业收入增长", ["营业", "业收", "收入", "入增", "增长"]),
        ("中 国", ["中", "国"]),
        ("GDP增长3.5%", ["gdp", "增长", "3.5"]),
        ("東京タワー", ["東京", "京タ", "タワ", "ワー"]),
        ("ภาษาไทย", ["ภา", "าษ", "ษา", "าไ", "ไท", "ทย"]),
        ("x" * 41 + " kept", ["kept"]),
        ("  ?!  ", []),
    ],
)
def test_terms(text, expected):
    assert terms(text) == expected


def test_keyword_text_is_the_terms_joined_by_spaces():
    assert keyword_text("Form 1040 — U.S. Individual") == "form 1040 u s individual"
    assert keyword_text("") == ""


def test_term_index_is_a_stable_uint32():
    import zlib

    assert term_index("revenue") == zlib.crc32(b"revenue")  # the same in every process and release
    assert term_index("revenue") == term_index("revenue") != term_index("revenues")
    assert all(0 <= term_index(t) < 2**32 for t in terms("营业收入 $32.0 résumé"))


def test_sparse_vector_has_bm25_tf_weights():
    k1, b, avg = keywords.K1, keywords.B, keywords.AVG_TERMS
    v = sparse_vector("cat cat dog")
    assert v["indices"] == sorted(v["indices"]) and len(set(v["indices"])) == 2
    weight = dict(zip(v["indices"], v["values"], strict=True))
    norm = k1 * (1 - b + b * 3 / avg)
    assert weight[term_index("cat")] == pytest.approx(2 * (k1 + 1) / (2 + norm))
    assert weight[term_index("dog")] == pytest.approx(1 * (k1 + 1) / (1 + norm))
    # Saturation: ten repeats weigh less than ten times one.
    ten = dict(zip(*sparse_vector("cat " * 10).values(), strict=True))[term_index("cat")]
    assert weight[term_index("dog")] < ten < k1 + 1
    # A longer chunk weighs the same count less.
    long = dict(zip(*sparse_vector("dog " + "x " * 400).values(), strict=True))[term_index("dog")]
    assert long < weight[term_index("dog")]
    assert sparse_vector("?!") == {"indices": [], "values": []}


def test_sparse_vector_keeps_the_strongest_terms_within_pinecones_limit():
    text = "repeated " * 5 + " ".join(f"w{i}" for i in range(3000))
    v = sparse_vector(text)
    assert len(v["indices"]) == keywords.MAX_SPARSE_TERMS
    assert term_index("repeated") in v["indices"]


def test_sparse_query_weights_unique_terms_and_stopwords_less():
    q = sparse_query("The revenue of the year revenue")
    weight = dict(zip(q["indices"], q["values"], strict=True))
    assert weight == {term_index("the"): 0.1, term_index("revenue"): 1.0, term_index("of"): 0.1,
                      term_index("year"): 1.0}
    assert q["indices"] == sorted(q["indices"])
    assert len(sparse_query(" ".join(f"w{i}" for i in range(2000)))["indices"]) == keywords.MAX_SPARSE_TERMS


def test_query_and_document_share_terms():
    doc = sparse_vector("Net revenue was $32.0 billion in fiscal 2021 (营业收入).")
    q = sparse_query("32.0 BILLION 营业收入")
    shared = set(doc["indices"]) & set(q["indices"])
    assert shared == {term_index(t) for t in ("32.0", "billion", "营业", "业收", "收入")}
