"""Text data: reading a corpus, byte/char tokenizers, and fixed-length training windows.

No tokenizer is downloaded. `byte` encodes UTF-8 bytes (vocabulary 256, any language, nothing to
store); `char` builds a vocabulary from the training text (smaller, but only knows what it saw).
A tokenizer is described by a small dict that travels in the checkpoint, so inference decodes
exactly as training encoded.
"""

import os

import numpy as np
import torch

from data import DataError

SAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "samples")
DEFAULT_CORPUS = os.path.join(SAMPLES, "shakespeare.txt")
TEXT_SUFFIXES = (".txt", ".md", ".text")


def read_corpus(path=""):
    """The text of a file, or of every text file in a folder (sorted by name), or the embedded corpus."""
    path = path or DEFAULT_CORPUS
    if os.path.isdir(path):
        files = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(path) for f in fs if f.endswith(TEXT_SUFFIXES))
        if not files:
            raise DataError(f"folder {path} has no text files ({', '.join(TEXT_SUFFIXES)})")
    elif os.path.isfile(path):
        files = [path]
    else:
        raise DataError(f"text data {path} does not exist")
    parts = []
    for f in files:
        with open(f, encoding="utf-8", errors="replace") as fh:
            parts.append(fh.read())
    text = "\n\n".join(parts)
    if len(text) < 2:
        raise DataError(f"text data {path} is empty")
    return text


class ByteTokenizer:
    vocab_size = 256

    def encode(self, text):
        return list(text.encode("utf-8"))

    def decode(self, ids):
        return bytes(int(i) % 256 for i in ids).decode("utf-8", errors="replace")

    def to_dict(self):
        return {"kind": "byte"}


class CharTokenizer:
    def __init__(self, chars):
        self.chars = list(chars)
        self.index = {c: i for i, c in enumerate(self.chars)}
        self.vocab_size = len(self.chars)

    @classmethod
    def from_text(cls, text):
        return cls(sorted(set(text)))

    def encode(self, text):
        unknown = sorted(set(text) - self.index.keys())
        if unknown:
            raise DataError(f"characters {''.join(unknown[:10])!r} are not in the model's vocabulary "
                            f"(char tokenizer); use characters from the training text")
        return [self.index[c] for c in text]

    def decode(self, ids):
        return "".join(self.chars[int(i)] for i in ids if 0 <= int(i) < self.vocab_size)

    def to_dict(self):
        return {"kind": "char", "chars": "".join(self.chars)}


def make_tokenizer(kind, text=None):
    if kind == "byte":
        return ByteTokenizer()
    if kind == "char":
        return CharTokenizer.from_text(text)
    raise DataError(f"unknown tokenizer {kind!r}; use 'byte' or 'char'")


def tokenizer_from_dict(d):
    if d.get("kind") == "byte":
        return ByteTokenizer()
    if d.get("kind") == "char":
        return CharTokenizer(d["chars"])
    raise DataError(f"checkpoint names an unknown tokenizer {d!r}")


def encode_tokens(tokenizer, text):
    """The whole text as a 1-D token tensor (int64, so it indexes embeddings directly)."""
    if isinstance(tokenizer, ByteTokenizer):  # fast path: no Python list of a million ints
        return torch.from_numpy(np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64))
    return torch.tensor(tokenizer.encode(text), dtype=torch.int64)


class TokenWindows:
    """Non-overlapping (input, target) windows of `block_size` tokens over a token stream.

    Each epoch shifts every window by the same offset in [0, block_size), drawn from
    (seed, epoch), so over several epochs the model sees each position at different places in
    its context. The number of windows does not depend on the shift.
    """

    def __init__(self, tokens, block_size, seed):
        if len(tokens) < 2 * block_size + 1:
            raise DataError(f"the text has {len(tokens)} tokens, too few for block_size {block_size}; "
                            f"use more text or a smaller block_size")
        self.tokens = tokens
        self.block_size = block_size
        self.seed = seed
        self.num_windows = len(tokens) // block_size - 1

    def __len__(self):
        return self.num_windows

    def shift(self, epoch):
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, epoch, 1])))
        return int(rng.integers(self.block_size))

    def batch(self, indices, epoch=0):
        """x, y of shape (B, T): y is x shifted left by one token."""
        starts = torch.as_tensor(indices, dtype=torch.int64) * self.block_size + self.shift(epoch)
        offsets = starts[:, None] + torch.arange(self.block_size + 1)  # (B, T+1)
        chunk = self.tokens[offsets]
        return chunk[:, :-1], chunk[:, 1:]
