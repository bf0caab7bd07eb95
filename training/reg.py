"""The reg task: a regression head (model/regression.py) on pooled GPT features of a text column
and/or an MLP over numeric columns learns a positive target, scored by SMAPE.

`RegConfig` is its settings, `RegTask` what it trains on and how it is scored (the task interface
of training/__init__.py), and `build` makes both with the model. Reading the table, the target's
log scale, SMAPE and the rows as model inputs are data/table.py's.
"""

import dataclasses
import os
import typing

import numpy as np
import torch
import xxhash

import ckpt
import model as models
from data.table import (DEFAULT_ID, DEFAULT_TRAIN, RegRows, Standardizer, decode_target, encode_target, extreme_values,
                        mae, read_table, smape, train_val_rows)
from data.sampler import EpochSampler
from data.tokenizers import make_tokenizer, tokenizer_from_dict
from model.gpt import GPT, GPTConfig
from model.regression import Regressor, RegressorConfig
from training.config import ConfigError, TrainConfig


class RegTask:
    """The reg task's data: batches of training rows, and the validation loss with SMAPE and MAE of
    the decoded predictions (kept inside the band of the training targets, see decode_target)."""

    best_metric = "smape"  # picks best_model.safetensors (lower is better)
    work_unit = "rows"
    flops_per_work = None  # MFU is the lm task's

    def __init__(self, table, train_rows, val_rows, tokenizer, standardize, cfg, device, rank=0, world=1):
        self.table, self.train_rows = table, train_rows
        self.rows = RegRows(table, tokenizer, cfg.block_size, standardize)
        self.val_rows = val_rows[rank::world]  # this rank's share
        self.device, self.batch_size = device, cfg.batch_size
        self.target_range = [float(table.target[train_rows].min()), float(table.target[train_rows].max())]
        self.fingerprint = xxhash.xxh3_64(self.rows.targets.numpy().tobytes() + "".join(table.ids).encode()).hexdigest()
        self.sampler = EpochSampler(len(train_rows), cfg.batch_size, cfg.seed, shuffle=True)
        self.meta = {"tokenizer": tokenizer.to_dict() if tokenizer else None,
                     "standardizer": standardize.to_dict() if standardize else None,
                     "columns": {"id": cfg.id_column, "text": cfg.text_column, "numeric": numeric_column_list(cfg),
                                 "target": cfg.target_column},
                     "block_size": cfg.block_size, "target_range": self.target_range}

    def work(self, indices):
        return len(indices)

    def batches(self, index_batches, epoch):
        for indices in index_batches:
            yield self.rows.batch(self.train_rows[indices], self.device), len(indices)

    @torch.no_grad()
    def evaluate(self, model, keep_going):
        predictions, losses = [torch.zeros(0, dtype=torch.float64)], 0.0
        for start in range(0, len(self.val_rows), self.batch_size):
            if not keep_going():
                return None
            out, loss_sum = model(**self.rows.batch(self.val_rows[start:start + self.batch_size], self.device))
            losses += loss_sum.item()
            predictions.append(decode_target(out, *self.target_range).cpu())
        predicted, actual, n = torch.cat(predictions).numpy(), self.table.target[self.val_rows], len(self.val_rows)
        return {"loss": losses, "rows": n, "smape": smape(predicted, actual) * n if n else 0.0,
                "abs_error": mae(predicted, actual) * n if n else 0.0}

    @staticmethod
    def summarize(sums):
        return {"val_loss": sums["loss"] / sums["rows"], "smape": sums["smape"] / sums["rows"],
                "mae": sums["abs_error"] / sums["rows"]}


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
    id_column: str = DEFAULT_ID     # "" = none (training never reads ids); without the default one, row numbers
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


def numeric_column_list(cfg):
    return [c.strip() for c in cfg.numeric_columns.split(",") if c.strip()]


