"""Tokenizers for text: bytes, characters, or GPT-2's byte-level BPE.

No tokenizer is downloaded. `byte` encodes UTF-8 bytes (vocabulary 256, any language, nothing to
store); `char` builds a vocabulary from the training text (smaller, but only knows what it saw);
`gpt2` is GPT-2's byte-level BPE, read from the vocab.json and merges.txt of a pretrained folder,
for starting from GPT-2 weights. A tokenizer is described by a dict that travels in the
checkpoint, so inference decodes exactly as training encoded.
"""

import json
import os

import numpy as np

from data import DataError


def token_dtype(vocab_size):
    return np.uint8 if vocab_size <= 1 << 8 else np.uint16 if vocab_size <= 1 << 16 else np.uint32


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

    def encode_array(self, text):
        """encode() for long texts: the text's code points looked up in the sorted vocabulary (NumPy)."""
        points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        vocab = np.array([ord(c) for c in self.chars], dtype=np.uint32)
        order = np.argsort(vocab)
        at = np.minimum(np.searchsorted(vocab[order], points), len(vocab) - 1)
        if not np.array_equal(vocab[order][at], points):
            self.encode(text)  # names the unknown characters
        return order[at].astype(token_dtype(self.vocab_size))

    def decode(self, ids):
        return "".join(self.chars[int(i)] for i in ids if 0 <= int(i) < self.vocab_size)

    def to_dict(self):
        return {"kind": "char", "chars": "".join(self.chars)}


def bytes_to_unicode():
    """GPT-2's map from each byte to a printable character, so BPE can work on strings: printable
    Latin-1 bytes map to themselves, the rest to characters from 256 up."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    return {b: chr(c) for b, c in zip(printable + extra, printable + [256 + i for i in range(len(extra))])}


class GPT2Tokenizer:
    """GPT-2's byte-level BPE: split text with GPT-2's pattern, map bytes to characters, then apply
    the merges in rank order inside each piece. Matches transformers' GPT2Tokenizer (tested)."""

    PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    CACHE_LIMIT = 1_000_000  # pieces remembered (a few hundred MB at most) before starting afresh

    def __init__(self, vocab, merges):
        import regex  # \p{L} (any letter) is not in the standard re module; transformers needs it too

        self.vocab = dict(vocab)
        self.merges = [tuple(m.split()) if isinstance(m, str) else tuple(m) for m in merges]
        self.ranks = {pair: i for i, pair in enumerate(self.merges)}
        self.id_to_token = {i: t for t, i in self.vocab.items()}
        self.byte_to_char = bytes_to_unicode()
        self.char_to_byte = {c: b for b, c in self.byte_to_char.items()}
        self.pattern = regex.compile(self.PATTERN)
        self.vocab_size = max(self.vocab.values()) + 1
        self.cache, self.ids_of_piece = {}, {}  # BPE of a word, and the ids of a piece of text

    @classmethod
    def from_folder(cls, folder):
        vocab_path, merges_path = os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt")
        if not (os.path.exists(vocab_path) and os.path.exists(merges_path)):
            raise DataError(f"{folder} has no vocab.json and merges.txt for the gpt2 tokenizer")
        with open(vocab_path, encoding="utf-8") as f:
            vocab = json.load(f)
        with open(merges_path, encoding="utf-8") as f:
            merges = [line.split() for line in f.read().splitlines() if line and not line.startswith("#version")]
        return cls(vocab, merges)

    def bpe(self, word):
        if word in self.cache:
            return self.cache[word]
        parts = list(word)
        while len(parts) > 1:
            pairs = [(self.ranks.get(pair, float("inf")), i) for i, pair in enumerate(zip(parts, parts[1:]))]
            rank, i = min(pairs)
            if rank == float("inf"):
                break
            first, second = parts[i], parts[i + 1]
            merged, j = [], 0
            while j < len(parts):  # merge every occurrence of the best pair, left to right
                if j < len(parts) - 1 and parts[j] == first and parts[j + 1] == second:
                    merged.append(first + second)
                    j += 2
                else:
                    merged.append(parts[j])
                    j += 1
            parts = merged
        self.cache[word] = parts
        return parts

    def encode(self, text):
        ids, known = [], self.ids_of_piece  # most pieces of a text are words seen before
        for piece in self.pattern.findall(text):
            found = known.get(piece)
            if found is None:
                if len(known) > self.CACHE_LIMIT:  # bounded memory on a corpus of many distinct words
                    known.clear()
                    self.cache.clear()
                word = "".join(self.byte_to_char[b] for b in piece.encode("utf-8"))
                found = known[piece] = [self.vocab[token] for token in self.bpe(word)]
            ids += found
        return ids

    def decode(self, ids):
        chars = "".join(self.id_to_token.get(int(i), "") for i in ids)
        return bytes(self.char_to_byte[c] for c in chars if c in self.char_to_byte).decode("utf-8", errors="replace")

    def to_dict(self):
        return {"kind": "gpt2", "vocab": self.vocab, "merges": [" ".join(m) for m in self.merges]}

    def save_pretrained(self, folder, max_length):
        """vocab.json, merges.txt and tokenizer_config.json: the folder opens with AutoTokenizer."""
        with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump(self.vocab, f, ensure_ascii=False)
        with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "".join(" ".join(m) + "\n" for m in self.merges))
        end = "<|endoftext|>" if "<|endoftext|>" in self.vocab else None  # GPT-2's one special token
        with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump({"tokenizer_class": "GPT2Tokenizer", "bos_token": end, "eos_token": end, "unk_token": end,
                       "add_prefix_space": False, "model_max_length": max_length}, f, indent=2)


def make_tokenizer(kind, text=None, folder=""):
    if kind == "byte":
        return ByteTokenizer()
    if kind == "char":
        return CharTokenizer.from_text(text)
    if kind == "gpt2":
        if not folder:
            raise DataError("the gpt2 tokenizer is read from a pretrained folder; set pretrained=FOLDER")
        return GPT2Tokenizer.from_folder(folder)
    raise DataError(f"unknown tokenizer {kind!r}; use 'byte', 'char' or 'gpt2'")


def tokenizer_from_dict(d):
    if d.get("kind") == "byte":
        return ByteTokenizer()
    if d.get("kind") == "char":
        return CharTokenizer(d["chars"])
    if d.get("kind") == "gpt2":
        return GPT2Tokenizer(d["vocab"], d["merges"])
    raise DataError(f"checkpoint names an unknown tokenizer {d!r}")
