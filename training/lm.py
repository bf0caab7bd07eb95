"""The lm task: a GPT (model/gpt.py) learns next-token prediction on plain text.

`LMConfig` is its settings, `LMTask` what it trains on and how it is scored (the task interface of
training/__init__.py), and `build` makes both with the model. The text itself, its token file and
windows are data/text.py's (where the token file is looked for, training/reuse.py's); the tokenizers
data/tokenizers.py's.
"""

import dataclasses
import math

import numpy as np
import torch

import model as models
from data import DataError
from data.sampler import EpochSampler
from data.text import DEFAULT_CORPUS, TokenWindows, describe_change
from model.gpt import GPT, GPTConfig
from training import reuse
from training.config import ConfigError, TrainConfig


class LMTask:
    """The lm task's data: the end of the token stream (`val_fraction`) is validation, the rest
    training windows; batches of (input, target) windows on the device; the validation loss over
    `eval_batches` batches evenly spread over the split (this rank's share of them)."""

    best_metric = "val_loss"  # picks best_model.safetensors (lower is better)
    work_unit = "tokens"

    def __init__(self, tokens, tokenizer, fingerprint, cfg, device, rank=0, world=1):
        n_val, least = int(len(tokens) * cfg.val_fraction), 2 * cfg.block_size + 1  # two windows a split
        if min(n_val, len(tokens) - n_val) < least:
            raise DataError(f"the text has {len(tokens):,} tokens, too few for a training and a validation part "
                            f"({cfg.val_fraction:g} of it) of {least} tokens each at block_size {cfg.block_size}; "
                            f"use more text or a smaller block_size")
        self.train = TokenWindows(tokens[:-n_val], cfg.block_size, cfg.seed)
        self.val = TokenWindows(tokens[-n_val:], cfg.block_size, cfg.seed)
        self.device, self.batch_size = device, cfg.batch_size
        n_eval = min(len(self.val), cfg.eval_batches * cfg.batch_size)
        self.eval_indices = np.linspace(0, len(self.val) - 1, n_eval).round().astype(int).tolist()[rank::world]
        self.fingerprint = fingerprint  # to warn when the data changes: the token file's hash of its tokens
        self.sampler = EpochSampler(len(self.train), cfg.batch_size, cfg.seed, shuffle=True, drop_last=True)
        self.meta = {"tokenizer": tokenizer.to_dict()}  # what inference needs besides the weights

    def work(self, indices):
        """The tokens a micro-batch of these windows trains on (its throughput's unit)."""
        return len(indices) * self.train.block_size

    @staticmethod
    def flops_per_work(model):
        """Training FLOPs a token, nanoGPT's estimate: 6N for the matmuls of forward and backward (N all
        parameters but the position table, the tied lm_head counted once) + 12 L T C for attention."""
        cfg = model.config
        n = sum(p.numel() for p in model.parameters()) - model.transformer.wpe.weight.numel()
        return 6 * n + 12 * cfg.n_layer * cfg.block_size * cfg.n_embd

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


def build(cfg, device, rank=0, world=1, resumed=None, run_folder=None):
    """(model, task object) of the lm task; `resumed` is the checkpoint a run resumes from, or None;
    `run_folder` the run's folder, where the token file is kept for later parts (None: kept in memory)."""
    # Tokenized once into a token file that later parts map; resuming keeps the checkpoint's tokenizer.
    source = reuse.lm_token_file(cfg, resumed.meta["task_meta"]["tokenizer"] if resumed else None, resumed,
                                 run_folder, rank)
    before = resumed.meta["task_meta"].get("corpus") if resumed else None
    if before and source.corpus != before:
        print(f"note: the corpus {cfg.data or DEFAULT_CORPUS} is not the one the checkpoint trained on "
              f"({describe_change(before, source.corpus)}); its tokens were made again with the checkpoint's tokenizer")
    tokens, tokenizer = source.tokens, source.tokenizer
    task = LMTask(tokens, tokenizer, source.fingerprint, cfg, device, rank, world)
    task.meta["corpus"] = source.corpus
    print(f"data: {len(tokens):,} tokens ({tokenizer.to_dict()['kind']} tokenizer, vocab {tokenizer.vocab_size}); "
          f"{len(task.train):,} train / {len(task.val):,} val windows of {cfg.block_size}")
    fresh = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=cfg.block_size, n_layer=cfg.n_layer,
                      n_head=cfg.n_head, n_embd=cfg.n_embd)
    saved_config = resumed.meta["model_config"] if resumed else None
    try:
        model = models.pretrained_or_fresh(GPT, cfg.pretrained, saved_config, fresh, {"block_size": cfg.block_size},
                                           dropout=cfg.dropout, attn_dropout=cfg.attn_dropout)
    except (OSError, ValueError) as e:  # a folder with a tokenizer but no model, or another model's
        raise ConfigError(f"pretrained={cfg.pretrained} cannot be loaded as a GPT-2 model ({e}); give a Hugging "
                          f"Face GPT-2 folder with config.json and model.safetensors") from None
    if model.config.vocab_size < tokenizer.vocab_size:
        raise ConfigError(f"the pretrained model's vocabulary ({model.config.vocab_size}) is smaller than "
                          f"the tokenizer's ({tokenizer.vocab_size})")
    return model, task