def build(cfg, device, rank=0, world=1, resumed=None, run_folder=None):
    """(model, task object) of the reg task; `resumed` is the checkpoint a run resumes from, or None
    (`run_folder`, the run's folder, is not used: reading a table is quick)."""
    numeric_columns = numeric_column_list(cfg)
    path = cfg.data or DEFAULT_TRAIN
    # Training never reads ids: only the validation split does, and row numbers serve it as well.
    # A column named on purpose must exist (a typo should not pass); the default one may be absent.
    table = read_table(path, cfg.id_column, cfg.text_column, numeric_columns, cfg.target_column,
                       ids_optional=cfg.id_column == DEFAULT_ID)
    if cfg.id_column and not table.id_column:
        print(f"note: {path} has no {cfg.id_column!r} column, so its rows are named by their numbers (1 = the first "
              f"after the header), which then pick the validation split: keep the rows in this order between parts")
    train_rows, val_rows = train_val_rows(table, cfg.val_fraction, path)
    print(f"data: {table.report}; {len(train_rows):,} train / {len(val_rows):,} validation rows")
    gpt, text_cfg = None, None
    if resumed:  # the checkpoint's tokenizer and feature statistics, so inputs keep their meaning
        meta = resumed.meta["task_meta"]
        tokenizer = tokenizer_from_dict(meta["tokenizer"]) if meta["tokenizer"] else None
        standardize = Standardizer.from_dict(meta["standardizer"]) if meta["standardizer"] else None
        if cfg.text_column and cfg.pretrained:  # as in pretrained_or_fresh: the pretrained architecture
            text_cfg = {**resumed.meta["model_config"]["text"], "dropout": cfg.dropout}
    else:
        tokenizer = None
        if cfg.text_column and cfg.pretrained:
            tokenizer, gpt = text_backbone(cfg)
            text_cfg = dataclasses.asdict(gpt.config)
        elif cfg.text_column:
            tokenizer = make_tokenizer(cfg.tokenizer, "".join(table.texts[i] for i in train_rows))
        # Statistics of the training rows only: validation must look like unseen data.
        standardize = fit_standardizer(table, train_rows, numeric_columns) if numeric_columns else None
    if tokenizer is not None and text_cfg is None:
        text_cfg = dataclasses.asdict(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=cfg.block_size,
                                                n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd,
                                                dropout=cfg.dropout))
    model = Regressor(RegressorConfig(text=text_cfg, n_numeric=len(numeric_columns), hidden=cfg.hidden,
                                      dropout=cfg.dropout, pooling=cfg.pooling, loss=cfg.loss))
    if gpt is not None:
        model.backbone.load_state_dict(gpt.state_dict())
    if not resumed:
        # Start at the mean log-target, so the head learns deviations instead of first finding the scale.
        with torch.no_grad():
            model.head[-1].bias.fill_(float(encode_target(table.target[train_rows]).mean()))
    task = RegTask(table, train_rows, val_rows, tokenizer, standardize, cfg, device, rank, world)
    median = np.full(len(val_rows), np.median(table.target[train_rows]))
    print(f"reference: predicting the training median scores SMAPE {smape(median, table.target[val_rows]):.1f} "
          f"on validation")
    return model, task


def fit_standardizer(table, train_rows, columns):
    """The Standardizer of the training rows' numeric columns. One value far outside the rest (a 1e30
    typed for a missing value) would make the column's standard deviation its own, and every other
    row about 0: such a column is clipped to the range of its other values, with a warning line."""
    x = table.numeric[train_rows]
    found = extreme_values(x)
    for j, (name, hit) in enumerate(zip(columns, found)):
        if hit is None:
            continue
        extreme, (lo, hi) = hit
        worst = extreme[np.argmax(np.abs(x[extreme, j].astype(np.float64) - (lo + hi) / 2))]
        k = train_rows[worst]
        where = f"row {table.rows[k]}" + (f" ({table.id_column} {table.ids[k]})" if table.id_column else "")
        which = (f"an extreme value {x[worst, j]:g}" if len(extreme) == 1
                 else f"{len(extreme)} extreme values, the farthest {x[worst, j]:g}")
        print(f"warning: numeric column {name!r} has {which} in {where}, while the others lie within {lo:g} to "
              f"{hi:g}; standardised with it, the rest of the column would be nearly one value, so it is clipped to "
              f"that range for training and prediction: fix or remove the row if the value is a mistake")
    clip = [hit[1] if hit else None for hit in found]
    return Standardizer.fit(x, clip if any(clip) else None)  # no clip at all: the statistics as they always were


def text_backbone(cfg):
    """(tokenizer, GPT) for `pretrained`: a Baton lm checkpoint, or a Hugging Face GPT-2 folder
    (GPT-2's weights only make sense with GPT-2's own tokens, so its BPE comes along)."""
    if os.path.isdir(cfg.pretrained):
        tokenizer = make_tokenizer("gpt2", folder=cfg.pretrained)
        return tokenizer, GPT.from_pretrained(cfg.pretrained, dropout=cfg.dropout, block_size=cfg.block_size)
    lm = ckpt.load(cfg.pretrained)
    if lm.meta.get("task") != "lm":
        raise ConfigError(f"pretrained={cfg.pretrained} is a {lm.meta.get('task')!r} checkpoint; the text backbone "
                          f"needs an lm checkpoint or a GPT-2 folder")
    gpt = models.rebuild(GPT, lm.meta["model_config"], dropout=cfg.dropout)
    if cfg.block_size > gpt.config.block_size:
        raise ConfigError(f"block_size {cfg.block_size} exceeds the lm checkpoint's {gpt.config.block_size}")
    gpt.load_state_dict(lm.state["model"])
    return tokenizer_from_dict(lm.meta["task_meta"]["tokenizer"]), gpt
