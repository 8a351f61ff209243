"""docpipe.identity owns the formats: the names it builds, it also parses."""

from __future__ import annotations

import pytest

from docpipe import identity

DOC = "0123456789abcdef0123456789abcdef"


def test_a_vector_id_parses_back_into_its_parts():
    version = identity.processing_version("9f" * 32, "v7")
    assert identity.parse_vector_id(identity.vector_id(DOC, version, 12)) == (DOC, version, 12)
    assert identity.vector_id_prefix(DOC, version) == f"{DOC}#{version}#"
    for bad in (f"{DOC}#{version}", f"{DOC}#{version}#x", f"{DOC}##3", f"{DOC}#{version}#1#2"):
        with pytest.raises(ValueError):
            identity.parse_vector_id(bad)


def test_versions_know_their_pipeline_version():
    assert identity.pipeline_version_of(identity.processing_version("ab" * 32, "v2")) == "v2"
    unread = identity.unread_version('"d41d8cd98f00b204e9800998ecf8427e"', "v2")
    assert identity.pipeline_version_of(unread) == "v2"
    assert unread.startswith(identity.unread_version_prefix("v2"))
    assert not unread.startswith(identity.unread_version_prefix("v1"))
