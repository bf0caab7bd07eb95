"""The training stage: one part of a run that may span many time-limited sessions.

    python train_part.py --task lm --part 1 --budget-hours 11
    python train_part.py --task lm --part 2 --budget-hours 11     # next session, same command +1

A part trains until its time budget (wall clock from process start) is nearly spent, until
`--max-steps`, until the planned epochs are done, or until SIGTERM/SIGINT; then it writes the
hand-off checkpoint `checkpoint_part{N}.safetensors` (the baton) and prints the next command.
The next part resumes from the newest valid checkpoint and continues exactly: same step,
optimizer, scaler, RNG and data order, so on CPU k steps + resume == one uninterrupted run.

Read top to bottom: configs, command line, task wiring, learning-rate plan, time budget,
checkpoint state, then main() with the training loop between the TRAINING banners.
"""

import signal
import time

# Installed before the slow imports below so that a SIGTERM at any moment, even while torch
# loads, ends in a clean save at the next step boundary instead of a lost session.
STOP = {"signal": None}


def request_stop(signum, frame):
    if STOP["signal"] is not None and signum == signal.SIGINT:
        raise KeyboardInterrupt  # a second Ctrl-C means "now"; the checkpoint files stay whole
    STOP["signal"] = signal.Signals(signum).name


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
IMPORT_TIME = time.time()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import typing  # noqa: E402
from collections import deque  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import xxhash  # noqa: E402
from tqdm import tqdm  # noqa: E402

import ckpt  # noqa: E402
from data import DataError  # noqa: E402
from data import audio  # noqa: E402
from data import table as table_data  # noqa: E402
from data import text as text_data  # noqa: E402
from data.sampler import EpochSampler  # noqa: E402
from model.gpt import GPT, GPTConfig  # noqa: E402
from model.regression import Regressor, RegressorConfig  # noqa: E402
from model.wav2vec2 import Wav2Vec2Config, Wav2Vec2ForCTC  # noqa: E402

TASKS = ("lm", "asr", "reg")
COMMANDS = {"train": "python train_part.py", "infer": "python infer.py"}  # as printed (kaggle_kernel.py sets its own)


class ConfigError(Exception):
    """A bad command line or setting; the message is one sentence that says what to do."""


# -----------------------------------------------------------------------------
# Configs: one dataclass per task, printed at start and saved in every checkpoint

@dataclasses.dataclass
class TrainConfig:
    """Fields every task has: the plan of the whole run (all parts) and how it is saved."""
    data: str = ""                  # training data path; "" = the embedded sample
    seed: int = 1337                # seeds model init, data order and dropout
    epochs: int = 10                # passes over the training data in phase 1 (the main phase)
    batch_size: int = 16            # samples per micro-batch
    grad_accum: int = 1             # micro-batches per optimizer step
    lr: float = 1e-3                # peak learning rate of phase 1
    min_lr_ratio: float = 0.1       # phase 1 decays (cosine) to lr * min_lr_ratio
    warmup_steps: int = 100         # linear warm-up, in optimizer steps
    weight_decay: float = 0.1       # AdamW decay on matrices (not on biases, norms)
    beta2: float = 0.99             # AdamW second-moment decay
    grad_clip: float = 1.0          # max global gradient norm; 0 = off
    phase2_epochs: int = 0          # extra epochs after phase 1 at a fixed low LR (0 = none)
    phase2_lr: float = 5e-6         # the phase-2 learning rate
    part_epochs: int = 0            # stop a part after this many epochs (the seeds' 18 a part); 0 = budget only
    eval_every_steps: int = 250     # validation every N optimizer steps; 0 = at each epoch end
    log_every_steps: int = 10       # training loss / LR into metrics.json every N steps
    save_every_steps: int = 500     # rolling checkpoint every N steps; 0 = off
    save_every_minutes: float = 30  # ... and at least every N minutes; 0 = off
    keep_last: int = 3              # rolling checkpoints kept (hand-offs and best are never pruned)
    grad_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% slower
    compile: bool = False           # torch.compile the training forward (slow to start; faster steps on GPUs)

    def __post_init__(self):
        for name in ("epochs", "batch_size", "grad_accum", "log_every_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1 (got {getattr(self, name)})")
        for name in ("warmup_steps", "eval_every_steps", "save_every_steps", "keep_last", "phase2_epochs", "part_epochs"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be 0 or more (got {getattr(self, name)})")
        if not self.lr > 0 or not self.phase2_lr > 0:
            raise ConfigError("lr and phase2_lr must be positive")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError("min_lr_ratio must be between 0 and 1")


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


@dataclasses.dataclass
class ASRConfig(TrainConfig):
    """The asr task: a wav2vec2 encoder + CTC head on speech, scored by WER and CER.

    `--set preset=NAME` first sets the fields in PRESETS[NAME] (the other --set values win), and
    picks the architecture when no `pretrained` folder is given.
    """
    PRESETS: typing.ClassVar[dict] = {
        # learns from scratch on a CPU: the defaults below
        "tiny": dict(epochs=40, batch_size=8, grad_accum=1, lr=2e-3, warmup_steps=150, freeze_feature_encoder=False,
                     grad_checkpointing=False, num_workers=0, mask_time_prob=0.05, layerdrop=0.0),
        # wav2vec2-base fine-tuning on one GPU
        "base": dict(epochs=30, batch_size=8, grad_accum=2, lr=1e-4, warmup_steps=500, freeze_feature_encoder=True,
                     grad_checkpointing=False, num_workers=2, mask_time_prob=0.05, layerdrop=0.05),
        # wav2vec2-large-xlsr-53 on a 16 GB P100/T4 as in the seeds: batch 1 x accumulation 8,
        # gradient checkpointing, fp16 (the default on those GPUs), frozen feature encoder, 70
        # epochs then 7 at 5e-6. A full checkpoint is ~3.8 GB (weights + AdamW moments), so one
        # rolling file is kept: Kaggle saves at most 20 GB of output.
        "xlsr53": dict(epochs=70, phase2_epochs=7, phase2_lr=5e-6, batch_size=1, grad_accum=8, lr=1e-4,
                       warmup_steps=500, freeze_feature_encoder=True, grad_checkpointing=True, num_workers=2,
                       mask_time_prob=0.05, layerdrop=0.1, keep_last=1, save_every_minutes=60, save_every_steps=0),
    }
    preset: str = "tiny"            # architecture + training defaults: tiny (CPU), base, xlsr53
    pretrained: str = ""            # a Hugging Face wav2vec2 folder (config.json + model.safetensors) to fine-tune
    epochs: int = 40
    batch_size: int = 8
    lr: float = 2e-3
    warmup_steps: int = 150
    eval_every_steps: int = 100
    save_every_steps: int = 200
    max_seconds: float = 15.0       # longer training clips are dropped (and counted)
    val_fraction: float = 0.1       # held out by id when the manifest has no split column
    eval_max_clips: int = 200       # validation clips per evaluation (evenly spread)
    freeze_feature_encoder: bool = False  # keep the pretrained conv stack fixed (saves memory, standard for fine-tuning)
    num_workers: int = 0            # audio decoding processes (0 = in the training process)
    mask_time_prob: float = 0.05    # SpecAugment: share of frames masked in training
    mask_feature_prob: float = 0.0  # SpecAugment: share of channels masked in training
    layerdrop: float = 0.0          # probability of skipping a whole transformer layer in training
    hidden_dropout: float = 0.1     # dropout in the transformer (attention output, feed-forward)

    def __post_init__(self):
        super().__post_init__()
        if self.preset not in self.PRESETS:
            raise ConfigError(f"unknown asr preset {self.preset!r}; choose one of {', '.join(self.PRESETS)}")
        if self.max_seconds <= 0 or self.eval_max_clips < 1 or self.num_workers < 0:
            raise ConfigError("max_seconds and eval_max_clips must be positive, num_workers 0 or more")


@dataclasses.dataclass
class RegConfig(TrainConfig):
    """The reg task: predict a positive number (a price) from a row's text and/or numeric columns,
    scored by SMAPE. The defaults fit the Amazon ML Challenge layout and the embedded sample."""
    PRESETS: typing.ClassVar[dict] = {
        # a byte-level text model that trains on a CPU: the defaults below
        "tiny": dict(n_layer=2, n_head=4, n_embd=128, block_size=128, batch_size=32, lr=1e-3, warmup_steps=100),
        "small": dict(n_layer=4, n_head=8, n_embd=256, block_size=256, batch_size=32, lr=5e-4, warmup_steps=200),
        # GPT-2 small (with pretrained=<a Hugging Face GPT-2 folder>): fits a 16 GB GPU in fp16
        "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=256, batch_size=16, lr=5e-5, warmup_steps=300),
    }
    preset: str = "tiny"
    id_column: str = "sample_id"
    text_column: str = "catalog_content"  # "" = no text
    numeric_columns: str = ""       # comma-separated numeric feature columns ("" = none)
    target_column: str = "price"
    loss: str = "l1"                # on log1p(target): "l1" or "mse"; or "smape" (smooth SMAPE on prices)
    tokenizer: str = "byte"         # as in the lm task; a pretrained GPT-2 folder brings its own BPE
    pretrained: str = ""            # text backbone: a Baton lm checkpoint or a Hugging Face GPT-2 folder
    block_size: int = 128           # text tokens per row; longer texts are cut
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.1
    hidden: int = 128               # width of the numeric MLP and the head
    pooling: str = "mean"           # "mean" over tokens or the "last" token
    val_fraction: float = 0.2       # rows held out (by a hash of the id) for validation
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    eval_every_steps: int = 0       # once per epoch

    def __post_init__(self):
        super().__post_init__()
        if self.preset not in self.PRESETS:
            raise ConfigError(f"unknown reg preset {self.preset!r}; choose one of {', '.join(self.PRESETS)}")
        if self.loss not in ("l1", "mse", "smape"):
            raise ConfigError(f"loss must be 'l1', 'mse' or 'smape' (got {self.loss!r})")
        if not self.text_column and not self.numeric_columns.strip():
            raise ConfigError("set text_column, numeric_columns, or both: the model needs an input")
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0 < self.val_fraction < 1 or self.pooling not in ("mean", "last"):
            raise ConfigError("val_fraction must be between 0 and 1 and pooling 'mean' or 'last'")


CONFIGS = {"lm": LMConfig, "asr": ASRConfig, "reg": RegConfig}


def parse_setting(cls, key, raw):
    """Convert the text of `--set key=value` to the type of the config field."""
    kind = typing.get_type_hints(cls)[key]
    try:
        if kind is bool:
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError
            return raw.lower() in ("1", "true", "yes", "on")
        return kind(raw)
    except ValueError:
        raise ConfigError(f"--set {key}={raw}: expected {kind.__name__}") from None


def apply_settings(cfg, settings):
    """Return cfg with `key=value` strings applied; an unknown key lists the valid ones."""
    valid = [f.name for f in dataclasses.fields(cfg)]
    changes = {}
    presets = getattr(type(cfg), "PRESETS", {})
    for item in settings:  # a preset goes first, so explicit settings override its values
        key, _, name = item.partition("=")
        if key.strip() == "preset" and name.strip() in presets:
            changes.update(presets[name.strip()])
    for item in settings:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        if key not in valid:
            raise ConfigError(f"unknown setting {key!r} for this task; valid settings: {', '.join(valid)}")
        changes[key] = parse_setting(type(cfg), key, raw.strip())
    return dataclasses.replace(cfg, **changes)


def config_from_dict(cls, saved):
    """A config from a checkpoint's saved dict; fields this version no longer has are reported."""
    names = {f.name for f in dataclasses.fields(cls)}
    dropped = sorted(set(saved) - names)
    if dropped:
        print(f"note: the checkpoint's settings {', '.join(dropped)} are not used by this version")
    return cls(**{k: v for k, v in saved.items() if k in names})


def config_changes(old, new):
    return [(f.name, getattr(old, f.name), getattr(new, f.name))
            for f in dataclasses.fields(new) if getattr(old, f.name) != getattr(new, f.name)]


def print_config(cfg):
    print(f"config ({type(cfg).__name__}):")
    for f in dataclasses.fields(cfg):
        print(f"  {f.name:20s} {getattr(cfg, f.name)!r}")


# -----------------------------------------------------------------------------
# Command line (the contract in DESIGN.md)

def part_number(text):
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError("--part is a number from 1, or 'auto'")
    return int(text)


def parse_args(argv):
    p = argparse.ArgumentParser(description="Train one part of a Baton run.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--task", required=True, choices=TASKS, help="which model family to train")
    p.add_argument("--part", type=part_number, default=1,
                   help="session number, names the hand-off file; 'auto' = one more than the newest checkpoint's")
    p.add_argument("--budget-hours", type=float, default=None,
                   help="wall-clock budget from process start; the hand-off is written before it ends "
                        "(default: none, or 11 on Kaggle)")
    p.add_argument("--data", default=None, help="training data (default: the embedded sample)")
    p.add_argument("--out", default=None, help="run folder (default: runs/<task>, on Kaggle /kaggle/working/runs/<task>)")
    p.add_argument("--resume", default="auto",
                   help="'auto' = newest valid checkpoint in --out then the input roots; 'none' = start "
                        "fresh; or a checkpoint path (.safetensors, or a legacy .pt/.pth)")
    p.add_argument("--max-steps", type=int, default=None, help="stop once the global optimizer step reaches this")
    p.add_argument("--seed", type=int, default=None, help="same as --set seed=S")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (repeatable); an unknown key lists the valid ones")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available")
    p.add_argument("--amp", choices=("fp16", "bf16", "off"), default=None,
                   help="mixed precision (default: bf16 on GPUs with compute capability >= 8.0, "
                        "fp16 on older GPUs, off on CPU)")
    args = p.parse_args(argv)
    args.kaggle = "KAGGLE_KERNEL_RUN_TYPE" in os.environ  # set inside every Kaggle session
    if args.budget_hours is None and args.kaggle:
        args.budget_hours = 11.0  # Kaggle ends GPU sessions at 12 hours
    if args.budget_hours is not None and args.budget_hours <= 0:
        p.error("--budget-hours must be positive")
    if args.out is None:
        args.out = os.path.join("/kaggle/working" if args.kaggle else ".", "runs", args.task)
    return args


