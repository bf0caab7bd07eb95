"""Tabular data for the reg task: a CSV with an id, text and/or numeric features, and a target.

The layout follows the Amazon ML Challenge 2025 (`sample_id,catalog_content,image_link,price`),
but any column names work. Rows a model cannot learn from (a missing, non-numeric or
non-positive target, empty text, a non-numeric feature) are dropped and counted by cause; a
missing column is an error that names it. The id column is optional (training never reads ids):
without one, a row's id is its number in the file (1 = the first row after the header). Numeric
features are standardised with statistics from the training split only, carried in the checkpoint
so inference applies the same ones; a value so far out that it would squash the rest of its
column to one value is found (`extreme_values`) and clipped to the range of the others.

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
DEFAULT_ID = "sample_id"  # the Amazon ML Challenge's id column; a table without it is named by row numbers


@dataclasses.dataclass
class Table:
    ids: list             # the id column, as text, in file order (the row numbers without one)
    texts: list           # the text column (None when the model uses no text)
    numeric: np.ndarray   # (N, F) float32 numeric features, unstandardised (None when F = 0)
    target: np.ndarray    # (N,) float64 (None when reading rows to predict)
    report: str           # one line: what was read and what was dropped, and why
    rows: list = None     # each kept row's number in the file (1 = the first after the header), for messages
    id_column: str = ""   # the column the ids came from; "" when they are row numbers


def _number(value):
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def read_table(path, id_column, text_column, numeric_columns, target_column, for_training=True, ids_optional=False):
    """Read the CSV at `path`. With `for_training`, rows without a usable target, text or features are
    dropped and counted; when predicting, every row is kept (bad features become NaN, for the caller
    to fill) so the predictions line up one to one with the input. `id_column` "" means the table has
    none, and so does a table that lacks it when `ids_optional`: the ids are then the row numbers
    (`Table.id_column` says which it was)."""
    columns, rows = _read_csv(path)
    if id_column and id_column not in columns and ids_optional:
        id_column = ""
    needed = ([id_column] if id_column else []) + ([text_column] if text_column else []) + list(numeric_columns)
    needed += [target_column] if for_training else []
    for name in needed:
        if name not in columns:
            what = "the model was trained with" if not for_training and name != id_column else "is needed"
            raise DataError(f"{path} has no column {name!r}, which {what} (columns: {', '.join(columns) or 'none'})")
    if not rows:
        raise DataError(f"{path} has a header but no rows")

    dropped = {}
    kept, texts, numeric, target = [], [], [], []
    for number, row in enumerate(rows, start=1):
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
        kept.append(number)
        texts.append(text)
        numeric.append([math.nan if v is None else v for v in features])
        target.append(y)

    report = f"{len(kept):,} of {len(rows):,} rows of {os.path.basename(path)}"
    if dropped:
        report += "; dropped " + ", ".join(f"{n} with {why}" for why, n in dropped.items())
    if not kept:
        raise DataError(f"no usable rows in {path}: {report}")
    # Row numbers count the rows of the file, dropped ones too: a row keeps its id (and its side of
    # the validation split) when the rows around it change from usable to not.
    ids = [rows[n - 1][id_column] for n in kept] if id_column else [str(n) for n in kept]
    return Table(ids=ids, texts=texts if text_column else None,
                 numeric=np.asarray(numeric, dtype=np.float32) if numeric_columns else None,
                 target=np.asarray(target, dtype=np.float64) if for_training else None, report=report,
                 rows=kept, id_column=id_column)


def _read_csv(path):
    """(column names, rows as dicts) of a UTF-8 CSV; a file that is not one is a DataError."""
    if not os.path.isfile(path):
        raise DataError(f"table {path} does not exist")
    csv.field_size_limit(sys.maxsize)  # catalog texts can be long
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            return reader.fieldnames or [], list(reader)
    except (UnicodeDecodeError, csv.Error) as e:  # Latin-1, UTF-16, a binary file
        raise DataError(f"{path} is not a UTF-8 CSV file ({e}); save it as UTF-8 (Excel: CSV UTF-8)") from None


class Standardizer:
    """Per-column (x - mean) / std with statistics of the training rows; NaN (a bad value at
    prediction time) becomes 0, the training mean. `clip`, per column None or [lo, hi], bounds the
    values first: fitted only for a column with an extreme value (see `extreme_values`), so a
    checkpoint without it (every one before it existed, and every table without such a value)
    keeps the exact statistics and meaning it had."""

    def __init__(self, mean, std, clip=None):
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        self.clip = clip

    @classmethod
    def fit(cls, x, clip=None):
        x = cls._clipped(x, clip)
        std = x.std(axis=0)
        return cls(x.mean(axis=0), np.where(std > 0, std, 1.0), clip)  # a constant column stays 0

    @staticmethod
    def _clipped(x, clip):
        if not clip:
            return x
        x = x.copy()
        for j, bounds in enumerate(clip):
            if bounds is not None:
                x[:, j] = np.clip(x[:, j], *bounds)  # NaN stays NaN, for __call__ to fill
        return x

    def __call__(self, x):
        return np.nan_to_num((self._clipped(x, self.clip) - self.mean) / self.std, nan=0.0).astype(np.float32)

    def to_dict(self):
        d = {"mean": self.mean.tolist(), "std": self.std.tolist()}
        if self.clip:
            d["clip"] = self.clip
        return d

    @classmethod
    def from_dict(cls, d):
        return cls(d["mean"], d["std"], d.get("clip"))


# A value counts as extreme when, without it, the rest of its column spreads over less than this
# share of the column's standard deviation: standardised, the rest would then sit within a tenth
# of one unit, nearly one value. A heavy but honest tail (log-normal prices, counts) stays far
# above it; a 1e30 typed into a column of carats falls below it by thirty orders of magnitude.
SQUASHED = 0.1


def extreme_values(x, most=10):
    """For each column of x (N, F): (the row indices of its extreme values, the range [lo, hi] of the
    others), or None when it has none. The `most` values farthest from the median are set aside, then
    taken back nearest first while each leaves the rest unsquashed (see SQUASHED); the first that
    squashes the rest, and every value farther out, are extreme. Backwards, because one far value
    hides another: beside 1e20, a 3e18 looks harmless. A value float32 cannot hold (inf) is extreme."""
    found = []
    for column in np.asarray(x, dtype=np.float64).T:
        finite = np.isfinite(column)  # NaN cannot occur in training rows; inf is a float32 overflow
        if finite.sum() < 3:
            found.append(None)
            continue
        order = np.flatnonzero(finite)[np.argsort(-np.abs(column[finite] - np.median(column[finite])), kind="stable")]
        aside = list(order[:min(most, len(order) - 2)])  # farthest first
        rest = finite.copy()
        rest[aside] = False
        while aside:
            spread = column[rest].std()
            rest[aside[-1]] = True  # the nearest value set aside, back
            if spread > 0 and spread < SQUASHED * column[rest].std():
                rest[aside[-1]] = False  # it squashes the rest: it, and all farther, are extreme
                break
            aside.pop()
        extreme = np.flatnonzero(~rest)
        found.append((extreme, [float(column[rest].min()), float(column[rest].max())]) if len(extreme) else None)
    return found


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


def train_val_rows(table, fraction, path):
    """(training rows, validation rows): validation is chosen by a hash of the id."""
    held = held_out(table.ids, fraction)
    train_rows, val_rows = np.flatnonzero(~held), np.flatnonzero(held)
    if len(train_rows) == 0 or len(val_rows) == 0:
        raise DataError(f"{path} gives {len(train_rows)} training and {len(val_rows)} validation rows; both are needed")
    return train_rows, val_rows
