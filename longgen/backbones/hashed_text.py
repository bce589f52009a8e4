"""A deterministic stand-in text encoder for models built with random weights.

Random-weight backbones (the tiny test model, full-size benchmark models) have no trained T5 to run. This
encoder gives every prompt a fixed embedding without any download: each lower-cased word, punctuation mark or
Chinese/Japanese character (those scripts put no spaces between words, so each character is a token, as real
tokenizers give them about one each) maps to a Gaussian vector seeded by a stable hash of the token, placed at its position; unused positions are zero, so
the empty negative prompt is all zeros. Same prompt ⇒ same embedding on every machine.
"""

from __future__ import annotations

import hashlib
import re

import torch

from longgen.story import FULL_WIDTH_RANGES

#: a Chinese or Japanese letter (CJK ideograph, kana) or full-width mark is a token of its own
_TOKEN = re.compile(rf"[{FULL_WIDTH_RANGES}]|(?:(?![{FULL_WIDTH_RANGES}])\w)+|[^\w\s]")
_ONE_IDEOGRAPH = re.compile(rf"[{FULL_WIDTH_RANGES}]")


def tokenize(prompt: str) -> list[str]:
    return _TOKEN.findall(prompt.lower())


def ideographs(tokens: list[str]) -> int:
    """How many of `tokens` are single Chinese or Japanese characters."""
    return sum(1 for token in tokens if _ONE_IDEOGRAPH.fullmatch(token))


def hashed_embedding(prompt: str, seq_len: int, dim: int) -> torch.Tensor:
    """[seq_len, dim] float32 embedding of `prompt`; tokens past `seq_len` are cut like a tokenizer would."""
    out = torch.zeros(seq_len, dim)  # [S, D]
    for pos, token in enumerate(tokenize(prompt)[:seq_len]):
        seed = int.from_bytes(hashlib.sha256(token.encode()).digest()[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF
        g = torch.Generator().manual_seed(seed)
        out[pos] = torch.randn(dim, generator=g) / dim**0.5 * 4.0
    return out
