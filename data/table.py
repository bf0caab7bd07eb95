"""Tabular data for the reg task: a CSV with an id, text and/or numeric features, and a target.

The layout follows the Amazon ML Challenge 2025 (`sample_id,catalog_content,image_link,price`),
but any column names work. Rows a model cannot learn from (a missing, non-numeric or
non-positive target, empty text, a non-numeric feature) are dropped and counted by cause; a
missing column is an error that names it. Numeric features are standardised with statistics
from the training split only, carried in the checkpoint so inference applies the same ones.

SMAPE, the competition metric, lives here too: it is defined by the data's target. `RegRows` holds
a table as model inputs; the reg task itself is its config `RegConfig`, its data `RegData`, and
`build_reg`, which makes both with the model.
"""

import csv
import dataclasses
import math
import os
import sys
import typing

import numpy as np
import torch
import xxhash

import ckpt
import model as models
from data import DataError, held_out
from data import text as text_data
from data.config import ConfigError, TrainConfig
from data.sampler import EpochSampler
from model.gpt import GPT, GPTConfig
from model.regression import Regressor, RegressorConfig

SAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "samples", "diamonds")
DEFAULT_TRAIN = os.path.join(SAMPLES, "train.csv")
DEFAULT_TEST = os.path.join(SAMPLES, "test.csv")


@dataclasses.dataclass
class Table:
    ids: list             # the id column, as text, in file order
    texts: list           # the text column (None when the model uses no text)
    numeric: np.ndarray   # (N, F) float32 numeric features, unstandardised (None when F = 0)
    target: np.ndarray    # (N,) float64 (None when reading rows to predict)
    report: str           # one line: what was read and what was dropped, and why


def _number(value):
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def read_table(path, id_column, text_column, numeric_columns, target_column, for_training=True):
    """Read the CSV at `path`. With `for_training`, rows without a usable target, text or features are
    dropped and counted; when predicting, every row is kept (bad features become NaN, for the caller
    to fill) so the predictions line up one to one with the input."""
    if not os.path.isfile(path):
        raise DataError(f"table {path} does not exist")
    csv.field_size_limit(sys.maxsize)  # catalog texts can be long
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        needed = [id_column] + ([text_column] if text_column else []) + list(numeric_columns)
        needed += [target_column] if for_training else []
        for name in needed:
            if name not in columns:
                what = "the model was trained with" if not for_training and name != id_column else "is needed"
                raise DataError(f"{path} has no column {name!r}, which {what} (columns: {', '.join(columns) or 'none'})")
        rows = list(reader)
    if not rows:
        raise DataError(f"{path} has a header but no rows")

    dropped = {}
    ids, texts, numeric, target = [], [], [], []
    for row in rows:
        problem = None
        y = _number(row[target_column]) if for_training else None
        features = [_number(row[c]) for c in numeric_columns]
        text = (row[text_column] or "").strip() if text_column else ""
        if for_training:
            if y is None:
                problem = f"a missing or non-numeric {target_column!r}"
            elif y <= 0:
                problem = f"{target_column!r} <= 0"  # SMAPE is for positive targets; log1p needs y > -1
            elif text_column and not text:
                problem = f"an empty {text_column!r}"
            elif None in features:
                problem = f"a non-numeric {numeric_columns[features.index(None)]!r}"
        if problem:
            dropped[problem] = dropped.get(problem, 0) + 1
            continue
        ids.append(row[id_column])
        texts.append(text)
        numeric.append([math.nan if v is None else v for v in features])
        target.append(y)

    report = f"{len(ids):,} of {len(rows):,} rows of {os.path.basename(path)}"
    if dropped:
        report += "; dropped " + ", ".join(f"{n} with {why}" for why, n in dropped.items())
    if not ids:
        raise DataError(f"no usable rows in {path}: {report}")
    return Table(ids=ids, texts=texts if text_column else None,
                 numeric=np.asarray(numeric, dtype=np.float32) if numeric_columns else None,
                 target=np.asarray(target, dtype=np.float64) if for_training else None, report=report)


