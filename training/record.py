"""The run's record: metrics.json and the two plots, rewritten at every save.

The record is the seeds' training_metrics.json shape: parallel lists (`steps`, `epochs`,
`learning_rate`, `train_loss`, `val_loss`, and each task's metrics), None where a value was not
measured, plus three lists of events: `parts` (where each part started), `recoveries` (each
divergence and what was done about it, see divergence.py) and `nonfinite` (a value that came out
NaN or infinite: it is stored as None, and this says which, where). The record travels inside the
checkpoint, so the whole run's curve survives every session.

metrics.json is strict JSON at all times (no bare NaN, which strict readers such as
`JSON.parse` or jq reject).
"""

import json
import math
import os

import ckpt

EVENTS = ("parts", "recoveries", "nonfinite")  # lists of dicts; every other key is a series


def new_history():
    return {"steps": [], "epochs": [], "learning_rate": [], "train_loss": [], "val_loss": [],
            "parts": [], "recoveries": [], "nonfinite": []}


def record(history, **row):
    """Add one row to the parallel lists of `history` (the values of a step share a row); a new
    metric gets None for earlier rows. A non-finite value is stored as None, noted in `nonfinite`."""
    for key, value in row.items():
        if isinstance(value, float) and not math.isfinite(value):
            history.setdefault("nonfinite", []).append({"step": row["steps"], "key": key, "value": repr(value)})
            row[key] = None
    n = len(history["steps"])
    for key in row:
        history.setdefault(key, [None] * n)
    if n and history["steps"][-1] == row["steps"]:
        for key, value in row.items():
            if value is not None:
                history[key][-1] = value
        return
    for key, values in history.items():
        if key not in EVENTS:
            values.append(row.get(key))


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


def plan(history, total_steps, step, budget_hours):
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