# -----------------------------------------------------------------------------
# Task wiring: what differs between tasks, gathered in one small record

@dataclasses.dataclass
class Task:
    model: torch.nn.Module
    sampler: EpochSampler        # micro-batches of training indices, per epoch
    iterate: typing.Callable     # (batches, epoch) -> iterator of dicts of tensors on the device, each with a "count"
    loss_sum: typing.Callable    # (model, batch) -> loss summed over the batch's "count" units
    evaluate: typing.Callable    # (model, keep_going) -> additive sums over this rank's share of the
                                 # validation set (loss, counts, errors), or None if cut short
    summarize: typing.Callable   # sums added over all ranks -> {metric: value}
    best_metric: str             # the evaluate() key that picks best_model.safetensors
    higher_is_better: bool       # direction of best_metric
    meta: dict                   # what inference needs besides weights (tokenizer, vocabulary, ...)
    fingerprint: str             # identifies the training data, to warn when it changes on resume


def build_lm(cfg, device, ranks, saved=None):
    text = text_data.read_corpus(cfg.data)
    if saved:  # resuming: decode exactly as before, even if the text changed
        tokenizer = text_data.tokenizer_from_dict(saved.meta["task_meta"]["tokenizer"])
    else:
        tokenizer = text_data.make_tokenizer(cfg.tokenizer, text, cfg.pretrained)
    tokens = text_data.encode_tokens(tokenizer, text)
    n_val = int(len(tokens) * cfg.val_fraction)
    train = text_data.TokenWindows(tokens[:-n_val], cfg.block_size, cfg.seed)
    val = text_data.TokenWindows(tokens[-n_val:], cfg.block_size, cfg.seed)
    print(f"data: {len(tokens):,} tokens ({tokenizer.to_dict()['kind']} tokenizer, vocab {tokenizer.vocab_size}); "
          f"{len(train):,} train / {len(val):,} val windows of {cfg.block_size}")

    # The architecture comes from the config, or with `pretrained` from those weights (and on
    # resume from the checkpoint's record of them, so the folder need not be attached again).
    if cfg.pretrained and saved:
        model = GPT(dataclasses.replace(GPTConfig(**saved.meta["model_config"]), dropout=cfg.dropout,
                                        attn_dropout=cfg.attn_dropout))
    elif cfg.pretrained:
        model = GPT.from_pretrained(cfg.pretrained, dropout=cfg.dropout, attn_dropout=cfg.attn_dropout,
                                    block_size=cfg.block_size)
        if model.config.vocab_size < tokenizer.vocab_size:
            raise ConfigError(f"the pretrained model's vocabulary ({model.config.vocab_size}) is smaller than "
                              f"the tokenizer's ({tokenizer.vocab_size})")
    else:
        model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=cfg.block_size, n_layer=cfg.n_layer,
                              n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout,
                              attn_dropout=cfg.attn_dropout))
    model.gradient_checkpointing = cfg.grad_checkpointing
    model.to(device)

    def iterate(batches, epoch):
        for indices in batches:
            x, y = train.batch(indices, epoch)
            yield {"x": x.to(device, non_blocking=True), "y": y.to(device, non_blocking=True), "count": y.numel()}

    def loss_sum(model, batch):
        logits = model(batch["x"])  # (B, T, V)
        return F.cross_entropy(logits.float().flatten(0, 1), batch["y"].flatten(), reduction="sum")

    n_eval = min(len(val), cfg.eval_batches * cfg.batch_size)
    eval_indices = np.linspace(0, len(val) - 1, n_eval).round().astype(int).tolist()[ranks.rank::ranks.world]

    @torch.no_grad()
    def evaluate(model, keep_going):
        total, count = 0.0, 0
        for i in range(0, len(eval_indices), cfg.batch_size):
            if not keep_going():
                return None
            x, y = val.batch(eval_indices[i:i + cfg.batch_size], epoch=0)
            logits = model(x.to(device))
            total += F.cross_entropy(logits.float().flatten(0, 1), y.to(device).flatten(), reduction="sum").item()
            count += y.numel()
        return {"loss": total, "tokens": count}

    def summarize(sums):
        val_loss = sums["loss"] / sums["tokens"]
        return {"val_loss": val_loss, "perplexity": math.exp(min(val_loss, 50.0))}

    return Task(
        model=model,
        sampler=EpochSampler(len(train), cfg.batch_size, cfg.seed, shuffle=True, drop_last=True,
                             rank=ranks.rank, world_size=ranks.world),
        iterate=iterate, loss_sum=loss_sum, evaluate=evaluate, summarize=summarize,
        best_metric="val_loss", higher_is_better=False,
        meta={"tokenizer": tokenizer.to_dict()},
        fingerprint=xxhash.xxh3_64(tokens.numpy().tobytes()).hexdigest(),
    )