class Standardizer:
    """Per-column (x - mean) / std with statistics of the training rows; NaN (a bad value at
    prediction time) becomes 0, the training mean."""

    def __init__(self, mean, std):
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)

    @classmethod
    def fit(cls, x):
        std = x.std(axis=0)
        return cls(x.mean(axis=0), np.where(std > 0, std, 1.0))  # a constant column stays 0

    def __call__(self, x):
        return np.nan_to_num((x - self.mean) / self.std, nan=0.0).astype(np.float32)

    def to_dict(self):
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d):
        return cls(d["mean"], d["std"])


def smape(predicted, actual):
    """Symmetric mean absolute percentage error in percent: mean(|F - A| / ((|A| + |F|) / 2)) * 100.
    A row where both are 0 counts as a perfect 0 (the formula is 0/0 there)."""
    f = np.asarray(predicted, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    denominator = (np.abs(a) + np.abs(f)) / 2
    ratio = np.divide(np.abs(f - a), denominator, out=np.zeros_like(f), where=denominator > 0)
    return float(ratio.mean() * 100)


def mae(predicted, actual):
    return float(np.abs(np.asarray(predicted, dtype=np.float64) - np.asarray(actual, dtype=np.float64)).mean())


def tokenize_rows(texts, tokenizer, block_size):
    """Texts -> right-padded token ids (N, block_size) and lengths (N,); longer texts are cut, an
    empty one becomes a single token 0 so every row has something to pool."""
    tokens = torch.zeros(len(texts), block_size, dtype=torch.long)
    lengths = torch.ones(len(texts), dtype=torch.long)
    for i, text in enumerate(texts):
        ids = tokenizer.encode(text)[:block_size] or [0]
        tokens[i, : len(ids)] = torch.tensor(ids)
        lengths[i] = len(ids)
    return tokens, lengths


def encode_target(y):
    """The model learns log1p(target): prices span orders of magnitude, and an error in log space is
    a relative error, which is what SMAPE scores; large prices then do not dominate the loss."""
    return torch.log1p(torch.as_tensor(y, dtype=torch.float64)).float()


def decode_target(out, lo, hi):
    """Model output -> a positive, finite prediction inside [lo / 2, 2 * hi], a band around the
    training targets: SMAPE punishes an absurd value far more than a clipped one."""
    return torch.expm1(out.double().clamp(min=math.log1p(lo / 2), max=math.log1p(2 * hi)))


class RegRows:
    """Every input of a table as tensors, once: a batch is then a gather. Text becomes right-padded
    tokens (None without text), numeric columns are standardised, and the target (if the table has
    one) is encoded as the model learns it."""

    def __init__(self, table, tokenizer, block_size, standardize):
        self.tokens, self.lengths = tokenize_rows(table.texts, tokenizer, block_size) if tokenizer else (None, None)
        self.numeric = torch.from_numpy(standardize(table.numeric)) if standardize else None
        self.targets = encode_target(table.target) if table.target is not None else None

    def batch(self, rows, device):
        """The model's inputs (and targets) for `rows`, on the device."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        batch = {}
        if self.tokens is not None:
            width = int(self.lengths[rows].max())  # pad only to the longest row of this batch
            batch.update(tokens=self.tokens[rows, :width], lengths=self.lengths[rows])
        if self.numeric is not None:
            batch["numeric"] = self.numeric[rows]
        if self.targets is not None:
            batch["targets"] = self.targets[rows]
        return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def split_rows(table, fraction, path):
    """(training rows, validation rows): validation is chosen by a hash of the id."""
    held = held_out(table.ids, fraction)
    train_rows, val_rows = np.flatnonzero(~held), np.flatnonzero(held)
    if len(train_rows) == 0 or len(val_rows) == 0:
        raise DataError(f"{path} gives {len(train_rows)} training and {len(val_rows)} validation rows; both are needed")
    return train_rows, val_rows


class RegData:
    """The reg task's data: batches of training rows, and the validation loss with SMAPE and MAE of
    the decoded predictions (kept inside the band of the training targets, see decode_target)."""

    best_metric = "smape"  # picks best_model.safetensors (lower is better)

    def __init__(self, table, train_rows, val_rows, tokenizer, standardize, cfg, device, rank=0, world=1):
        self.table, self.train_rows = table, train_rows
        self.rows = RegRows(table, tokenizer, cfg.block_size, standardize)
        self.val_rows = val_rows[rank::world]  # this rank's share
        self.device, self.batch_size = device, cfg.batch_size
        self.target_range = [float(table.target[train_rows].min()), float(table.target[train_rows].max())]
        self.fingerprint = xxhash.xxh3_64(self.rows.targets.numpy().tobytes() + "".join(table.ids).encode()).hexdigest()
        self.sampler = EpochSampler(len(train_rows), cfg.batch_size, cfg.seed, shuffle=True, rank=rank, world_size=world)
        self.meta = {"tokenizer": tokenizer.to_dict() if tokenizer else None,
                     "standardizer": standardize.to_dict() if standardize else None,
                     "columns": {"id": cfg.id_column, "text": cfg.text_column, "numeric": numeric_column_list(cfg),
                                 "target": cfg.target_column},
                     "block_size": cfg.block_size, "target_range": self.target_range}

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


def numeric_column_list(cfg):
    return [c.strip() for c in cfg.numeric_columns.split(",") if c.strip()]


def build_reg(cfg, device, rank=0, world=1, saved=None, workdir=None):
    """(model, data) of the reg task; `saved` is the checkpoint a run resumes from, or None."""
    numeric_columns = numeric_column_list(cfg)
    path = cfg.data or DEFAULT_TRAIN
    table = read_table(path, cfg.id_column, cfg.text_column, numeric_columns, cfg.target_column)
    train_rows, val_rows = split_rows(table, cfg.val_fraction, path)
    print(f"data: {table.report}; {len(train_rows):,} train / {len(val_rows):,} validation rows")
    gpt, text_cfg = None, None
    if saved:  # the checkpoint's tokenizer and feature statistics, so inputs keep their meaning
        meta = saved.meta["task_meta"]
        tokenizer = text_data.tokenizer_from_dict(meta["tokenizer"]) if meta["tokenizer"] else None
        standardize = Standardizer.from_dict(meta["standardizer"]) if meta["standardizer"] else None
        if cfg.text_column and cfg.pretrained:  # as in pretrained_or_fresh: the pretrained architecture
            text_cfg = {**saved.meta["model_config"]["text"], "dropout": cfg.dropout}
    else:
        tokenizer = None
        if cfg.text_column and cfg.pretrained:
            tokenizer, gpt = text_backbone(cfg)
            text_cfg = dataclasses.asdict(gpt.config)
        elif cfg.text_column:
            tokenizer = text_data.make_tokenizer(cfg.tokenizer, "".join(table.texts[i] for i in train_rows))
        # Statistics of the training rows only: validation must look like unseen data.
        standardize = Standardizer.fit(table.numeric[train_rows]) if numeric_columns else None
    if tokenizer is not None and text_cfg is None:
        text_cfg = dataclasses.asdict(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=cfg.block_size,
                                                n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd,
                                                dropout=cfg.dropout))
    model = Regressor(RegressorConfig(text=text_cfg, n_numeric=len(numeric_columns), hidden=cfg.hidden,
                                      dropout=cfg.dropout, pooling=cfg.pooling, loss=cfg.loss))
    if gpt is not None:
        model.backbone.load_state_dict(gpt.state_dict())
    if not saved:
        # Start at the mean log-target, so the head learns deviations instead of first finding the scale.
        with torch.no_grad():
            model.head[-1].bias.fill_(float(encode_target(table.target[train_rows]).mean()))
    data = RegData(table, train_rows, val_rows, tokenizer, standardize, cfg, device, rank, world)
    median = np.full(len(val_rows), np.median(table.target[train_rows]))
    print(f"reference: predicting the training median scores SMAPE {smape(median, table.target[val_rows]):.1f} "
          f"on validation")
    return model, data


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
    gpt = models.rebuild("lm", lm.meta["model_config"], dropout=cfg.dropout)
    if cfg.block_size > gpt.config.block_size:
        raise ConfigError(f"block_size {cfg.block_size} exceeds the lm checkpoint's {gpt.config.block_size}")
    gpt.load_state_dict(lm.state["model"])
    return text_data.tokenizer_from_dict(lm.meta["task_meta"]["tokenizer"]), gpt
