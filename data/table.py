"""Tabular data for the reg task: a CSV with an id, text and/or numeric features, and a target.

The layout follows the Amazon ML Challenge 2025 (`sample_id,catalog_content,image_link,price`),
but any column names work. Rows a model cannot learn from (a missing, non-numeric or
non-positive target, empty text, a non-numeric feature) are dropped and counted by cause; a
missing column is an error that names it. Numeric features are standardised with statistics
from the training split only, carried in the checkpoint so inference applies the same ones.

SMAPE, the competition metric, lives here too: it is defined by the data's target. `RegRows` holds
a table as model inputs, for training and inference alike.
"""

import csv
import dataclasses
import math
import os
import sys

import numpy as np
import torch

from data import DataError, held_out


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
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            needed = [id_column] + ([text_column] if text_column else []) + list(numeric_columns)
            needed += [target_column] if for_training else []
            for name in needed:
                if name not in columns:
                    what = "the model was trained with" if not for_training and name != id_column else "is needed"
                    raise DataError(f"{path} has no column {name!r}, which {what} "
                                    f"(columns: {', '.join(columns) or 'none'})")
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as e:  # Latin-1, UTF-16, a binary file
        raise DataError(f"{path} is not a UTF-8 CSV file ({e}); save it as UTF-8 (Excel: CSV UTF-8)") from None
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