def held_out(ids, fraction):
    """Which rows are validation: decided by a hash of each id, so the split does not depend on the
    row order and a row stays on its side when the file grows."""
    return np.array([xxhash.xxh3_64_intdigest(str(i).encode()) % 10_000 < fraction * 10_000 for i in ids], dtype=bool)


def build_asr(cfg, device, ranks, saved=None):
    utterances = audio.read_manifest(cfg.data)
    if any(u.split for u in utterances):
        train_utts = [u for u in utterances if u.split in (None, "", "train")]
        val_utts = [u for u in utterances if u.split in ("valid", "validation", "val", "dev")]
    else:
        held = held_out([u.id for u in utterances], cfg.val_fraction)
        train_utts = [u for u, h in zip(utterances, held) if not h]
        val_utts = [u for u, h in zip(utterances, held) if h]
    if not train_utts or not val_utts:
        raise DataError(f"{cfg.data or 'the embedded sample'} gives {len(train_utts)} training and {len(val_utts)} "
                        f"validation clips; both are needed")
    if saved:  # the checkpoint's vocabulary, so label ids keep their meaning
        vocab = audio.CharVocab.from_dict(saved.meta["task_meta"]["vocab"])
    else:
        vocab = audio.CharVocab.build(audio.normalize_text(u.sentence) for u in train_utts)
    step = max(1, len(val_utts) // cfg.eval_max_clips)
    # Decode once and keep in memory only when that is cheap: 2,000 clips of a few seconds are
    # ~0.5 GB; a large set is decoded by the loader as it goes (Bengali.AI has ~960,000 clips).
    small = len(utterances) <= 2_000
    train = audio.AudioDataset(train_utts, vocab, max_seconds=cfg.max_seconds, cache=small)
    val = audio.AudioDataset(val_utts[::step][:cfg.eval_max_clips], vocab, cache=True)
    print(f"data: train: {train.report}\n      valid: {val.report}\n      vocabulary: {len(vocab)} symbols")
    if len(train) == 0 or len(val) == 0:
        raise DataError("no usable clips left after dropping the bad ones (see the counts above)")

    overrides = dict(mask_time_prob=cfg.mask_time_prob, mask_feature_prob=cfg.mask_feature_prob,
                     layerdrop=cfg.layerdrop, hidden_dropout=cfg.hidden_dropout)
    if cfg.pretrained and saved:  # as in build_lm: the architecture of the pretrained weights
        model = Wav2Vec2ForCTC(dataclasses.replace(Wav2Vec2Config(**saved.meta["model_config"]), **overrides))
    elif cfg.pretrained:
        model = Wav2Vec2ForCTC.from_pretrained(cfg.pretrained, vocab_size=len(vocab), **overrides)
    else:
        arch = {"tiny": "tiny", "base": "base", "xlsr53": "large"}[cfg.preset]
        model = Wav2Vec2ForCTC(dataclasses.replace(Wav2Vec2Config.preset(arch, vocab_size=len(vocab)), **overrides))
    if cfg.freeze_feature_encoder:
        model.freeze_feature_encoder()
    model.gradient_checkpointing = cfg.grad_checkpointing
    model.to(device)

    def iterate(batches, epoch):
        # The loader gets its own generator: creating an iterator otherwise draws a seed from the
        # global torch RNG, and a resumed run creates one more iterator than an uninterrupted one.
        loader = torch.utils.data.DataLoader(train, batch_sampler=batches, num_workers=cfg.num_workers,
                                             collate_fn=audio.collate, pin_memory=device.type == "cuda",
                                             generator=torch.Generator())
        for batch in loader:
            count = int(batch["label_lengths"].sum())
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items() if isinstance(v, torch.Tensor)}
            yield {**batch, "count": count}

    def ctc_sum(logits, frames, labels, label_lengths):
        # CTC in fp32: the log-probabilities of long alignments underflow in fp16. cuDNN's CTC kernel
        # is non-deterministic and restricted (labels <= 256, lengths on CPU), so it is switched off.
        log_probs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)  # (T, B, V)
        with torch.backends.cudnn.flags(enabled=False):
            return F.ctc_loss(log_probs, labels, frames, label_lengths, blank=0, reduction="sum", zero_infinity=True)

    def loss_sum(model, batch):
        logits, frames = model(batch["input_values"], batch["attention_mask"])  # (B, T, V), (B,)
        return ctc_sum(logits, frames, batch["labels"], batch["label_lengths"])

    # This rank's share of the validation clips, in batches of similar length (they pad less).
    by_length = sorted(range(len(val)), key=lambda i: val.lengths[i])[ranks.rank::ranks.world]
    references = [audio.normalize_text(item.sentence) for item in val.items]

    @torch.no_grad()
    def evaluate(model, keep_going):
        hypotheses, total, labels = {}, 0.0, 0
        for start in range(0, len(by_length), cfg.batch_size):
            if not keep_going():
                return None
            rows = by_length[start:start + cfg.batch_size]
            batch = audio.collate([val[i] for i in rows])
            logits, frames = model(batch["input_values"].to(device), batch["attention_mask"].to(device))
            total += ctc_sum(logits, frames, batch["labels"].to(device), batch["label_lengths"].to(device)).item()
            labels += int(batch["label_lengths"].sum())
            best_ids = logits.argmax(dim=-1).cpu()  # (B, T) greedy decoding
            for row, i in enumerate(rows):
                hypotheses[i] = vocab.decode_ctc(best_ids[row, : int(frames[row])].tolist())
        for i in sorted(hypotheses)[:2]:
            tqdm.write(f"  ref: {references[i]}\n  hyp: {hypotheses[i]}")
        refs, hyps = [references[i] for i in hypotheses], list(hypotheses.values())
        word_errors, words = audio.error_counts(refs, hyps, words=True)
        char_errors, chars = audio.error_counts(refs, hyps, words=False)
        return {"loss": total, "labels": labels, "word_errors": word_errors, "words": words,
                "char_errors": char_errors, "chars": chars}

    def summarize(sums):
        return {"val_loss": sums["loss"] / max(sums["labels"], 1),
                "wer": audio.error_rate(sums["word_errors"], sums["words"]),
                "cer": audio.error_rate(sums["char_errors"], sums["chars"])}

    return Task(
        model=model,
        sampler=EpochSampler(len(train), cfg.batch_size, cfg.seed, shuffle=True, lengths=train.lengths,
                             rank=ranks.rank, world_size=ranks.world),
        iterate=iterate, loss_sum=loss_sum, evaluate=evaluate, summarize=summarize,
        best_metric="wer", higher_is_better=False,
        meta={"vocab": vocab.to_dict()},
        fingerprint=xxhash.xxh3_64("\n".join(f"{u.id}\t{u.sentence}" for u in train.items).encode()).hexdigest(),
    )


