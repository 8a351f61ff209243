"""ray_jobs.backends.local_enricher: rule-based entities and RAKE key phrases."""

from __future__ import annotations

import pytest

from ray_jobs.backends.base import Enricher
from ray_jobs.backends.local_enricher import LocalEnricher, entities, key_phrases


def of_type(text: str, kind: str) -> list[str]:
    return [e["text"] for e in entities(text) if e["type"] == kind]


def test_local_enricher_implements_the_enricher_protocol():
    enricher = LocalEnricher()
    assert isinstance(enricher, Enricher)
    assert enricher.name == "local"


def test_enrich_returns_one_result_per_text_in_order():
    out = LocalEnricher().enrich(["Acme Corp. paid $5.", "", "Revenue rose 3%."])
    assert len(out) == 3
    assert all(set(r) == {"key_phrases", "entities"} for r in out)
    assert out[0]["entities"][0] == {"type": "ORGANIZATION", "text": "Acme Corp."}
    assert out[1] == {"key_phrases": [], "entities": []}
    assert out[2]["entities"] == [{"type": "PERCENT", "text": "3%"}]


@pytest.mark.parametrize("text,expected", [
    ("The fee was $1,200.50 in total.", ["$1,200.50"]),
    ("They raised USD 3 million last year.", ["USD 3 million"]),
    ("A grant of €5m and £2.5bn in loans.", ["€5m", "£2.5bn"]),
    ("It cost 500 EUR, then 20 dollars.", ["500 EUR", "20 dollars"]),
])
def test_money_amounts_are_found(text, expected):
    assert of_type(text, "MONEY") == expected


@pytest.mark.parametrize("text,expected", [
    ("Margins grew 12.5% this year.", ["12.5%"]),
    ("Sales rose 12 percent and 7 per cent.", ["12 percent", "7 per cent"]),
    ("Rates moved 0.25 percentage points.", ["0.25 percentage points"]),
])
def test_percentages_are_found(text, expected):
    assert of_type(text, "PERCENT") == expected


@pytest.mark.parametrize("text,expected", [
    ("Filed on 2024-03-01.", ["2024-03-01"]),
    ("Signed March 1, 2024 in Paris.", ["March 1, 2024"]),
    ("Signed 1 March 2024 in Paris.", ["1 March 2024"]),
    ("Results for Q3 2023 and FY2022 are final.", ["Q3 2023", "FY2022"]),
    ("Due in September 2025.", ["September 2025"]),
])
def test_dates_are_found(text, expected):
    assert of_type(text, "DATE") == expected


@pytest.mark.parametrize("text,expected", [
    ("Acme Widgets Inc. signed with Globex Corporation.", ["Acme Widgets Inc.", "Globex Corporation"]),
    ("Barclays plc, Foo GmbH, Nestlé S.A., Bar Ltd and Baz LLC agreed.",
     ["Barclays plc", "Foo GmbH", "Nestlé S.A.", "Bar Ltd", "Baz LLC"]),
    ("Yesterday Deutsche Bank AG and Siemens AG met.", ["Deutsche Bank AG", "Siemens AG"]),
    ("The Federal Trade Commission sued J.P. Morgan Chase & Co. today.",
     ["Federal Trade Commission", "J.P. Morgan Chase & Co."]),
    ("Researchers at the University of Oxford and Stanford University agree.",
     ["University of Oxford", "Stanford University"]),
    ("The Walt Disney Company and the Department of Energy.", ["Walt Disney Company", "Department of Energy"]),
])
def test_organisations_ending_in_a_legal_form_or_institution_word_are_found(text, expected):
    assert of_type(text, "ORGANIZATION") == expected


def test_lone_suffix_words_are_not_organisations():
    assert of_type("The company said the bank and the university agreed. The Company declined.",
                   "ORGANIZATION") == []


def test_entities_are_deduplicated_in_order_of_first_appearance():
    text = ("Acme Corp. paid $5 on 2024-03-01. Acme Corp. paid $5 again on 2024-03-01, "
            "then 10% on Q1 2024.")
    assert entities(text) == [
        {"type": "ORGANIZATION", "text": "Acme Corp."},
        {"type": "MONEY", "text": "$5"},
        {"type": "DATE", "text": "2024-03-01"},
        {"type": "PERCENT", "text": "10%"},
        {"type": "DATE", "text": "Q1 2024"},
    ]


def test_overlapping_matches_keep_the_longest():
    assert entities("Due March 1, 2024.") == [{"type": "DATE", "text": "March 1, 2024"}]


def test_key_phrases_rank_multi_word_content_phrases_first():
    text = ("Compatibility of systems of linear constraints over the set of natural numbers. "
            "Criteria of compatibility of a system of linear Diophantine equations, strict inequations, "
            "and nonstrict inequations are considered. Upper bounds for components of a minimal set of "
            "solutions and algorithms of construction of minimal generating sets of solutions for all "
            "types of systems are given.")
    phrases = key_phrases(text)
    assert len(phrases) == 8
    assert phrases[:2] == ["linear Diophantine equations", "minimal generating sets"]
    assert "linear constraints" in phrases and "natural numbers" in phrases
    assert not any(w in {"of", "the", "and", "are"} for p in phrases for w in p.lower().split())


def test_key_phrases_skip_numbers_and_date_words():
    phrases = key_phrases("In March 2024 revenue was 5 million USD, up 12 percent in Q3.")
    assert phrases == ["revenue"]


def test_enrichment_is_deterministic():
    texts = ["Acme Corp. paid $1,200.50 on March 1, 2024 for vector index maintenance and "
             "chunk citation quality, up 12% from FY2022."] * 2
    first = LocalEnricher().enrich(texts)
    assert first[0] == first[1] == LocalEnricher().enrich(texts[:1])[0]


def test_empty_and_whitespace_text_give_empty_results():
    assert LocalEnricher().enrich(["", "   \n\t"]) == [{"key_phrases": [], "entities": []}] * 2
    assert LocalEnricher().enrich([]) == []
