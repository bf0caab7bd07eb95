"""The run's record: what was measured at each logged step, kept bounded, stored in every checkpoint,
and written out as metrics.json and two plots at every save.

The record is the seeds' training_metrics.json shape: parallel lists (`steps`, `epochs`,
`learning_rate`, `train_loss`, `val_loss`, and each task's metrics), None where a value was not
measured, plus four lists of events: `parts` (where each part started), `recoveries` (each
divergence and what was done about it, see divergence.py), `nonfinite` (a value that came out
NaN or infinite: it is stored as None, and this says which, where) and `splits` (a micro-batch that
ran out of memory and from which step it is trained in how many pieces, see memory.py). The record travels inside the
checkpoint, so the whole run's curve survives every session.

A bounded record. A run logs a row every `log_every_steps` for as long as it trains: 400,000 rows
at 4M steps, which made every save ~5 s slower and, near 16M steps, a checkpoint header larger than
the 100 MB safetensors accepts. So `record()` thins the record when it passes MAX_ROWS rows: the
newest FULL_ROWS rows are never touched (divergence.py reads the last losses from the end, and must
see what it saw before), and the older rows that fall in one bucket of `width` global steps become
one row, `width` the smallest power of two that leaves at most OLD_ROWS of them (its training loss
is the mean over the steps it covers, its evaluation the bucket's last). Thinning is a pure
function of the rows, so a resumed run and an uninterrupted one keep identical records; it runs
about once per FULL_ROWS new rows, each time over at most MAX_ROWS, so it costs O(1) per row
amortised. One width over the whole older part keeps the curve's resolution the same from step 0
up to the newest rows (merging pairs of rows over and over would squeeze the oldest steps into a
few rows), and a bucket of width 2w is two buckets of width w, so rows merged once merge again
cleanly. `nonfinite` keeps its newest NONFINITE_KEEP entries, and its first entry then counts the
ones dropped.

In a checkpoint the record is `pack(history)`: each series as tensors in the payload (its measured
values as int64, float64 or bool, and which rows were measured), the events as JSON in the header,
so the header stays a few kilobytes however long the run. `unpack` gives back exactly the lists,
and also reads the plain lists that older checkpoints hold.

metrics.json is strict JSON at all times (no bare NaN, which strict readers such as
`JSON.parse` or jq reject).
"""

import copy
import json
import math
import os

import torch

import ckpt

EVENTS = ("parts", "recoveries", "nonfinite", "splits")  # lists of dicts; every other key is a series
MAX_ROWS = 20_000        # a longer record is thinned: under 2 MB of metrics.json, 0.3 s of plotting
FULL_ROWS = MAX_ROWS // 4  # the newest rows, never thinned: what divergence.py reads, and the recent curve
OLD_ROWS = MAX_ROWS // 2   # at most this many rows hold everything older after a thinning
NONFINITE_KEEP = 100     # newest non-finite notes kept; a run can add one at every log
# How the rows of one bucket become one row: the training loss is the mean since the last log, so
# their mean weighted by the steps each covers; fp16's skipped steps are counts, so they add up.
# Every other series keeps its last measured value (the step, epoch and learning rate of the last
# row; the last evaluation of the bucket).
MEAN_OVER_STEPS, SUMMED = ("train_loss",), ("skipped_steps",)
PACKED = "columns/1"     # marks a record as pack() stores it; older checkpoints hold plain lists


def new_history():
    return {"steps": [], "epochs": [], "learning_rate": [], "train_loss": [], "val_loss": [],
            "parts": [], "recoveries": [], "nonfinite": []}


def record(history, **row):
    """Add one row to the parallel lists of `history` (the values of a step share a row); a new
    metric gets None for earlier rows. A non-finite value is stored as None, noted in `nonfinite`.
    Past MAX_ROWS rows the older ones are thinned (the module's docstring says how)."""
    for key, value in row.items():
        if isinstance(value, float) and not math.isfinite(value):
            note_nonfinite(history, row["steps"], key, value)
            row[key] = None
    n = len(history["steps"])
    for key in row:
        if key not in history:  # not setdefault: its [None] * n would be built at every row
            history[key] = [None] * n
    if n and history["steps"][-1] == row["steps"]:
        for key, value in row.items():
            if value is not None:
                history[key][-1] = value
        return
    for key, values in history.items():
        if key not in EVENTS:
            values.append(row.get(key))
    if n + 1 > MAX_ROWS:
        thin(history)


def note_nonfinite(history, step, key, value):
    """Note a non-finite value in `nonfinite`, keeping the newest NONFINITE_KEEP notes; once some are
    dropped, the first entry says how many and the step of the newest dropped one."""
    notes = history.setdefault("nonfinite", [])
    notes.append({"step": step, "key": key, "value": repr(value)})
    counted = bool(notes) and "dropped" in notes[0]
    if len(notes) - counted <= NONFINITE_KEEP:
        return
    if not counted:
        notes.insert(0, {"dropped": 0, "last_step": None})
    gone = notes.pop(1)
    notes[0]["dropped"] += 1
    notes[0]["last_step"] = gone["step"]