def text_backbone(cfg):
    """(tokenizer, GPT) for `pretrained`: a Baton lm checkpoint, or a Hugging Face GPT-2 folder
    (GPT-2's weights only make sense with GPT-2's own tokens, so its BPE comes along)."""
    if os.path.isdir(cfg.pretrained):
        tokenizer = text_data.make_tokenizer("gpt2", folder=cfg.pretrained)
        return tokenizer, GPT.from_pretrained(cfg.pretrained, dropout=cfg.dropout, block_size=cfg.block_size)
    lm = ckpt.load(cfg.pretrained)
    if lm.meta.get("task") != "lm":
        raise ConfigError(f"pretrained={cfg.pretrained} is a {lm.meta.get('task')!r} checkpoint; the text backbone "
                          f"needs an lm checkpoint or a GPT-2 folder")
    gpt_cfg = dataclasses.replace(GPTConfig(**lm.meta["model_config"]), dropout=cfg.dropout)
    if cfg.block_size > gpt_cfg.block_size:
        raise ConfigError(f"block_size {cfg.block_size} exceeds the lm checkpoint's {gpt_cfg.block_size}")
    gpt = GPT(gpt_cfg)
    gpt.load_state_dict(lm.state["model"])
    return text_data.tokenizer_from_dict(lm.meta["task_meta"]["tokenizer"]), gpt


def build_reg(cfg, device, ranks, saved=None):
    numeric_columns = [c.strip() for c in cfg.numeric_columns.split(",") if c.strip()]
    data = cfg.data or table_data.DEFAULT_TRAIN
    table = table_data.read_table(data, cfg.id_column, cfg.text_column, numeric_columns, cfg.target_column)
    held = held_out(table.ids, cfg.val_fraction)
    train_rows, val_rows = np.flatnonzero(~held), np.flatnonzero(held)
    if len(train_rows) == 0 or len(val_rows) == 0:
        raise DataError(f"{data} gives {len(train_rows)} training and {len(val_rows)} validation rows; both are needed")
    print(f"data: {table.report}; {len(train_rows):,} train / {len(val_rows):,} validation rows")

    gpt, text_cfg = None, None
    if saved:  # the checkpoint's tokenizer and feature statistics, so inputs keep their meaning
        meta = saved.meta["task_meta"]
        tokenizer = text_data.tokenizer_from_dict(meta["tokenizer"]) if meta["tokenizer"] else None
        standardize = table_data.Standardizer.from_dict(meta["standardizer"]) if meta["standardizer"] else None
        if cfg.text_column and cfg.pretrained:  # as in build_lm: the architecture of the pretrained weights
            text_cfg = {**saved.meta["model_config"]["text"], "dropout": cfg.dropout}
    else:
        tokenizer = None
        if cfg.text_column and cfg.pretrained:
            tokenizer, gpt = text_backbone(cfg)
            text_cfg = dataclasses.asdict(gpt.config)
        elif cfg.text_column:
            tokenizer = text_data.make_tokenizer(cfg.tokenizer, "".join(table.texts[i] for i in train_rows))
        # Statistics of the training rows only: validation must look like unseen data.
        standardize = table_data.Standardizer.fit(table.numeric[train_rows]) if numeric_columns else None
    if tokenizer is not None and text_cfg is None:
        text_cfg = dataclasses.asdict(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=cfg.block_size,
                                                n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd,
                                                dropout=cfg.dropout))
    model_cfg = RegressorConfig(text=text_cfg, n_numeric=len(numeric_columns), hidden=cfg.hidden,
                                dropout=cfg.dropout, pooling=cfg.pooling)
    model = Regressor(model_cfg)
    if gpt is not None:
        model.backbone.load_state_dict(gpt.state_dict())
    if not saved:
        # Start at the mean log-target, so the head learns deviations instead of first finding the scale.
        with torch.no_grad():
            model.head[-1].bias.fill_(float(table_data.encode_target(table.target[train_rows]).mean()))
    if model.backbone is not None:
        model.backbone.gradient_checkpointing = cfg.grad_checkpointing
    model.to(device)

    # Everything the model reads, as tensors, once: a batch is then a gather.
    if tokenizer is not None:
        tokens, lengths = table_data.tokenize_rows(table.texts, tokenizer, cfg.block_size)
    else:
        tokens, lengths = torch.zeros(len(table.ids), 1, dtype=torch.long), torch.ones(len(table.ids), dtype=torch.long)
    numeric = torch.from_numpy(standardize(table.numeric)) if standardize else None
    log_target = table_data.encode_target(table.target)
    lo, hi = float(table.target[train_rows].min()), float(table.target[train_rows].max())

    def batch_of(rows):
        rows = torch.as_tensor(rows, dtype=torch.long)
        width = int(lengths[rows].max())  # pad only to the longest row of this batch
        batch = {"tokens": tokens[rows, :width], "lengths": lengths[rows], "y": log_target[rows]}
        if numeric is not None:
            batch["numeric"] = numeric[rows]
        return {k: v.to(device, non_blocking=True) for k, v in batch.items()}

    def forward(model, batch):
        return model(batch["tokens"] if tokenizer else None, batch["lengths"], batch.get("numeric"))  # (B,)

    def loss_sum(model, batch):
        out = forward(model, batch).float()
        if cfg.loss == "l1":  # |error| in log space = relative error, the quantity SMAPE scores
            return (out - batch["y"]).abs().sum()
        if cfg.loss == "mse":
            return (out - batch["y"]).pow(2).sum()
        predicted, actual = torch.expm1(out.clamp(max=30.0)), torch.expm1(batch["y"])  # smooth SMAPE
        return (2 * (predicted - actual).abs() / (predicted.abs() + actual.abs() + 1e-6)).sum()

    def iterate(batches, epoch):
        for indices in batches:
            yield {**batch_of(train_rows[indices]), "count": len(indices)}

    my_val_rows = val_rows[ranks.rank::ranks.world]

    @torch.no_grad()
    def evaluate(model, keep_going):
        predictions, losses = [torch.zeros(0, dtype=torch.float64)], 0.0
        for start in range(0, len(my_val_rows), cfg.batch_size):
            if not keep_going():
                return None
            batch = batch_of(my_val_rows[start:start + cfg.batch_size])
            losses += loss_sum(model, batch).item()
            predictions.append(table_data.decode_target(forward(model, batch), lo, hi).cpu())
        predicted, actual, n = torch.cat(predictions).numpy(), table.target[my_val_rows], len(my_val_rows)
        return {"loss": losses, "rows": n, "smape": table_data.smape(predicted, actual) * n if n else 0.0,
                "abs_error": table_data.mae(predicted, actual) * n if n else 0.0}

    def summarize(sums):
        return {"val_loss": sums["loss"] / sums["rows"], "smape": sums["smape"] / sums["rows"],
                "mae": sums["abs_error"] / sums["rows"]}

    baseline = table_data.smape(np.full(len(val_rows), np.median(table.target[train_rows])), table.target[val_rows])
    print(f"reference: predicting the training median scores SMAPE {baseline:.1f} on validation")
    return Task(
        model=model,
        sampler=EpochSampler(len(train_rows), cfg.batch_size, cfg.seed, shuffle=True, rank=ranks.rank,
                             world_size=ranks.world),
        iterate=iterate, loss_sum=loss_sum, evaluate=evaluate, summarize=summarize,
        best_metric="smape", higher_is_better=False,
        meta={"tokenizer": tokenizer.to_dict() if tokenizer else None,
              "standardizer": standardize.to_dict() if standardize else None,
              "columns": {"id": cfg.id_column, "text": cfg.text_column, "numeric": numeric_columns,
                          "target": cfg.target_column},
              "block_size": cfg.block_size, "target_range": [lo, hi]},
        fingerprint=xxhash.xxh3_64(log_target.numpy().tobytes() + "".join(table.ids).encode()).hexdigest(),
    )


BUILDERS = {"lm": build_lm, "asr": build_asr, "reg": build_reg}


# -----------------------------------------------------------------------------
# Learning-rate plan: a pure function of the global step, so resuming needs no scheduler state

def planned_steps(cfg, steps_per_epoch):
    return (cfg.epochs + cfg.phase2_epochs) * steps_per_epoch


def learning_rate(step, cfg, steps_per_epoch):
    """LR for optimizer step `step` (0-based): linear warm-up, cosine decay to lr * min_lr_ratio over
    phase 1 (all parts together), then phase 2 at a fixed phase2_lr."""
    phase1 = cfg.epochs * steps_per_epoch
    if step >= phase1:
        return cfg.phase2_lr
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, phase1 - cfg.warmup_steps)
    min_lr = cfg.lr * cfg.min_lr_ratio
    return min_lr + 0.5 * (cfg.lr - min_lr) * (1.0 + math.cos(math.pi * progress))


