"""Builds a small CLIP byte-level BPE vocabulary from caption words.

The result is an ordinary ``transformers.CLIPTokenizer`` folder (``vocab.json``, ``merges.txt``,
``tokenizer_config.json``, ...) laid out exactly as OpenAI's CLIP vocabulary (Radford et al. 2021):
the 256 byte symbols of GPT-2's ``bytes_to_unicode`` table, the same 256 with the ``</w>``
end-of-word suffix, one entry per learnt merge, then ``<|startoftext|>`` and ``<|endoftext|>``.
Because every byte and byte-``</w>`` symbol is present, any string tokenizes; the merges are
learnt with plain BPE (Sennrich et al. 2016) on the caption words until each word is a single
token, so a caption costs one token per word.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MODEL_MAX_LENGTH = 77
# CLIP's pre-tokenizer pattern (letters, digits one at a time, other symbols), on lowercased text.
WORD_PATTERN = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+""")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP's reversible map from the 256 byte values to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, [chr(c) for c in codes], strict=True))


def learn_merges(texts: Iterable[str], max_merges: int = 5000) -> list[tuple[str, str]]:
    """Byte-pair merges learnt from the words of ``texts`` until every word is one symbol."""
    byte_map = bytes_to_unicode()
    counts = Counter(w for text in texts for w in WORD_PATTERN.findall(text.lower().strip()))
    words: dict[tuple[str, ...], int] = {}
    for word, n in counts.items():
        chars = [byte_map[b] for b in word.encode("utf-8")]
        chars[-1] += "</w>"
        words[tuple(chars)] = words.get(tuple(chars), 0) + n
    merges: list[tuple[str, str]] = []
    while len(merges) < max_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, n in words.items():
            for pair in zip(symbols, symbols[1:], strict=False):
                pairs[pair] += n
        if not pairs:
            break
        # Most frequent pair; ties broken by the pair itself so the result is deterministic.
        best = max(pairs.items(), key=lambda item: (item[1], item[0]))[0]
        merges.append(best)
        merged: dict[tuple[str, ...], int] = {}
        for symbols, n in words.items():
            out: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged[tuple(out)] = merged.get(tuple(out), 0) + n
        words = merged
    return merges


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """CLIP's vocabulary order: bytes, bytes + ``</w>``, merges, then the two special tokens."""
    symbols = list(bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols]
    seen = set(vocab_list)
    for a, b in merges:
        if a + b not in seen:
            vocab_list.append(a + b)
            seen.add(a + b)
    vocab_list += [BOS, EOS]
    return {token: i for i, token in enumerate(vocab_list)}


def write_tokenizer(folder: str | Path, texts: Iterable[str]) -> Path:
    """Learn merges from ``texts`` and save a ``CLIPTokenizer`` folder; returns the folder."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    merges = learn_merges(texts)
    vocab = build_vocab(merges)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    # Positional paths: transformers 5 ignores vocab_file=/merges_file= keywords (see FACTS.md).
    tokenizer = CLIPTokenizer(
        str(folder / "vocab.json"),
        str(folder / "merges.txt"),
        model_max_length=MODEL_MAX_LENGTH,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,
        unk_token=EOS,
    )
    # Adds tokenizer.json and tokenizer_config.json next to vocab.json and merges.txt.
    tokenizer.save_pretrained(str(folder))
    return folder


def load_tokenizer(folder: str | Path):
    """Load a tokenizer folder written by :func:`write_tokenizer` (77-token CLIP tokenizer)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=MODEL_MAX_LENGTH)
