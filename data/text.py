"""Text data: reading a corpus, tokenizers, fixed-length training windows, and the lm task (its
config `LMConfig`, its data `LMData`, and `build_lm`, which makes both with the model).

No tokenizer is downloaded. `byte` encodes UTF-8 bytes (vocabulary 256, any language, nothing to
store); `char` builds a vocabulary from the training text (smaller, but only knows what it saw);
`gpt2` is GPT-2's byte-level BPE, read from the vocab.json and merges.txt of a pretrained folder,
for starting from GPT-2 weights. A tokenizer is described by a dict that travels in the
checkpoint, so inference decodes exactly as training encoded.
"""

import dataclasses
import json
import math
import os

import numpy as np
import torch
import xxhash

import model as models
from data import DataError
from data.config import ConfigError, TrainConfig
from data.sampler import EpochSampler
from model.gpt import GPTConfig

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
        self.cache = {}

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
        ids = []
        for piece in self.pattern.findall(text):
            word = "".join(self.byte_to_char[b] for b in piece.encode("utf-8"))
            ids.extend(self.vocab[token] for token in self.bpe(word))
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


class LMData:
    """The lm task's data: the end of the token stream (`val_fraction`) is validation, the rest
    training windows; batches of (input, target) windows on the device; the validation loss over
    `eval_batches` batches evenly spread over the split (this rank's share of them)."""

    best_metric = "val_loss"  # picks best_model.safetensors (lower is better)

    def __init__(self, tokens, tokenizer, cfg, device, rank=0, world=1):
        n_val = int(len(tokens) * cfg.val_fraction)
        self.train = TokenWindows(tokens[:-n_val], cfg.block_size, cfg.seed)
        self.val = TokenWindows(tokens[-n_val:], cfg.block_size, cfg.seed)
        self.device, self.batch_size = device, cfg.batch_size
        n_eval = min(len(self.val), cfg.eval_batches * cfg.batch_size)
        self.eval_indices = np.linspace(0, len(self.val) - 1, n_eval).round().astype(int).tolist()[rank::world]
        self.fingerprint = xxhash.xxh3_64(tokens.numpy().tobytes()).hexdigest()  # to warn when it changes
        self.sampler = EpochSampler(len(self.train), cfg.batch_size, cfg.seed, shuffle=True, drop_last=True,
                                    rank=rank, world_size=world)
        self.meta = {"tokenizer": tokenizer.to_dict()}  # what inference needs besides the weights

    def batches(self, index_batches, epoch):
        for indices in index_batches:
            x, y = self.train.batch(indices, epoch)  # (B, T), (B, T)
            yield {"idx": x.to(self.device, non_blocking=True), "targets": y.to(self.device, non_blocking=True)}, y.numel()

    @torch.no_grad()
    def evaluate(self, model, keep_going):
        total, count = 0.0, 0
        for i in range(0, len(self.eval_indices), self.batch_size):
            if not keep_going():
                return None
            x, y = self.val.batch(self.eval_indices[i:i + self.batch_size], epoch=0)
            _, loss_sum = model(x.to(self.device), y.to(self.device))
            total += loss_sum.item()
            count += y.numel()
        return {"loss": total, "tokens": count}

    @staticmethod
    def summarize(sums):
        val_loss = sums["loss"] / sums["tokens"]
        return {"val_loss": val_loss, "perplexity": math.exp(min(val_loss, 50.0))}


@dataclasses.dataclass
class LMConfig(TrainConfig):
    """The lm task: a GPT on plain text, next-token prediction."""
    tokenizer: str = "byte"         # "byte" (UTF-8 bytes, vocab 256), "char" (vocab from the text), or
                                    # "gpt2" (GPT-2's BPE from the pretrained folder)
    block_size: int = 64            # context length in tokens
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.1            # embedding and residual dropout
    attn_dropout: float = 0.0       # attention-probability dropout (slow on CPU; see model/gpt.py)
    val_fraction: float = 0.1       # the end of the text held out for validation
    eval_batches: int = 20          # validation batches per evaluation (evenly spread over the split)
    pretrained: str = ""            # a Hugging Face GPT-2 folder to start from ("" = random init)

    def __post_init__(self):
        super().__post_init__()
        if self.tokenizer not in ("byte", "char", "gpt2"):
            raise ConfigError(f"tokenizer must be 'byte', 'char' or 'gpt2' (got {self.tokenizer!r})")
        if not 0 < self.val_fraction < 0.5:
            raise ConfigError("val_fraction must be between 0 and 0.5")
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")


def build_lm(cfg, device, rank=0, world=1, saved=None, workdir=None):
    """(model, data) of the lm task; `saved` is the checkpoint a run resumes from, or None."""
    text = read_corpus(cfg.data)
    if saved:  # resuming: decode exactly as before, even if the text changed
        tokenizer = tokenizer_from_dict(saved.meta["task_meta"]["tokenizer"])
    else:
        tokenizer = make_tokenizer(cfg.tokenizer, text, cfg.pretrained)
    tokens = encode_tokens(tokenizer, text)
    data = LMData(tokens, tokenizer, cfg, device, rank, world)
    print(f"data: {len(tokens):,} tokens ({tokenizer.to_dict()['kind']} tokenizer, vocab {tokenizer.vocab_size}); "
          f"{len(data.train):,} train / {len(data.val):,} val windows of {cfg.block_size}")
    fresh = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=cfg.block_size, n_layer=cfg.n_layer,
                      n_head=cfg.n_head, n_embd=cfg.n_embd)
    model = models.pretrained_or_fresh("lm", cfg.pretrained, saved, fresh, {"block_size": cfg.block_size},
                                       dropout=cfg.dropout, attn_dropout=cfg.attn_dropout)
    if model.config.vocab_size < tokenizer.vocab_size:
        raise ConfigError(f"the pretrained model's vocabulary ({model.config.vocab_size}) is smaller than "
                          f"the tokenizer's ({tokenizer.vocab_size})")
    return model, data