# -----------------------------------------------------------------------------
# Time budget

def process_start_time():
    """Wall-clock time this process started (Linux /proc), so the budget counts the imports too."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        started = time.time() - (uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
        return min(started, IMPORT_TIME)
    except (OSError, ValueError, IndexError):
        return IMPORT_TIME


class TimeBudget:
    """Decides when to stop so the final save completes before the deadline.

    It learns the durations it must leave room for as they happen: the slowest recent step, the
    slowest save so far (first estimated by timing a real write of the same size), and evaluation.
    """

    def __init__(self, hours, started):
        self.seconds = None if hours is None else hours * 3600.0
        self.deadline = None if hours is None else time.monotonic() - (time.time() - started) + self.seconds
        # Room for what cannot be measured in advance (printing, process exit, a stray slow step).
        self.margin = 0.0 if hours is None else min(60.0, max(2.0, 0.005 * self.seconds))
        self.first_step = None        # a process's first step pays one-off warm-up costs
        self.recent_steps = deque(maxlen=20)
        self.save_seconds = 0.0       # the slowest save so far (or the first estimate)
        self.eval_seconds = 0.0       # the slowest evaluation so far
        self.spent = {"steps": 0.0, "evaluation": 0.0, "saving": 0.0}  # where the wall time went
        self.first_step_at = None     # seconds from process start to the first step

    def left(self):
        return math.inf if self.deadline is None else self.deadline - time.monotonic()

    def observe_step(self, seconds):
        self.spent["steps"] += seconds
        if self.first_step is None:
            self.first_step = seconds
        else:
            self.recent_steps.append(seconds)

    def observe_save(self, seconds):
        self.spent["saving"] += seconds
        self.save_seconds = max(self.save_seconds, seconds)

    def observe_eval(self, seconds):
        self.spent["evaluation"] += seconds
        self.eval_seconds = max(self.eval_seconds, seconds)

    def step_estimate(self):
        return 1.25 * max(self.recent_steps, default=self.first_step or 0.0)

    def room_for_step(self):
        return self.left() > self.step_estimate() + 1.5 * self.save_seconds + self.margin

    def room_for_eval(self):
        return self.left() > self.eval_seconds + self.step_estimate() + 1.5 * self.save_seconds + self.margin

    def can_continue_eval(self):
        return self.left() > 1.5 * self.save_seconds + self.margin

    def summary(self, elapsed):
        """Where the part's wall time went, and how early the hand-off landed before the deadline."""
        parts = ", ".join(f"{name} {seconds:.1f} s ({seconds / elapsed:.1%})" for name, seconds in self.spent.items())
        line = (f"time: {elapsed:.1f} s wall; start-up until the first step {self.first_step_at or elapsed:.1f} s; "
                f"{parts}")
        if self.deadline is not None:
            line += f"; hand-off written {self.left():.1f} s before the deadline"
        return line


def estimate_save_seconds(folder, nbytes):
    """Time one real write of `nbytes` (capped at 64 MB) through the checkpoint writer."""
    probe = min(nbytes, 64 << 20)
    path = os.path.join(folder, ".write_probe.safetensors")
    t0 = time.monotonic()
    ckpt.write_file(path, {"probe": torch.zeros(probe // 4, dtype=torch.float32)}, {"kind": "probe"})
    seconds = time.monotonic() - t0
    os.remove(path)
    return seconds * nbytes / max(probe, 1) + 0.05


def format_seconds(s):
    if s == math.inf:
        return "inf"
    s = max(0, int(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


# -----------------------------------------------------------------------------
# Checkpoint state: everything the next part needs to continue exactly

def make_optimizer(model, cfg, device):
    # Weight decay on matrices only: decaying biases and norm gains just fights the data.
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel does the whole update in one launch on CUDA; on CPU foreach is the default.
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, cfg.beta2), fused=device.type == "cuda")


def new_history():
    # The seeds' training_metrics.json shape: parallel lists, None where a value was not measured.
    return {"steps": [], "epochs": [], "learning_rate": [], "train_loss": [], "val_loss": [], "parts": []}


def record(history, **row):
    """Add one row to the parallel lists of `history` (the values of a step share a row); a new
    metric gets None for earlier rows."""
    n = len(history["steps"])
    for key in row:
        history.setdefault(key, [None] * n)
    if n and history["steps"][-1] == row["steps"]:
        for key, value in row.items():
            if value is not None:
                history[key][-1] = value
        return
    for key, values in history.items():
        if key != "parts":
            values.append(row.get(key))


def check_task(saved, args):
    """A checkpoint of another task is refused before anything is built from it."""
    if saved is not None and saved.meta.get("task") not in (None, args.task):
        raise ConfigError(f"{saved.path} was trained for task {saved.meta['task']!r}, not {args.task!r}; "
                          f"pass --task {saved.meta['task']} or another checkpoint")


def check_compatible(saved, args, model):
    """Refuse a checkpoint that cannot continue this run: another model shape."""
    ours = model.state_dict()
    theirs = saved.state["model"]
    missing, unexpected = sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours))
    wrong = [f"{k} {tuple(theirs[k].shape)} vs {tuple(ours[k].shape)}"
             for k in sorted(set(ours) & set(theirs)) if theirs[k].shape != ours[k].shape]
    if missing or unexpected or wrong:
        details = "; ".join(x for x in (
            f"missing {', '.join(missing[:4])}" if missing else "",
            f"unexpected {', '.join(unexpected[:4])}" if unexpected else "",
            f"shapes {', '.join(wrong[:4])}" if wrong else "") if x)
        raise ConfigError(f"{saved.path} holds a different model than this config builds ({details}); "
                          f"a resumed run cannot change the model's shape")


def input_roots(args):
    return [args.out] + [r for r in os.environ.get("BATON_INPUT_ROOTS", "/kaggle/input").split(os.pathsep) if r]


def find_resume(args):
    """(checkpoint to continue from or None, everything found) by the --resume rule. With 'auto'
    it prints every checkpoint under --out and the input roots, and which one is used and why."""
    if args.resume == "none":
        print("--resume none: starting fresh")
        return None, []
    if args.resume != "auto":
        return ckpt.load_any(args.resume), []
    roots = input_roots(args)
    found = ckpt.scan(roots)
    saved, _ = ckpt.newest_valid(found, task=args.task)
    print_discovery(found, saved, roots, args.task)
    return saved, found


def print_discovery(found, saved, roots, task):
    listed = [f for f in found if f.kind != "other"]
    if not listed:
        print(f"no checkpoints under {', '.join(roots)}; starting fresh")
        return
    print(f"checkpoints under {', '.join(roots)} (highest global step first):")
    print(f"  {'part':>4} {'epoch':>5} {'step':>6} {'global':>7} {'size':>9}  status / path")
    for f in sorted(listed, key=lambda f: f.global_step, reverse=True):
        if saved is not None and f.path == saved.path:
            status = "USING: the highest global step that verifies"
        elif f.problem:
            status = f"broken, skipped: {f.problem}"
        elif f.kind == "legacy":
            status = "legacy .pt/.pth: not read automatically; import with --resume PATH"
        elif f.task != task:
            status = f"task {f.task}, not {task}"
        elif f.kind == "weights":
            status = "weights only (best model): not a training state"
        elif saved is not None and f.global_step > saved.meta["global_step"]:
            status = "broken, skipped"
        else:
            status = "ok (header read; older)"
        cells = [f.part, f.epoch, f.step_in_epoch, f.global_step if f.global_step >= 0 else None]
        print("  " + " ".join(f"{'-' if c is None else c:>{w}}" for c, w in zip(cells, (4, 5, 6, 7)))
              + f" {ckpt.file_size_text(f.size):>9}  {status}\n{'':36s}{f.path}")
    if saved is None:
        print(f"no valid checkpoint of task {task!r} among them; starting fresh")


def resolve_part(args, saved, found):
    """The part number: 'auto' = one more than the resumed checkpoint's part. Part N continues from
    part N-1, so with --resume auto a checkpoint of part N-1 or later must be in reach."""
    if args.part == "auto":
        part = (saved.meta.get("part") or 0) + 1 if saved is not None and saved.meta.get("kind") == "train" else 1
        print(f"--part auto: this is part {part}")
        return part
    previous = args.part - 1
    if args.resume == "auto" and previous >= 1 and (saved is None or (saved.meta.get("part") or 0) < previous):
        usable = [f for f in found if f.kind == "train" and f.task == args.task and not f.problem]
        have = "; ".join(f"part {f.part} at global step {f.global_step} in {f.path}" for f in usable[:5]) or "nothing usable"
        raise ConfigError(
            f"part {args.part} continues from part {previous}, but no checkpoint of part {previous} or later is in "
            f"reach (found: {have}); attach checkpoint_part{previous}.safetensors (on Kaggle: Add Data, then the "
            f"previous session's output), or use --part auto to continue from what was found, or --resume none to "
            f"start over")
    return args.part


def make_room(folder, need, keep_last):
    """Make sure `need` bytes fit in `folder` with room to spare, pruning old rolling checkpoints early
    if that helps; the newest checkpoint is never removed before a new one exists. Raises a
    CheckpointError that says why, with every existing checkpoint kept, when they still do not fit."""
    spare = int(need * 1.05) + (32 << 20)
    if shutil.disk_usage(folder).free >= spare:
        return
    removed = ckpt.prune(folder, max(keep_last - 1, 1))
    if removed:
        tqdm.write(f"low disk space: pruned {', '.join(removed)} before saving")
    free = shutil.disk_usage(folder).free
    if free < spare:
        raise ckpt.CheckpointError(f"not enough disk space in {folder} for a {ckpt.file_size_text(need)} checkpoint "
                                   f"({ckpt.file_size_text(free)} free after pruning); every existing checkpoint "
                                   f"was kept")


def write_plots(out, history):
    """training_curve.png (losses over steps, the learning rate below on a log scale, parts marked)
    and loss_by_epoch.png (mean training loss per epoch), rewritten atomically at every save."""
    try:
        import matplotlib
        matplotlib.use("Agg")  # files only: no display on Kaggle or a server
        import matplotlib.pyplot as plt
    except ImportError:
        if not getattr(write_plots, "warned", False):
            print("matplotlib is not installed: skipping training_curve.png and loss_by_epoch.png")
            write_plots.warned = True
        return

    def series(key):
        points = [(s, v) for s, v in zip(history["steps"], history.get(key, [])) if v is not None]
        return [p[0] for p in points], [p[1] for p in points]

    def save_figure(fig, name):
        tmp = ckpt.temp_path(os.path.join(out, name), ".png")  # savefig picks the format from the suffix
        fig.savefig(tmp, dpi=100)
        plt.close(fig)
        os.replace(tmp, os.path.join(out, name))

    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(9, 6), gridspec_kw={"height_ratios": [2, 1]})
    top.plot(*series("train_loss"), color="tab:blue", lw=1, label="training loss")
    top.plot(*series("val_loss"), color="tab:red", marker="o", ms=3, label="validation loss")
    top.set_ylabel("loss")
    top.legend()
    steps, rates = series("learning_rate")
    bottom.plot(steps, rates, color="tab:green", lw=1)
    if len(set(rates)) > 1:  # a constant rate (one logged point, say) has no range to draw on a log scale
        bottom.set_yscale("log")
    bottom.set_ylabel("learning rate")
    bottom.set_xlabel("global step")
    for part in history["parts"][1:]:
        for ax in (top, bottom):
            ax.axvline(part["start_step"], color="gray", ls="--", lw=0.8)
        top.annotate(f"part {part['part']}", (part["start_step"], 1), xycoords=("data", "axes fraction"),
                     xytext=(3, -12), textcoords="offset points", fontsize=8, color="gray")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    save_figure(fig, "training_curve.png")

    by_epoch = {}
    for epoch, loss in zip(history["epochs"], history["train_loss"]):
        if loss is not None:
            by_epoch.setdefault(epoch, []).append(loss)
    fig, ax = plt.subplots(figsize=(7, 4))
    epochs = sorted(by_epoch)
    ax.plot([e + 1 for e in epochs], [sum(by_epoch[e]) / len(by_epoch[e]) for e in epochs], marker="o")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean training loss")
    ax.grid(alpha=0.3)
    save_figure(fig, "loss_by_epoch.png")


