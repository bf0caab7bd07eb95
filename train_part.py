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
import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import typing  # noqa: E402
from collections import deque  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import xxhash  # noqa: E402
from tqdm import tqdm  # noqa: E402

import ckpt  # noqa: E402
from data import DataError  # noqa: E402
from data import text as text_data  # noqa: E402
from data.sampler import EpochSampler  # noqa: E402
from model.gpt import GPT, GPTConfig  # noqa: E402

TASKS = ("lm",)
ON_KAGGLE = "KAGGLE_KERNEL_RUN_TYPE" in os.environ


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
    eval_every_steps: int = 200     # validation every N optimizer steps; 0 = at each epoch end
    log_every_steps: int = 10       # training loss / LR into metrics.json every N steps
    save_every_steps: int = 500     # rolling checkpoint every N steps; 0 = off
    save_every_minutes: float = 30  # ... and at least every N minutes; 0 = off
    keep_last: int = 3              # rolling checkpoints kept (hand-offs and best are never pruned)
    grad_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% slower

    def __post_init__(self):
        for name in ("epochs", "batch_size", "grad_accum", "log_every_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1 (got {getattr(self, name)})")
        for name in ("warmup_steps", "eval_every_steps", "save_every_steps", "keep_last", "phase2_epochs"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be 0 or more (got {getattr(self, name)})")
        if not self.lr > 0 or not self.phase2_lr > 0:
            raise ConfigError("lr and phase2_lr must be positive")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError("min_lr_ratio must be between 0 and 1")


@dataclasses.dataclass
class LMConfig(TrainConfig):
    """The lm task: a GPT on plain text, next-token prediction."""
    tokenizer: str = "byte"         # "byte" (UTF-8 bytes, vocab 256) or "char" (vocab from the text)
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
        if self.tokenizer not in ("byte", "char"):
            raise ConfigError(f"tokenizer must be 'byte' or 'char' (got {self.tokenizer!r})")
        if not 0 < self.val_fraction < 0.5:
            raise ConfigError("val_fraction must be between 0 and 0.5")
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")


CONFIGS = {"lm": LMConfig}


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

def parse_args(argv):
    p = argparse.ArgumentParser(description="Train one part of a Baton run.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--task", required=True, choices=TASKS, help="which model family to train")
    p.add_argument("--part", type=int, default=1, help="session number; names the hand-off file")
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
    if args.part < 1:
        p.error("--part must be 1 or more")
    if args.budget_hours is None and ON_KAGGLE:
        args.budget_hours = 11.0  # Kaggle ends GPU sessions at 12 hours
    if args.budget_hours is not None and args.budget_hours <= 0:
        p.error("--budget-hours must be positive")
    if args.out is None:
        args.out = os.path.join("/kaggle/working" if ON_KAGGLE else ".", "runs", args.task)
    return args


# -----------------------------------------------------------------------------
# Task wiring: what differs between tasks, gathered in one small record

@dataclasses.dataclass
class Task:
    model: torch.nn.Module
    sampler: EpochSampler        # micro-batches of training indices, per epoch
    make_batch: typing.Callable  # (indices, epoch) -> dict of tensors on the device, plus "count"
    loss_sum: typing.Callable    # (model, batch) -> loss summed over the batch's "count" units
    evaluate: typing.Callable    # (model, keep_going) -> {metric: value}, or None if cut short
    best_metric: str             # the evaluate() key that picks best_model.safetensors
    higher_is_better: bool       # direction of best_metric
    meta: dict                   # what inference needs besides weights (tokenizer, vocabulary, ...)
    fingerprint: str             # identifies the training data, to warn when it changes on resume


def build_lm(cfg, device, saved_meta=None):
    text = text_data.read_corpus(cfg.data)
    if saved_meta:  # resuming: decode exactly as before, even if the text changed
        tokenizer = text_data.tokenizer_from_dict(saved_meta["tokenizer"])
    else:
        tokenizer = text_data.make_tokenizer(cfg.tokenizer, text)
    tokens = text_data.encode_tokens(tokenizer, text)
    n_val = int(len(tokens) * cfg.val_fraction)
    train = text_data.TokenWindows(tokens[:-n_val], cfg.block_size, cfg.seed)
    val = text_data.TokenWindows(tokens[-n_val:], cfg.block_size, cfg.seed)
    print(f"data: {len(tokens):,} tokens ({tokenizer.to_dict()['kind']} tokenizer, vocab {tokenizer.vocab_size}); "
          f"{len(train):,} train / {len(val):,} val windows of {cfg.block_size}")

    if cfg.pretrained and not saved_meta:
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

    def make_batch(indices, epoch):
        x, y = train.batch(indices, epoch)
        return {"x": x.to(device, non_blocking=True), "y": y.to(device, non_blocking=True), "count": y.numel()}

    def loss_sum(model, batch):
        logits = model(batch["x"])  # (B, T, V)
        return F.cross_entropy(logits.float().flatten(0, 1), batch["y"].flatten(), reduction="sum")

    n_eval = min(len(val), cfg.eval_batches * cfg.batch_size)
    eval_indices = np.linspace(0, len(val) - 1, n_eval).round().astype(int).tolist()

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
        val_loss = total / count
        return {"val_loss": val_loss, "perplexity": math.exp(min(val_loss, 50.0))}

    return Task(
        model=model,
        sampler=EpochSampler(len(train), cfg.batch_size, cfg.seed, shuffle=True, drop_last=True),
        make_batch=make_batch, loss_sum=loss_sum, evaluate=evaluate,
        best_metric="val_loss", higher_is_better=False,
        meta={"tokenizer": tokenizer.to_dict()},
        fingerprint=xxhash.xxh3_64(tokens.numpy().tobytes()).hexdigest(),
    )


BUILDERS = {"lm": build_lm}


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
        self.margin = 0.0 if hours is None else min(60.0, max(2.0, 0.01 * self.seconds))
        self.first_step = None        # a process's first step pays one-off warm-up costs
        self.recent_steps = deque(maxlen=20)
        self.save_seconds = 0.0
        self.eval_seconds = 0.0

    def left(self):
        return math.inf if self.deadline is None else self.deadline - time.monotonic()

    def observe_step(self, seconds):
        if self.first_step is None:
            self.first_step = seconds
        else:
            self.recent_steps.append(seconds)

    def step_estimate(self):
        return 1.25 * max(self.recent_steps, default=self.first_step or 0.0)

    def room_for_step(self):
        return self.left() > self.step_estimate() + 1.5 * self.save_seconds + self.margin

    def room_for_eval(self):
        return self.left() > self.eval_seconds + self.step_estimate() + 1.5 * self.save_seconds + self.margin

    def can_continue_eval(self):
        return self.left() > 1.5 * self.save_seconds + self.margin


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


def check_compatible(saved, args, model):
    """Refuse a checkpoint that cannot continue this run exactly: another task, another model shape."""
    if saved.meta.get("task") not in (None, args.task):
        raise ConfigError(f"{saved.path} was trained for task {saved.meta['task']!r}, not {args.task!r}; "
                          f"pass --task {saved.meta['task']} or another checkpoint")
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
    world = saved.meta.get("world_size", 1)
    if world != 1:
        raise ConfigError(f"{saved.path} was written by {world} processes; resume it with "
                          f"torchrun --nproc_per_node {world}")


def find_resume(args):
    """The checkpoint to continue from (or None), by the --resume rule, reporting what was skipped."""
    if args.resume == "none":
        return None
    if args.resume != "auto":
        return ckpt.load_any(args.resume)
    roots = [args.out] + [r for r in os.environ.get("BATON_INPUT_ROOTS", "/kaggle/input").split(os.pathsep) if r]
    found = ckpt.scan(roots)
    saved, skipped = ckpt.newest_valid(found, task=args.task)
    for item in [f for f in found if f.problem and f not in skipped] + skipped:
        print(f"skipping {item.path}: {item.problem}")
    if saved is None:
        print(f"no checkpoint for task {args.task!r} under {', '.join(roots)}; starting fresh")
    return saved


def write_metrics(out, history):
    ckpt.write_text_atomic(os.path.join(out, "metrics.json"), json.dumps(history, indent=1))


# -----------------------------------------------------------------------------
# main

def main(argv=None, started=None):
    """Run one part; returns the exit code. `started` (a time.time()) defaults to process start."""
    started = process_start_time() if started is None else started
    args = parse_args(argv)
    try:
        return run(args, started)
    except (ConfigError, DataError, ckpt.CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def choose_device(args):
    """Device and precision, decided once: bf16 only where the GPU does it natively (compute
    capability 8.0+); T4/P100 get fp16 with a GradScaler; CPU runs in fp32 unless asked."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is visible")
    amp = args.amp
    if amp is None:
        amp = "off" if device.type == "cpu" else ("bf16" if torch.cuda.get_device_capability() >= (8, 0) else "fp16")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device, amp


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


def restore(saved, args, task, optimizer, scaler):
    """Load a checkpoint into model/optimizer/scaler/RNG; returns (progress, best, history)."""
    progress = {"epoch": 0, "batch_in_epoch": 0, "step_in_epoch": 0, "global_step": 0}
    best = {"metric": task.best_metric, "value": None, "step": None}
    if saved is None:
        return progress, best, new_history()
    check_compatible(saved, args, task.model)
    task.model.load_state_dict(saved.state["model"])
    if saved.meta.get("kind") != "train":  # weights-only or legacy: counters from the file where it has them
        if saved.state.get("optimizer"):
            try:
                optimizer.load_state_dict(saved.state["optimizer"])
            except (ValueError, KeyError) as e:
                print(f"note: optimizer state of {saved.path} not used ({e})")
        progress["global_step"] = int(saved.meta.get("global_step") or 0)
        progress["epoch"] = int(saved.meta.get("epoch") or 0)
        print(f"initialised from {saved.path} (weights{' + optimizer' if saved.state.get('optimizer') else ''}); "
              f"RNG and data position start fresh at global step {progress['global_step']}")
        return progress, best, new_history()
    optimizer.load_state_dict(saved.state["optimizer"])
    if saved.state.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(saved.state["scaler"])
    if saved.meta.get("data_fingerprint") != task.fingerprint:
        print("warning: the training data differs from the checkpoint's; the data order will differ")
    ckpt.restore_rng(saved.state["rng"])  # last, after everything that draws random numbers is built
    progress = dict(saved.state["progress"])
    print(f"resumed from {saved.path}: epoch {progress['epoch']}, step {progress['step_in_epoch']} "
          f"in epoch, global step {progress['global_step']}")
    return progress, dict(saved.state["best"]), saved.state["history"]


def run(args, started):
    budget = TimeBudget(args.budget_hours, started)
    device, amp = choose_device(args)
    os.makedirs(args.out, exist_ok=True)
    ckpt.remove_stale_temp_files(args.out)
    saved = find_resume(args)
    cfg = resolve_config(args, saved)
    print_config(cfg)

    # ---- task, model, optimizer, and the state they resume from
    random_seed_everything(cfg.seed)
    task = BUILDERS[args.task](cfg, device, saved.meta.get("task_meta") if saved and saved.meta.get("kind") == "train" else None)
    model = task.model
    optimizer = make_optimizer(model, cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(amp)
    steps_per_epoch = math.ceil(len(task.sampler) / cfg.grad_accum)
    total_steps = planned_steps(cfg, steps_per_epoch)
    total_epochs = cfg.epochs + cfg.phase2_epochs
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters on {device} (amp {amp}); "
          f"{steps_per_epoch} steps/epoch, {total_steps} planned steps")
    progress, best, history = restore(saved, args, task, optimizer, scaler)
    history["parts"].append({"part": args.part, "start_step": progress["global_step"]})

    def state_and_meta():
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                 "scheduler": {"kind": "warmup_cosine_then_phase2", "last_lr": optimizer.param_groups[0]["lr"]},
                 "rng": ckpt.capture_rng(), "progress": dict(progress), "best": dict(best), "history": history,
                 "sampler": {"seed": cfg.seed, "epoch": progress["epoch"], "batch_in_epoch": progress["batch_in_epoch"],
                             "batches_per_epoch": len(task.sampler)}}
        meta = {"task": args.task, "kind": "train", "part": args.part, "epoch": progress["epoch"],
                "step_in_epoch": progress["step_in_epoch"], "global_step": progress["global_step"],
                "world_size": 1, "config": dataclasses.asdict(cfg), "model_config": dataclasses.asdict(model.config),
                "task_meta": task.meta, "data_fingerprint": task.fingerprint}
        return state, meta

    def save(name):
        t0 = time.monotonic()
        state, meta = state_and_meta()
        path = os.path.join(args.out, name)
        nbytes = ckpt.write_file(path, state, meta)
        ckpt.write_text_atomic(os.path.join(args.out, ckpt.LATEST_NAME), name + "\n")
        ckpt.prune(args.out, cfg.keep_last)
        write_metrics(args.out, history)
        budget.save_seconds = max(budget.save_seconds, time.monotonic() - t0)
        return path, nbytes

    def save_best(metrics):
        meta = {"task": args.task, "kind": "weights", "part": args.part, "epoch": progress["epoch"],
                "step_in_epoch": progress["step_in_epoch"], "global_step": progress["global_step"],
                "config": dataclasses.asdict(cfg), "model_config": dataclasses.asdict(model.config),
                "task_meta": task.meta, "metrics": metrics}
        ckpt.write_file(os.path.join(args.out, ckpt.BEST_NAME), {"model": model.state_dict()}, meta)

    def run_eval():
        """Evaluate, track the best model; returns the metrics, or None if the budget cut it short."""
        t0 = time.monotonic()
        model.eval()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
                torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            metrics = task.evaluate(model, lambda: STOP["signal"] is None and budget.can_continue_eval())
        model.train()
        budget.eval_seconds = max(budget.eval_seconds, time.monotonic() - t0)
        if metrics is None:
            return None
        value = metrics[task.best_metric]
        better = best["value"] is None or (value > best["value"] if task.higher_is_better else value < best["value"])
        if better:
            best.update(value=value, step=progress["global_step"])
            save_best(metrics)
        return metrics

    if budget.deadline is not None:  # weights + AdamW's two moments dominate the file
        state_bytes = 3 * sum(t.numel() * t.element_size() for t in model.state_dict().values())
        budget.save_seconds = estimate_save_seconds(args.out, state_bytes)

    if not budget.room_for_step() and not STOP["signal"]:  # not even one step fits: bad input, nothing to save
        raise ConfigError(f"--budget-hours {args.budget_hours:g} is too small: start-up took {time.time() - started:.0f} s "
                          f"and the final save needs more than the {max(budget.left(), 0):.0f} s left; give the part more time")

    # ---------------------------------------------------------------- TRAINING SECTION BEGIN
    model.train()
    stop_reason = None
    last_save = time.monotonic()
    log_loss = torch.zeros((), device=device)  # summed on the device; .item() only when logging
    log_count = 0
    bar = tqdm(total=total_steps, initial=progress["global_step"], unit="step", dynamic_ncols=True,
               mininterval=1.0 if sys.stderr.isatty() else 30.0, file=sys.stderr)
    while stop_reason is None:
        if progress["epoch"] >= total_epochs:
            stop_reason = "finished"
            break
        epoch = progress["epoch"]
        batches = task.sampler.batches(epoch)  # O(epoch size) to build, O(1) to jump into
        while progress["batch_in_epoch"] < len(batches):
            # -- decisions at the step boundary: the only place a part may stop
            if STOP["signal"]:
                stop_reason = f"signal {STOP['signal']}"
            elif args.max_steps is not None and progress["global_step"] >= args.max_steps:
                stop_reason = f"max steps {args.max_steps}"
            elif not budget.room_for_step():
                stop_reason = "time budget"
            if stop_reason:
                break

            # -- one optimizer step over an accumulation window of micro-batches
            t0 = time.monotonic()
            step = progress["global_step"]
            lr = learning_rate(step, cfg, steps_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            start = progress["batch_in_epoch"]
            window = [task.make_batch(ix, epoch) for ix in batches[start:start + cfg.grad_accum]]
            # Normalise by the units (tokens, labels, rows) of the whole window, not per micro-batch,
            # so a short final window or uneven batches weigh each unit the same.
            window_count = sum(b["count"] for b in window)
            for batch in window:
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    loss_sum = task.loss_sum(model, batch)
                scaler.scale(loss_sum / window_count).backward()
                log_loss += loss_sum.detach()
            log_count += window_count
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
                train_loss = (log_loss / log_count).item()
                log_loss.zero_()
                log_count = 0
                record(history, steps=step, epochs=progress["epoch"], learning_rate=lr, train_loss=train_loss)
                bar.set_postfix(loss=f"{train_loss:.4f}", lr=f"{lr:.2e}", step=step,
                                left=format_seconds(budget.left()), refresh=False)
            epoch_done = progress["epoch"] != epoch
            if (cfg.eval_every_steps and step % cfg.eval_every_steps == 0) or (not cfg.eval_every_steps and epoch_done):
                if budget.room_for_eval():
                    metrics = run_eval()
                    if metrics is not None:
                        record(history, steps=step, epochs=progress["epoch"], learning_rate=lr, **metrics)
                        write_metrics(args.out, history)
                        tqdm.write(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
            minutes = (time.monotonic() - last_save) / 60
            if (cfg.save_every_steps and step % cfg.save_every_steps == 0) or \
                    (cfg.save_every_minutes and minutes >= cfg.save_every_minutes):
                save(ckpt.rolling_name(progress["epoch"], progress["step_in_epoch"], step))
                last_save = time.monotonic()
            if epoch_done:
                break
    bar.close()
    # ---------------------------------------------------------------- TRAINING SECTION END

    if stop_reason == "finished" and best["step"] != progress["global_step"] and budget.room_for_eval():
        metrics = run_eval()  # the finished model's score, unless it was just evaluated
        if metrics is not None:
            record(history, steps=progress["global_step"], epochs=progress["epoch"],
                   learning_rate=optimizer.param_groups[0]["lr"], **metrics)
    path, nbytes = save(ckpt.handoff_name(args.part))
    elapsed = time.time() - started
    print(f"\nstopped: {stop_reason} at global step {progress['global_step']} "
          f"(epoch {progress['epoch']}/{total_epochs}) after {format_seconds(elapsed)}")
    if best["value"] is not None:
        print(f"best {best['metric']} {best['value']:.4f} at step {best['step']}: {os.path.join(args.out, ckpt.BEST_NAME)}")
    print(f"baton: {path} ({ckpt.file_size_text(nbytes)})")
    out_flag = "" if args.out == os.path.join(".", "runs", args.task) else f" --out {args.out}"
    if stop_reason == "finished":
        print(f"training is complete. Predict with:\n  python infer.py --task {args.task} --ckpt {args.out}")
    else:
        hours = f" --budget-hours {args.budget_hours:g}" if args.budget_hours else ""
        print(f"next: python train_part.py --task {args.task} --part {args.part + 1}{hours}{out_flag}")
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
