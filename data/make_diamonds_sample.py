"""Regenerate data/samples/diamonds/: the embedded table for the reg task.

    pip download --no-deps plotnine -d /tmp/pn && unzip -o /tmp/pn/plotnine-*.whl 'plotnine/data/diamonds.csv' -d /tmp/pn
    python data/make_diamonds_sample.py /tmp/pn/plotnine/data/diamonds.csv

The source is ggplot2's `diamonds` (53,940 real diamonds, MIT licence) as shipped by plotnine.
A seeded sample of rows becomes a product-catalog-style table like the Amazon ML Challenge's
(`sample_id,catalog_content,...,price`): each diamond's attributes are written out as a product
description, and the numeric attributes are kept as columns too, so the task can be trained
from text, from numbers, or from both.
"""

import csv
import os
import random
import sys

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "samples", "diamonds")
N_TRAIN, N_TEST = 4000, 500
NUMERIC = ["carat", "depth", "table", "x", "y", "z"]


def describe(row):
    return (f"{row['carat']} carat {row['cut']} cut diamond, colour {row['color']}, clarity {row['clarity']}, "
            f"depth {row['depth']}%, table {row['table']}, {row['x']} x {row['y']} x {row['z']} mm")


def main(source):
    with open(source, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    random.Random(2025).shuffle(rows)
    os.makedirs(OUT, exist_ok=True)
    header = ["sample_id", "catalog_content"] + NUMERIC + ["price"]
    splits = {"train.csv": rows[:N_TRAIN], "test.csv": rows[N_TRAIN:N_TRAIN + N_TEST]}
    for name, part in splits.items():
        with open(os.path.join(OUT, name), "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(header if name == "train.csv" else header[:-1])  # the test file has no price
            for i, row in enumerate(part):
                sample_id = 100000 + i if name == "train.csv" else 900000 + i
                values = [sample_id, describe(row)] + [row[c] for c in NUMERIC]
                writer.writerow(values + ([row["price"]] if name == "train.csv" else []))
    with open(os.path.join(OUT, "test_references.csv"), "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["sample_id", "price"])
        for i, row in enumerate(splits["test.csv"]):
            writer.writerow([900000 + i, row["price"]])
    print(f"wrote {OUT}: {N_TRAIN} train rows, {N_TEST} test rows")


if __name__ == "__main__":
    main(sys.argv[1])
