"""Text for the drawing: XML escaping, durations and times, and width estimates for fitting
labels into boxes without a font renderer."""

from __future__ import annotations

import html
import re
from datetime import datetime
from typing import Any

_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def xml_escape(text: Any) -> str:
    """Escape for XML text and attribute values; drop characters XML 1.0 forbids."""
    return html.escape(_XML_BAD.sub("\ufffd", str(text)), quote=True)


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 0.1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    if seconds < 3600:
        m, s = divmod(round(seconds), 60)
        return f"{m} min {s:02d} s"
    h, rem = divmod(round(seconds), 3600)
    return f"{h} h {rem // 60:02d} min"


def fmt_retries(n: int) -> str:
    return f"×{n} retr{'y' if n == 1 else 'ies'}"


def fmt_time(t: datetime | None, start: datetime | None = None) -> str:
    if t is None:
        return ""
    s = t.strftime("%H:%M:%S.") + f"{t.microsecond // 1000:03d}"
    if start is not None:
        s += f" (+{(t - start).total_seconds():.3f} s)"
    return s


# Glyph widths (fraction of font size) of DejaVu Sans, the widest common fallback face; boxes
# sized with it also fit Helvetica/Arial, just with more air.
_W_GROUPS = (
    ("il|!.,:;'`", 0.31),
    ("ftrjIJ ()[]{}\"/\\", 0.40),
    ("=<>+~^*", 0.84),
    ("mwMW%", 0.96),
    ("&@#", 0.85),
)
_W = {ch: w for chars, w in _W_GROUPS for ch in chars}


def text_width(text: str, size: float, bold: bool = False) -> float:
    w = 0.0
    for ch in text:
        if ch in _W:
            w += _W[ch]
        elif ch.isupper():
            w += 0.74
        elif ord(ch) > 0x2E7F:  # CJK and friends are about square
            w += 1.0
        else:
            w += 0.63
    return w * size * (1.12 if bold else 1.0)


def fit_text(text: str, max_w: float, size: float, bold: bool = False) -> str:
    if text_width(text, size, bold) <= max_w:
        return text
    while text and text_width(text + "…", size, bold) > max_w:
        text = text[:-1]
    return text + "…"