def recent(history, key, count):
    """The last `count` values of a series that were measured (read from the end: a long run's
    record holds thousands of rows, and this runs at every check)."""
    found = []
    for value in reversed(history.get(key, [])):
        if len(found) == count:
            break
        if value is not None:
            found.append(value)
    return found[::-1]


# -----------------------------------------------------------------------------
# Thinning: a bounded record

def thin(history):
    """Merge, in place, the rows older than the newest FULL_ROWS that share a bucket of global steps,
    leaving at most OLD_ROWS of them; a row alone in its bucket is kept as it is."""
    steps = history["steps"]
    losses = history.get("train_loss") or [None] * len(steps)
    cut = len(steps) - FULL_ROWS
    # The older part ends on a row with a training loss (rows after it wait for the next thinning),
    # so that every merged row ends on one: then the steps its loss covers are read from the rows.
    cut = next((i + 1 for i in range(cut - 1, max(cut - FULL_ROWS, 0) - 1, -1) if losses[i] is not None), cut)
    if cut < 2:
        return
    groups = buckets(steps, losses, cut)
    # Rows merged by an earlier thinning at this width are alone in their buckets: start at the first
    # bucket of several rows, so that a thinning costs the rows that aged since, not the whole record.
    first = next((i for i, (a, b) in enumerate(groups) if b - a > 1), len(groups))
    start, groups = groups[first][0] if groups[first:] else cut, groups[first:]
    weights = loss_weights(steps, losses, start, cut)
    for key, values in history.items():
        if key in EVENTS:
            continue
        merge = mean_over_steps if key in MEAN_OVER_STEPS else summed if key in SUMMED else last_measured
        # slice assignment: the lists stay the same objects, only their older part is replaced
        values[start:cut] = [values[a] if b - a == 1 else merge(values[a:b], weights[a - start:b - start])
                             for a, b in groups]