def write_metrics(out, history):
    ckpt.write_text_atomic(os.path.join(out, "metrics.json"), json.dumps(history, indent=1))


# -----------------------------------------------------------------------------
# Several processes: torchrun and DistributedDataParallel

@dataclasses.dataclass
class Ranks:
    """This process among torchrun's workers (rank 0 of 1 without torchrun)."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = None  # where collectives exchange tensors: the GPU for NCCL, else CPU

    @property
    def main(self):
        return self.rank == 0


def start_processes(device_type):
    """Join the process group torchrun describes in the environment: NCCL between GPUs (one per
    process), gloo between CPU processes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks(device=torch.device("cpu"))
    ranks = Ranks(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device_type == "cuda":
        torch.cuda.set_device(ranks.local_rank % torch.cuda.device_count())
        ranks.device = torch.device("cuda", torch.cuda.current_device())
    else:
        ranks.device = torch.device("cpu")
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return ranks


def agree(ranks, *flags):
    """Each flag made true on every rank if it is true on any (one small all-reduce). Decisions
    that end a loop or start a collective (stop, evaluate, save) are agreed this way, so no rank
    waits in a collective for one that went elsewhere."""
    if ranks.world == 1:
        return flags if len(flags) > 1 else flags[0]
    t = torch.tensor([float(bool(f)) for f in flags], device=ranks.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    out = tuple(bool(v) for v in t.tolist())
    return out if len(out) > 1 else out[0]


def from_rank0(ranks, obj):
    """Rank 0's value of a picklable object, on every rank."""
    if ranks.world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(ranks, obj):
    """Every rank's value of a picklable object, as a list in rank order."""
    if ranks.world == 1:
        return [obj]
    out = [None] * ranks.world
    dist.all_gather_object(out, obj)
    return out


def all_sum(ranks, *values):
    if ranks.world == 1:
        return values if len(values) > 1 else values[0]
    t = torch.tensor(values, dtype=torch.float64, device=ranks.device)
    dist.all_reduce(t)
    return tuple(t.tolist()) if len(values) > 1 else t.item()


# -----------------------------------------------------------------------------
# main

def main(argv=None, started=None):
    """Run one part; returns the exit code. `started` (a time.time()) defaults to process start."""
    started = process_start_time() if started is None else started
    args = parse_args(argv)
    try:
        return run(args, started)
    except (ConfigError, DataError, ckpt.CheckpointError) as e:
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun every rank raises it: say it once
            print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def choose_device(args):
    """Device and precision, decided once: bf16 only where the GPU does it natively (compute
    capability 8.0+); T4/P100 get fp16 with a GradScaler; CPU runs in fp32 unless asked."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is visible")
    if (args.device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cpu":
        return torch.device("cpu"), args.amp or "off"
    device = torch.device("cuda", torch.cuda.current_device())  # start_processes picked this rank's GPU
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return device, args.amp or ("bf16" if torch.cuda.get_device_capability(device) >= (8, 0) else "fp16")


def resolve_config(args, saved):
    """Defaults + --set for a fresh run; the checkpoint's config + --set when resuming, printing
    every field that changed, because the run then differs from an uninterrupted one."""
    cfg_cls = CONFIGS[args.task]
    cli = list(args.settings) + ([f"data={args.data}"] if args.data is not None else []) + \
        ([f"seed={args.seed}"] if args.seed is not None else [])
    if saved is None or saved.meta.get("kind") != "train" or not isinstance(saved.meta.get("config"), dict):
        return apply_settings(cfg_cls(), cli)
    old = config_from_dict(cfg_cls, saved.meta["config"])
    cfg = apply_settings(old, cli)
    for name, before, after in config_changes(old, cfg):
        print(f"warning: {name} changed from {before!r} to {after!r} on resume; the run will not be "
              f"identical to an uninterrupted one")
    return cfg


def restore(saved, args, task, optimizer, scaler, steps_per_epoch, ranks, cfg):
    """Load a checkpoint into model/optimizer/scaler/RNG; returns (progress, best, history)."""
    progress = {"epoch": 0, "batch_in_epoch": 0, "step_in_epoch": 0, "global_step": 0}
    best = {"metric": task.best_metric, "value": None, "step": None}
    if saved is None:
        return progress, best, new_history()
    check_compatible(saved, args, task.model)
    task.model.load_state_dict(saved.state["model"])
    if saved.meta.get("kind") != "train":  # weights-only or legacy: what the file has, and a note of the rest
        carried, lost = ["model weights"], ["RNG state (not in the file)"]
        if saved.state.get("optimizer"):
            try:
                optimizer.load_state_dict(saved.state["optimizer"])
                carried.append("optimizer moments")
            except (ValueError, KeyError) as e:
                lost.append(f"optimizer state (it does not fit this model: {e})")
        if saved.state.get("scheduler"):
            lost.append("scheduler state (Baton's learning rate is a function of the global step)")
        # The global step is the one unambiguous counter (files disagree on whether `epoch` counts from
        # 0 or 1, and whether `step` counts batches or optimizer steps): the position follows from it.
        step = int(saved.meta.get("global_step") or 0)
        progress.update(global_step=step, epoch=step // steps_per_epoch, step_in_epoch=step % steps_per_epoch,
                        batch_in_epoch=(step % steps_per_epoch) * cfg.grad_accum)
        if step:
            lost.append(f"the file's data order (continuing in Baton's order at epoch {progress['epoch']}, "
                        f"step {progress['step_in_epoch']}; the file said epoch {saved.meta.get('epoch')}, "
                        f"step {saved.meta.get('step_in_epoch')})")
        print(f"initialised from {saved.path} at global step {step}: carried {', '.join(carried)}; "
              f"not carried: {'; '.join(lost)}")
        return progress, best, new_history()
    try:
        optimizer.load_state_dict(saved.state["optimizer"])
    except ValueError as e:
        raise ConfigError(f"the optimizer state in {saved.path} does not fit this run's trainable parameters ({e}); "
                          f"was freeze_feature_encoder changed?") from None
    if saved.state.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(saved.state["scaler"])
    if saved.meta.get("data_fingerprint") != task.fingerprint:
        print("warning: the training data differs from the checkpoint's; the data order will differ")
    progress = dict(saved.state["progress"])
    # Every rank's RNG is in the file (one state per rank); restored last, after everything that
    # draws random numbers has been built.
    states = saved.state["rng"] if isinstance(saved.state["rng"], list) else [saved.state["rng"]]
    if ranks.rank < len(states):
        ckpt.restore_rng(states[ranks.rank])
    else:
        random_seed_everything(cfg.seed + 1000 * ranks.rank + progress["global_step"])
    saved_world = saved.meta.get("world_size", 1)
    if saved_world != ranks.world:
        # Batches are dealt to ranks in turn, so batch b of each of W ranks is global batch b * W:
        # continue from the same global sample position.
        progress["batch_in_epoch"] = progress["batch_in_epoch"] * saved_world // ranks.world
        progress["step_in_epoch"] = progress["batch_in_epoch"] // cfg.grad_accum
        print(f"warning: {saved.path} was written by {saved_world} process(es) and this run has {ranks.world}: "
              f"training continues from the same sample position (epoch {progress['epoch']}, about "
              f"{progress['batch_in_epoch'] * ranks.world * cfg.batch_size} samples in), but the data order, the "
              f"learning-rate plan and the random streams differ from an uninterrupted run")
    print(f"resumed from {saved.path}: epoch {progress['epoch']}, step {progress['step_in_epoch']} "
          f"in epoch, global step {progress['global_step']}")
    return progress, dict(saved.state["best"]), saved.state["history"]


def choose_checkpoint(args, ranks):
    """(checkpoint or None, part number): rank 0 looks and decides, every rank loads what it chose,
    and a file that fails on any rank fails on all (no rank is left waiting for another)."""
    choice = None
    if ranks.main:
        try:
            saved, found = find_resume(args)
            check_task(saved, args)
            choice = ("ok", saved.path if saved else None, resolve_part(args, saved, found))
        except (ConfigError, DataError, ckpt.CheckpointError) as e:
            choice = ("error", str(e), None)
    choice = from_rank0(ranks, choice)
    if choice[0] == "error":
        raise ConfigError(choice[1])
    _, path, part = choice
    problem = None
    if not ranks.main and path is not None:
        try:
            saved = ckpt.load_any(path)
        except ckpt.CheckpointError as e:
            problem = str(e)
    elif not ranks.main:
        saved = None
    if agree(ranks, problem is not None):
        raise ConfigError(problem or f"another process could not read {path}")
    return saved, part


def run(args, started):
    budget = TimeBudget(args.budget_hours, started)
    ranks = start_processes(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if not ranks.main:  # one log: rank 0 speaks for all (errors still reach stderr)
        sys.stdout = open(os.devnull, "w")
    device, amp = choose_device(args)
    os.makedirs(args.out, exist_ok=True)
    if ranks.main:
        ckpt.remove_stale_temp_files(args.out)
    saved, args.part = choose_checkpoint(args, ranks)
    cfg = resolve_config(args, saved)
    print_config(cfg)

    # ---- task, model, optimizer, and the state they resume from
    random_seed_everything(cfg.seed)  # the same initial weights on every rank
    task = BUILDERS[args.task](cfg, device, ranks, saved if saved and saved.meta.get("kind") == "train" else None)
    model = task.model
    if ranks.world > 1:
        random_seed_everything(cfg.seed + 1000 * ranks.rank)  # but each rank its own dropout and masks
    # With LayerDrop, ranks skip different layers, so DDP must expect parameters without gradients.
    train_model = model if ranks.world == 1 else torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=getattr(model.config, "layerdrop", 0) > 0)
    if cfg.compile:
        # Only the training forward is compiled; checkpoints and evaluation use `model`, the plain
        # module, so weights are saved under their own names (not `_orig_mod.`).
        train_model = torch.compile(train_model)
    optimizer = make_optimizer(model, cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(amp)
    steps_per_epoch = math.ceil(len(task.sampler) / cfg.grad_accum)
    total_steps = planned_steps(cfg, steps_per_epoch)
    total_epochs = cfg.epochs + cfg.phase2_epochs
    n_params = sum(p.numel() for p in model.parameters())
    processes = f" x {ranks.world} processes" if ranks.world > 1 else ""
    print(f"model: {n_params / 1e6:.2f}M parameters on {device}{processes} (amp {amp}); "
          f"{steps_per_epoch} steps/epoch, {total_steps} planned steps")
    progress, best, history = restore(saved, args, task, optimizer, scaler, steps_per_epoch, ranks, cfg)
    history["parts"].append({"part": args.part, "start_step": progress["global_step"]})
    part_start_epoch = progress["epoch"]
    last_eval_step = None

    def state_and_meta(rng_states):
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                 "scheduler": {"kind": "warmup_cosine_then_phase2", "last_lr": optimizer.param_groups[0]["lr"]},
                 "rng": rng_states, "progress": dict(progress), "best": dict(best), "history": history,
                 "sampler": {"seed": cfg.seed, "epoch": progress["epoch"], "batch_in_epoch": progress["batch_in_epoch"],
                             "batches_per_epoch": len(task.sampler)}}
        meta = {"task": args.task, "kind": "train", "part": args.part, "epoch": progress["epoch"],
                "step_in_epoch": progress["step_in_epoch"], "global_step": progress["global_step"],
                "world_size": ranks.world, "config": dataclasses.asdict(cfg),
                "model_config": dataclasses.asdict(model.config), "task_meta": task.meta,
                "data_fingerprint": task.fingerprint}
        return state, meta

    def save(name, final=False):
        """Rank 0 writes one full checkpoint (with every rank's RNG), then latest.txt, pruning,
        metrics.json and the plots; the others wait for its outcome. Returns (path, bytes), or None
        when a periodic save found no room (the hand-off raises instead)."""
        t0 = time.monotonic()
        rng_states = gather(ranks, ckpt.capture_rng())
        outcome = None
        if ranks.main:
            state, meta = state_and_meta(rng_states)
            path = os.path.join(args.out, name)
            need = sum(t.numel() * t.element_size() for t in ckpt.flatten_state(state)[0].values())
            try:
                make_room(args.out, need, cfg.keep_last)
                outcome = ("ok", path, ckpt.write_file(path, state, meta))
            except ckpt.CheckpointError as e:
                outcome = ("error", str(e), 0)
            if outcome[0] == "ok":
                ckpt.write_text_atomic(os.path.join(args.out, ckpt.LATEST_NAME), name + "\n")
                ckpt.prune(args.out, cfg.keep_last)
                write_metrics(args.out, history)
                write_plots(args.out, history)
        outcome = from_rank0(ranks, outcome)  # also the barrier: nobody runs ahead of a save
        budget.observe_save(time.monotonic() - t0)
        if outcome[0] == "error":
            if final:
                raise ckpt.CheckpointError(outcome[1])
            tqdm.write(f"warning: {outcome[1]}; training goes on")
            return None
        return outcome[1], outcome[2]

    def save_best(metrics):
        if not ranks.main:
            return
        meta = {"task": args.task, "kind": "weights", "part": args.part, "epoch": progress["epoch"],
                "step_in_epoch": progress["step_in_epoch"], "global_step": progress["global_step"],
                "config": dataclasses.asdict(cfg), "model_config": dataclasses.asdict(model.config),
                "task_meta": task.meta, "metrics": metrics}
        try:
            state = {"model": model.state_dict()}
            make_room(args.out, sum(t.numel() * t.element_size() for t in ckpt.flatten_state(state)[0].values()),
                      cfg.keep_last)
            ckpt.write_file(os.path.join(args.out, ckpt.BEST_NAME), state, meta)
        except ckpt.CheckpointError as e:
            tqdm.write(f"warning: best model not saved: {e}")

    def run_eval():
        """Evaluate (each rank its share), track the best model; returns the metrics, or None if the
        budget cut it short on any rank."""
        nonlocal last_eval_step
        t0 = time.monotonic()
        model.eval()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
                torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            sums = task.evaluate(model, lambda: STOP["signal"] is None and budget.can_continue_eval())
        model.train()
        shares = gather(ranks, sums)
        budget.observe_eval(time.monotonic() - t0)
        if any(share is None for share in shares):
            return None
        metrics = task.summarize({key: sum(share[key] for share in shares) for key in shares[0]})
        last_eval_step = progress["global_step"]
        value = metrics[task.best_metric]
        better = best["value"] is None or (value > best["value"] if task.higher_is_better else value < best["value"])
        if better:
            best.update(value=value, step=progress["global_step"])
            save_best(metrics)
        return metrics

    if budget.deadline is not None:  # weights + AdamW's two moments dominate the file
        state_bytes = 3 * sum(t.numel() * t.element_size() for t in model.state_dict().values())
        budget.save_seconds = from_rank0(ranks, estimate_save_seconds(args.out, state_bytes) if ranks.main else None)

    if agree(ranks, not budget.room_for_step() and not STOP["signal"]):  # not even one step fits: nothing to save
        raise ConfigError(f"--budget-hours {args.budget_hours:g} is too small: start-up took {time.time() - started:.0f} s "
                          f"and the final save needs more than the {max(budget.left(), 0):.0f} s left; give the part more time")

    # ---------------------------------------------------------------- TRAINING SECTION BEGIN
    model.train()
    stop_reason = None
    last_save = time.monotonic()
    log_loss = torch.zeros((), device=device)  # summed on the device; .item() only when logging
    log_count = 0
    last_batch = None
    bar = tqdm(total=total_steps, initial=progress["global_step"], unit="step", dynamic_ncols=True,
               mininterval=1.0 if sys.stderr.isatty() else 30.0, file=sys.stderr, disable=not ranks.main)
    while stop_reason is None:
        if progress["epoch"] >= total_epochs:
            stop_reason = "finished"
            break
        epoch = progress["epoch"]
        batches = task.sampler.batches(epoch)  # O(epoch size) to build, O(1) to jump into
        stream = task.iterate(batches[progress["batch_in_epoch"]:], epoch)
        while progress["batch_in_epoch"] < len(batches):
            # -- decisions at the step boundary: the only place a part may stop (agreed by all ranks)
            signalled, out_of_time = agree(ranks, STOP["signal"], not budget.room_for_step())
            if signalled:
                stop_reason = f"signal {STOP['signal'] or 'on another process'}"
            elif args.max_steps is not None and progress["global_step"] >= args.max_steps:
                stop_reason = f"max steps {args.max_steps}"
            elif cfg.part_epochs and progress["epoch"] - part_start_epoch >= cfg.part_epochs:
                stop_reason = f"part_epochs {cfg.part_epochs}"
            elif out_of_time:
                stop_reason = "time budget"
            if stop_reason:
                break

            # -- one optimizer step over an accumulation window of micro-batches
            t0 = time.monotonic()
            if budget.first_step_at is None:
                budget.first_step_at = time.time() - started
            step = progress["global_step"]
            lr = learning_rate(step, cfg, steps_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            window = [next(stream) for _ in range(min(cfg.grad_accum, len(batches) - progress["batch_in_epoch"]))]
            # Normalise by the units (tokens, labels, rows) of the whole window, not per micro-batch,
            # so a short final window or uneven batches weigh each unit the same. DDP averages the
            # ranks' gradients, so dividing by the mean count over ranks weighs every unit of every
            # rank the same too.
            window_count = sum(b["count"] for b in window)
            local_count = window_count
            if ranks.world > 1:
                window_count = all_sum(ranks, window_count) / ranks.world
            for i, batch in enumerate(window):
                weight = 1.0
                if batch["count"] == 0:  # every clip of this micro-batch was unreadable
                    if ranks.world == 1 or last_batch is None:
                        continue
                    batch, weight = last_batch, 0.0  # keep in step with the other ranks' gradient exchange
                last_batch = batch
                # Gradients are exchanged between ranks once per step, after the last micro-batch.
                exchange = ranks.world == 1 or i == len(window) - 1
                with contextlib.nullcontext() if exchange else train_model.no_sync():
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                        loss_sum = task.loss_sum(train_model, batch) * weight
                    scaler.scale(loss_sum / window_count).backward()
                log_loss += loss_sum.detach()
            log_count += local_count
            if cfg.grad_clip > 0:
                scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)

            progress["global_step"] += 1
            progress["step_in_epoch"] += 1
            progress["batch_in_epoch"] += len(window)
            if progress["batch_in_epoch"] >= len(batches):  # epoch done: the position moves to the next one
                progress.update(epoch=epoch + 1, batch_in_epoch=0, step_in_epoch=0)
            budget.observe_step(time.monotonic() - t0)
            bar.update(1)

            # -- logging, evaluation, periodic saves
            step = progress["global_step"]
            if step % cfg.log_every_steps == 0:
                loss_total, count_total = all_sum(ranks, log_loss.item(), log_count) if ranks.world > 1 \
                    else (log_loss.item(), log_count)
                train_loss = loss_total / count_total
                log_loss.zero_()
                log_count = 0
                record(history, steps=step, epochs=epoch, learning_rate=lr, train_loss=train_loss)
                bar.set_postfix(loss=f"{train_loss:.4f}", lr=f"{lr:.2e}", step=step,
                                left=format_seconds(budget.left()), refresh=False)
            epoch_done = progress["epoch"] != epoch
            if (cfg.eval_every_steps and step % cfg.eval_every_steps == 0) or (not cfg.eval_every_steps and epoch_done):
                if not agree(ranks, not budget.room_for_eval()):
                    metrics = run_eval()
                    if metrics is not None:
                        record(history, steps=step, epochs=epoch, learning_rate=lr, **metrics)
                        if ranks.main:
                            write_metrics(args.out, history)
                        tqdm.write(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
            minutes = (time.monotonic() - last_save) / 60
            due = cfg.save_every_steps and step % cfg.save_every_steps == 0
            if due or agree(ranks, cfg.save_every_minutes and minutes >= cfg.save_every_minutes):
                save(ckpt.rolling_name(progress["epoch"], progress["step_in_epoch"], step))
                last_save = time.monotonic()
            if epoch_done:
                break
    bar.close()
    # ---------------------------------------------------------------- TRAINING SECTION END

    if stop_reason == "finished" and last_eval_step != progress["global_step"] and \
            not agree(ranks, not budget.room_for_eval()):
        metrics = run_eval()  # the finished model's score, unless it was just evaluated
        if metrics is not None:
            record(history, steps=progress["global_step"], epochs=progress["epoch"] - 1,
                   learning_rate=optimizer.param_groups[0]["lr"], **metrics)
    path, nbytes = save(ckpt.handoff_name(args.part), final=True)
    elapsed = time.time() - started
    print(f"\nstopped: {stop_reason} at global step {progress['global_step']} "
          f"(epoch {progress['epoch']}/{total_epochs}) after {format_seconds(elapsed)}")
    print(budget.summary(elapsed))
    if best["value"] is not None:
        print(f"best {best['metric']} {best['value']:.4f} at step {best['step']}: {os.path.join(args.out, ckpt.BEST_NAME)}")
    print(f"baton: {path} ({ckpt.file_size_text(nbytes)})")
    out_flag = "" if args.out == os.path.join(".", "runs", args.task) else f" --out {args.out}"
    launcher = COMMANDS["train"] if ranks.world == 1 else \
        COMMANDS["train"].replace("python ", f"torchrun --nproc_per_node {ranks.world} ", 1)
    if stop_reason == "finished":
        print(f"training is complete. Predict with:\n  {COMMANDS['infer']} --task {args.task} --ckpt {args.out}")
    else:
        hours = f" --budget-hours {args.budget_hours:g}" if args.budget_hours else ""
        print(f"next: {launcher} --task {args.task} --part {args.part + 1}{hours}{out_flag}")
    if args.kaggle:
        print(f"Kaggle: /kaggle/working disappears with this session. Keep the baton: Save Version, then in the "
              f"next session Add Data > Notebook Output > this notebook (Baton searches /kaggle/input), "
              f"or download {path} and upload it as a dataset.")
    return 0


def random_seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


if __name__ == "__main__":
    code = main()
    # The baton is fsynced; Python's teardown of torch would only add ~1 s past the budget.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
