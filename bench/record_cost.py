"""What the run's record costs a save and an evaluation as the run grows, before and after issue 23.

Before: every row kept, and the record as JSON in the checkpoint header. After: thinned by record()
and packed as tensors by record.pack. Both are measured in the same process.

    python bench/record_cost.py [--quick] [--rounds 3]

For runs of 10k, 100k, 1M and 10M steps (--quick: up to 1M) that log every 10 steps and evaluate
every 250 (lm's defaults: rows of steps, epochs, learning_rate, train_loss, val_loss, perplexity),
the record is built through record() twice: with thinning switched off (MAX_ROWS out of reach: the
rows the old code kept) and as shipped. A save's record work is then timed as train_part.py does
it: a checkpoint of a small state holding the record (ckpt.write_file, fsynced; before: the lists
in the header, after: pack() and the tensors), metrics.json (write_metrics) and the two plots
(write_plots); an evaluation's is write_metrics. Medians of --rounds. It also prints the header's
size, metrics.json's, and what a resume pays to read the record back (ckpt.load, then unpack).
Prints figures; asserts nothing.
"""

import argparse
import math
import os
import statistics
import struct
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import torch  # noqa: E402

import ckpt  # noqa: E402
from training import record  # noqa: E402

LOG_EVERY, EVAL_EVERY = 10, 250
SAFETENSORS_HEADER_LIMIT = 100_000_000  # bytes: the library refuses a larger header


def build(steps, thinned):
    """The record of a run of `steps` steps, and the seconds record() took per logged row."""
    real = record.MAX_ROWS
    record.MAX_ROWS = real if thinned else math.inf  # record() reads it at every row
    history, t0 = record.new_history(), time.perf_counter()
    try:
        for step in range(LOG_EVERY, steps + 1, LOG_EVERY):
            common = {"steps": step, "epochs": step // 50_000, "learning_rate": 3e-4 * (1 - step / (steps + 1))}
            record.record(history, **common, train_loss=2.0 + math.sin(step * 0.37) / (1 + step / 1e5))
            if step % EVAL_EVERY == 0:
                record.record(history, **common, val_loss=2.1 + math.cos(step * 0.11) / (1 + step / 1e5),
                              perplexity=math.exp(2.1 + 1 / (1 + step / 1e5)))
    finally:
        record.MAX_ROWS = real
    return history, (time.perf_counter() - t0) / (steps // LOG_EVERY)


def timed(work, rounds):
    seconds = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        work()
        seconds.append(time.perf_counter() - t0)
    return statistics.median(seconds)


def measure(history, packed, out, rounds):
    """Seconds of each piece of a save's record work, and the sizes it writes."""
    path = os.path.join(out, "ckpt.safetensors")
    small = {"model": {"w": torch.zeros(1024)}, "progress": {"global_step": history["steps"][-1]}}

    def save_checkpoint():
        ckpt.write_file(path, {**small, "history": record.pack(history) if packed else history}, {"kind": "train"})

    def resume():
        stored = ckpt.load(path).state["history"]
        return record.unpack(stored) if packed else stored

    figures = {"checkpoint": timed(save_checkpoint, rounds),
               "metrics": timed(lambda: record.write_metrics(out, history), rounds),
               "plots": timed(lambda: record.write_plots(out, history), rounds),
               "resume": timed(resume, rounds)}
    with open(path, "rb") as f:
        figures["header"] = struct.unpack("<Q", f.read(8))[0]
    figures["metrics_bytes"] = os.path.getsize(os.path.join(out, "metrics.json"))
    figures["save"] = figures["checkpoint"] + figures["metrics"] + figures["plots"]
    return figures


def size(nbytes):
    return ckpt.file_size_text(nbytes).replace(".0 B", " B")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="runs of up to 1M steps, one round")
    p.add_argument("--rounds", type=int, default=3, help="timed repetitions of each piece (median)")
    args = p.parse_args()
    runs = (10_000, 100_000, 1_000_000) if args.quick else (10_000, 100_000, 1_000_000, 10_000_000)
    rounds = 1 if args.quick else args.rounds
    print(f"log every {LOG_EVERY} steps, evaluate every {EVAL_EVERY}; MAX_ROWS {record.MAX_ROWS:,}; "
          f"median of {rounds}; torch {torch.__version__}, {os.cpu_count()} CPUs")
    print("| steps | rows before / after | record() per row | header | metrics.json | checkpoint write "
          "| metrics.json write (= an evaluation's) | plots | a save's record work | resume: load + unpack |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as out:  # matplotlib's import and first figure, outside the timings
        record.write_plots(out, build(1_000, True)[0])
    last = {}
    for steps in runs:
        with tempfile.TemporaryDirectory() as out:
            cells = {}
            for label, thinned in (("before", False), ("after", True)):
                history, per_row = build(steps, thinned)
                cells[label] = {**measure(history, thinned, out, rounds), "rows": len(history["steps"]),
                                "per_row": per_row}
                del history
        b, a = cells["before"], cells["after"]
        last = cells
        print(f"| {steps:,} | {b['rows']:,} / {a['rows']:,} | {b['per_row'] * 1e6:.1f} / {a['per_row'] * 1e6:.1f} us "
              f"| {size(b['header'])} / {size(a['header'])} | {size(b['metrics_bytes'])} / {size(a['metrics_bytes'])} "
              + " ".join(f"| {b[k]:.3f} / {a[k]:.3f} s" for k in ("checkpoint", "metrics", "plots", "save", "resume"))
              + " |", flush=True)
    b, a = last["before"], last["after"]
    reach = SAFETENSORS_HEADER_LIMIT / b["header"] * runs[-1]
    print(f"\nat {runs[-1]:,} steps the header is {b['header']:,} bytes before and {a['header']:,} after; before, it "
          f"grows with the run and passes safetensors' 100 MB at about {reach / 1e6:.0f}M steps (linear)")


if __name__ == "__main__":
    main()