def buckets(steps, losses, cut):
    """Index ranges [a, b) of the rows before `cut` that go into one bucket of `width` steps: rows
    whose step s gives the same (s - 1) // width (a loss logged at step s covers the steps up to s, so
    a bucket ends on a multiple of the width); a row without a training loss (an evaluation between
    two logs) goes with the next row that has one. `width` is the smallest power of two that leaves
    at most OLD_ROWS buckets."""
    keys, after = [0] * cut, None
    for i in range(cut - 1, -1, -1):
        if losses[i] is not None:
            after = steps[i]
        keys[i] = steps[i] if after is None else after
    width = 1
    while (keys[-1] - 1) // width - (keys[0] - 1) // width >= OLD_ROWS:
        width *= 2
    while True:
        ids = [(key - 1) // width for key in keys]
        starts = [0] + [i for i in range(1, cut) if ids[i] != ids[i - 1]]
        if len(starts) <= OLD_ROWS:
            return list(zip(starts, starts[1:] + [cut]))
        width *= 2  # steps that go back (a run's never do) would split buckets: wider ones still end it


def loss_weights(steps, losses, start, cut):
    """The steps that each measured training loss of rows start..cut-1 covers: since the previous
    measured one (0 for a row without one)."""
    before = next((steps[i] for i in range(start - 1, -1, -1) if losses[i] is not None), 0)
    weights = []
    for step, loss in zip(steps[start:cut], losses[start:cut]):
        weights.append(0 if loss is None else max(step - before, 1))
        if loss is not None:
            before = step
    return weights


def mean_over_steps(values, weights):
    measured = [(v, w) for v, w in zip(values, weights) if v is not None]
    if len(measured) <= 1:  # one value stays bit for bit what it was (v * w / w may round)
        return measured[0][0] if measured else None
    return sum(v * w for v, w in measured) / sum(w for _, w in measured)


def summed(values, weights):
    measured = [v for v in values if v is not None]
    return sum(measured) if measured else None


def last_measured(values, weights):
    return next((v for v in reversed(values) if v is not None), None)


# -----------------------------------------------------------------------------
# In a checkpoint: the series as tensors, the events as JSON

def pack(history):
    """The record as a checkpoint stores it (`unpack` reverses it exactly): each series as
    `{"values": its measured values, "measured": which rows have one}` (no "measured" when all do),
    ints as int64, floats as float64 and bools as bool tensors; a series that would not come back
    exactly from one of those (mixed kinds, a NaN, an int beyond int64) stays a list, in `lists`.
    Nothing the record holds is shared with the result."""
    series, lists = {}, {}
    for key, values in history.items():
        if key not in EVENTS:
            column = to_column(values)
            if column is None:
                lists[key] = list(values)
            else:
                series[key] = column
    events = {key: copy.deepcopy(history[key]) for key in history if key in EVENTS}
    return {"packed": PACKED, "keys": list(history), "series": series, "lists": lists, "events": events}


def to_column(values):
    present = [v for v in values if v is not None]
    kinds = {type(v) for v in present}
    if kinds == {bool}:
        dtype = torch.bool
    elif kinds == {int} and all(-2**63 <= v < 2**63 for v in present):
        dtype = torch.int64
    elif all(isinstance(v, float) for v in present) and all(math.isfinite(v) for v in present):
        dtype = torch.float64  # also a series with no value yet; finite: a checkpoint holds no NaN
    else:
        return None
    column = {"values": torch.tensor(present, dtype=dtype)}
    if len(present) < len(values):
        column["measured"] = torch.tensor([v is not None for v in values], dtype=torch.bool)
    return column


def unpack(stored):
    """The record in the list form record() works with, from a checkpoint's `history`: what pack()
    made, or the plain lists of an older checkpoint (copied: the stored state stays as it was)."""
    if stored.get("packed") != PACKED:
        return copy.deepcopy(stored)
    history = {}
    for key in stored["keys"]:
        if key in stored["series"]:
            history[key] = from_column(key, stored["series"][key])
        else:
            history[key] = copy.deepcopy(stored["lists"][key] if key in stored["lists"] else stored["events"][key])
    return history


def from_column(key, column):
    values = column["values"].tolist()  # int64 -> int, float64 -> float (bit for bit), bool -> bool
    if "measured" not in column:
        return values
    measured = column["measured"].tolist()
    if sum(measured) != len(values):
        raise ckpt.CheckpointError(f"the record's series {key!r} has {len(values)} values for "
                                   f"{sum(measured)} measured rows; the checkpoint is corrupt")
    found = iter(values)
    return [next(found) if m else None for m in measured]


# -----------------------------------------------------------------------------
# metrics.json and the plots

def strict(value):
    """`value` with every non-finite float replaced by None (a last guard: record() already does it)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    return value


def write_metrics(out, history):
    text = json.dumps(strict(history), indent=1, allow_nan=False)
    ckpt.write_text_atomic(os.path.join(out, "metrics.json"), text)


def thinned(history):
    """A thinned copy of `history` (the lists copied, the events shared: thin() leaves them alone)."""
    copied = {key: values if key in EVENTS else list(values) for key, values in history.items()}
    thin(copied)
    return copied


def write_plots(out, history):
    """training_curve.png (losses over steps, the learning rate below on a log scale, parts and
    recoveries marked) and loss_by_epoch.png (mean training loss per epoch), written atomically."""
    try:
        import matplotlib
        matplotlib.use("Agg")  # files only: no display on Kaggle or a server
        import matplotlib.pyplot as plt
    except ImportError:
        if not getattr(write_plots, "warned", False):
            print("matplotlib is not installed: skipping training_curve.png and loss_by_epoch.png")
            write_plots.warned = True
        return
    if len(history["steps"]) > MAX_ROWS:  # a long record of an older version, which record() has not thinned yet
        history = thinned(history)

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
    for i, event in enumerate(history.get("recoveries", [])):  # the skipped stretch of each divergence
        top.axvspan(event["back_to"], event["step"], color="tab:orange", alpha=0.25, lw=0,
                    label="diverged: rolled back" if i == 0 else None)
    top.legend()
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


def close_part(history, part, step, seconds, step_seconds):
    """Notes in this part's `parts` entry where it ended and its step rate: steps per hour of the whole
    part (start-up, evaluation and saves included: what the next part of the same budget will do) and
    steps per second of training alone."""
    entry = history["parts"][-1] if history["parts"] and history["parts"][-1]["part"] == part else None
    if entry is None:  # rolled back whole to a state from before this part began: it kept no steps
        entry = {"part": part, "start_step": step}
        history["parts"].append(entry)
    steps, seconds = step - entry["start_step"], round(seconds, 3)  # the rate agrees with the seconds stored
    entry.update(end_step=step, seconds=seconds,
                 steps_per_hour=round(steps / seconds * 3600, 1) if steps and seconds > 0 else None,
                 steps_per_second=round(steps / step_seconds, 3) if steps and step_seconds > 0 else None)


def progress_line(history, total_steps, step, budget_hours):
    """The line printed as a part starts and as it ends: where the run stands, the step rate of the
    newest part that measured one, and how many more parts of `budget_hours` the rest needs at that
    rate (the seeds keep this "Time Budget per Part" table by hand)."""
    left = max(total_steps - step, 0)
    line = f"plan: step {step:,} of {total_steps:,} ({step / max(total_steps, 1):.1%})"
    if not left:
        return line + "; nothing left to train"
    measured = [entry for entry in history["parts"] if entry.get("steps_per_hour")]
    if not measured:
        return line + f"; {left:,} steps left, at a rate this part will measure"
    rate = measured[-1]["steps_per_hour"]
    hours = left / rate
    line += (f"; at part {measured[-1]['part']}'s {rate:,.0f} steps/h (start-up, evaluation and saves included) "
             f"the {left:,} steps left take {hours:.1f} h")
    if budget_hours:
        line += f", {math.ceil(hours / budget_hours)} more part(s) of --budget-hours {budget_hours:g}"
    return line
