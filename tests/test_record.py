"""training/record.py: the run's record stays bounded however long the run (issue 23), and a
checkpoint stores it exactly.

The rows below are those of a run that logs every 10 steps and evaluates every 25, so evaluations
fall both on logged steps (50, 100: one row) and between them (25, 75: rows without a training
loss), with fp16's skipped steps; the losses are deterministic but irregular."""

import bisect
import collections
import json
import math
import os
import struct

import pytest
import torch

import ckpt
from training import divergence, record

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "baton_v1")


def feed(history, start, stop, check=None):
    """Record the rows of global steps start+1..stop as a run would (see the module docstring)."""
    for step in range(start + 1, stop + 1):
        common = {"steps": step, "epochs": step // 5000, "learning_rate": 1e-3 / (1 + step / 1e5)}
        if step % 10 == 0:
            record.record(history, **common, train_loss=2 + math.sin(step * 0.37) / (1 + step / 1e5),
                          skipped_steps=step // 10 % 3)
            if check:
                check(history)
        if step % 25 == 0:
            record.record(history, **common, val_loss=step / 1000, perplexity=math.exp(step / 1e6))


@pytest.fixture(scope="module")
def unthinned():
    """The record of 600,000 steps (72,000 rows) as it was before thinning existed."""
    real, record.MAX_ROWS = record.MAX_ROWS, 10**12
    try:
        history = record.new_history()
        feed(history, 0, 600_000)
    finally:
        record.MAX_ROWS = real
    return history


@pytest.fixture(scope="module")
def thinned():
    history, seen = record.new_history(), collections.deque(maxlen=10)
    longest = [0]

    def check(history):  # after every log: bounded, and the last losses are what the run measured
        seen.append(history["train_loss"][-1])
        longest[0] = max(longest[0], len(history["steps"]))
        assert record.recent(history, "train_loss", 10) == list(seen)
    feed(history, 0, 600_000, check)
    assert longest[0] <= record.MAX_ROWS
    return history


def test_the_record_stays_bounded_and_its_newest_rows_untouched(thinned, unthinned):
    rows = len(unthinned["steps"])
    assert rows == 72_000 and len(thinned["steps"]) <= record.MAX_ROWS
    assert all(len(values) == len(thinned["steps"]) for key, values in thinned.items() if key not in record.EVENTS)
    for key in unthinned:
        if key not in record.EVENTS:
            assert thinned[key][-record.FULL_ROWS:] == unthinned[key][-record.FULL_ROWS:], key
    # One width for the whole older part: the first half of the run is as finely kept as the rest of the
    # older rows (merging pairs of old rows over and over leaves the oldest 90% of a run in one row).
    steps = thinned["steps"]
    first_half = steps[:bisect.bisect_right(steps, steps[-1] // 2)]
    gaps = [b - a for a, b in zip(first_half, first_half[1:])]
    assert len(first_half) > record.OLD_ROWS / 4 and max(gaps) < 1.5 * min(gaps)
    assert steps == sorted(set(steps))


def test_each_thinned_row_sums_up_the_rows_it_replaced(thinned, unthinned):
    raw = unthinned["steps"]
    before = 0
    for i, step in enumerate(thinned["steps"]):
        a, b = bisect.bisect_right(raw, before), bisect.bisect_right(raw, step)  # raw rows (before, step]
        assert b > a and raw[b - 1] == step
        for key in ("epochs", "learning_rate", "val_loss", "perplexity"):  # the last value measured
            measured = [v for v in unthinned[key][a:b] if v is not None]
            assert thinned[key][i] == (measured[-1] if measured else None), (key, step)
        skipped = [v for v in unthinned["skipped_steps"][a:b] if v is not None]
        assert thinned["skipped_steps"][i] == (sum(skipped) if skipped else None)
        losses = [v for v in unthinned["train_loss"][a:b] if v is not None]  # every 10 steps: equal weights
        mean = sum(losses) / len(losses) if losses else None
        assert thinned["train_loss"][i] == (pytest.approx(mean, rel=1e-12) if losses else None), step
        before = step
    assert sum(v is not None for v in thinned["val_loss"]) > record.OLD_ROWS / 4  # evaluations still plotted


def test_a_resumed_run_keeps_the_same_record_as_an_uninterrupted_one(tmp_path, thinned):
    history = record.new_history()
    for start, stop in ((0, 143_000), (143_000, 143_005), (143_005, 390_017), (390_017, 600_000)):
        feed(history, start, stop)
        ckpt.write_file(tmp_path / "baton.safetensors", {"history": record.pack(history)}, {"kind": "train"})
        history = record.unpack(ckpt.load(tmp_path / "baton.safetensors").state["history"])
    assert history == thinned
    once = record.thinned(thinned)
    assert record.thinned(once) == once and len(once["steps"]) < len(thinned["steps"])  # each bucket one row


def same(a, b):
    """Equal values of the same types, floats bit for bit (-0.0 is not 0.0), dict keys in the same order."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def test_pack_and_unpack_give_back_exactly_the_record(tmp_path):
    history = {
        "steps": [1, 2, 3, 2**62], "epochs": [0, 0, 1, 1],
        "learning_rate": [1e-3, 0.1 + 0.2, 5e-324, 1.7976931348623157e308],
        "train_loss": [-0.0, None, 2.5, None], "val_loss": [None, None, None, None],
        "parts": [{"part": 1, "start_step": 0}], "recoveries": [], "nonfinite": [{"step": 2, "key": "train_loss",
                                                                                   "value": "nan"}],
        "done": [None, True, False, None], "mixed": [1, 2.0, None, 3], "huge": [2**70, None, 1, 2],
        "nan": [float("nan"), 1.0, None, 2.0], "skipped_steps": [None, 3, None, 0],
    }
    assert set(record.pack(history)["lists"]) == {"mixed", "huge", "nan"}  # exact only as lists
    ckpt.write_file(tmp_path / "r.safetensors", {"history": record.pack(history)}, {"kind": "train"})
    back = record.unpack(ckpt.load(tmp_path / "r.safetensors").state["history"])
    nan = back.pop("nan")
    assert math.isnan(nan[0]) and nan[1:] == [1.0, None, 2.0]
    del history["nan"]
    assert same(back, history)
    # The held-in-memory roll-back point (a host copy of the state) holds the packed record too.
    assert same(record.unpack(divergence.host_copy({"history": record.pack(history)})["history"]), history)
    # A checkpoint holds no NaN: None is a row left out of "measured", not a NaN in the payload.
    tensors, _ = ckpt.flatten_state(record.pack(history))
    assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())
    empty = record.new_history()
    assert record.unpack(divergence.host_copy({"h": record.pack(empty)})["h"]) == empty


def test_unpack_reads_the_plain_lists_of_older_checkpoints():
    stored = ckpt.load(os.path.join(FIXTURES, "lm_part2_expected.safetensors")).state["history"]
    assert isinstance(stored["steps"], list) and len(stored["steps"]) == 14
    history = record.unpack(stored)
    assert same(history, stored)
    history["steps"].append(15)
    history["parts"][0]["part"] = 9
    assert len(stored["steps"]) == 14 and stored["parts"][0]["part"] == 1  # a copy
    assert same(record.unpack(record.pack(record.unpack(stored))), stored)


def header_bytes(path):
    with open(path, "rb") as f:
        return struct.unpack("<Q", f.read(8))[0]


def test_the_checkpoint_header_does_not_grow_with_the_run(tmp_path, unthinned):
    history, sizes = record.new_history(), []
    for stop in (200_000, 700_000, 1_000_000):  # 28,000, 98,000 and 140,000 rows recorded
        feed(history, history["steps"][-1] if history["steps"] else 0, stop)
        path = tmp_path / f"at_{stop}.safetensors"
        ckpt.write_file(path, {"history": record.pack(history), "model": {"w": torch.zeros(4)}}, {"kind": "train"})
        sizes.append((header_bytes(path), os.path.getsize(path)))
    indexes = [ckpt.read_header(tmp_path / f"at_{stop}.safetensors")["state"] for stop in (200_000, 700_000, 1_000_000)]
    assert indexes[0] == indexes[1] == indexes[2]  # the same index of the same series: no row in the header
    headers = [header for header, _ in sizes]
    assert max(headers) < 4_000 and max(headers) - min(headers) <= 16  # only the byte offsets' digits grow
    # the payload: at most MAX_ROWS rows of 7 series, 8 bytes a value and 1 a "measured" flag
    assert all(size < record.MAX_ROWS * 7 * 9 + 8_000 for _, size in sizes)
    assert len(json.dumps(unthinned)) > 1000 * sizes[2][0]  # what the header held before: every row as JSON


def test_nonfinite_notes_keep_the_newest_and_count_the_rest():
    history = record.new_history()
    for step in range(1, 251):
        record.record(history, steps=step, epochs=0, learning_rate=1e-3, train_loss=float("nan") if step % 2 else 1.0,
                      val_loss=float("inf") if step == 250 else None)
    notes = history["nonfinite"]
    assert len(notes) == record.NONFINITE_KEEP + 1 and notes[0] == {"dropped": 26, "last_step": 51}
    assert notes[1] == {"step": 53, "key": "train_loss", "value": "nan"}
    assert notes[-1] == {"step": 250, "key": "val_loss", "value": "inf"}
    assert history["train_loss"][:2] == [None, 1.0]


def test_metrics_and_plots_of_a_long_record_stay_bounded(tmp_path, monkeypatch, unthinned):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.axes
    drawn, real = [], matplotlib.axes.Axes.plot

    def plot(self, *args, **kwargs):
        drawn.append(len(args[0]))
        return real(self, *args, **kwargs)
    monkeypatch.setattr(matplotlib.axes.Axes, "plot", plot)
    record.write_plots(tmp_path, unthinned)  # 72,000 rows an older version kept: drawn thinned
    assert drawn and max(drawn) <= record.MAX_ROWS and len(unthinned["steps"]) == 72_000
    assert (tmp_path / "training_curve.png").stat().st_size > 0 and (tmp_path / "loss_by_epoch.png").exists()
    history = record.thinned(unthinned)
    record.write_metrics(tmp_path, history)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written == history and list(written) == list(unthinned)  # the seeds' shape: parallel lists + events
