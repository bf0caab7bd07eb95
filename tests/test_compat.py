"""Batons written by an older version of Baton still load and continue bit for bit.

The fixtures in tests/fixtures/baton_v1/ were written by the code before train_part.py was
restructured (see the README there): resuming their part 1 with today's code must give exactly
the part 2 that the old code wrote."""

import os
import shutil
import time

import pytest
import torch

import ckpt
import train_part

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "baton_v1")
LM = ["--set", "n_layer=1", "--set", "n_head=2", "--set", "n_embd=16", "--set", "block_size=16",
      "--set", "batch_size=4", "--set", "grad_accum=2", "--set", "eval_every_steps=4", "--set", "eval_batches=2",
      "--set", "warmup_steps=3", "--set", "log_every_steps=1", "--set", "save_every_steps=0",
      "--set", "dropout=0.2", "--set", "attn_dropout=0.1"]
REG = ["--set", "n_layer=1", "--set", "n_head=2", "--set", "n_embd=16", "--set", "hidden=16",
       "--set", "block_size=32", "--set", "batch_size=16", "--set", "dropout=0.2", "--set", "eval_every_steps=3",
       "--set", "warmup_steps=2", "--set", "log_every_steps=1", "--set", "save_every_steps=0",
       "--set", "numeric_columns=carat,depth,table,x,y,z"]


def assert_same_state(a, b):
    """Every tensor and every JSON value of two training states is equal (the config in the header
    may differ: it records the data path, which is another folder here)."""
    # Today's state adds `good` (the roll-back point) and `watch` (training/divergence.py), and the record may add empty
    # event lists: a newer version adds keys, it never changes the ones an old file has.
    added = {k: v for k, v in a.state.items() if k not in b.state}
    assert set(added) <= {"good", "watch"}
    history_added = {k: v for k, v in a.state["history"].items() if k not in b.state["history"]}
    assert all(v == [] for v in history_added.values()), history_added
    a_state = {k: v for k, v in a.state.items() if k in b.state}
    a_state["history"] = {k: v for k, v in a.state["history"].items() if k in b.state["history"]}
    # Each part's entry now also notes where it ended and its step rate (training/record.py close_part).
    rates = ("end_step", "seconds", "steps_per_hour", "steps_per_second")
    a_state["history"]["parts"] = [{k: v for k, v in p.items() if k not in rates} for p in a.state["history"]["parts"]]
    assert all(k in a.state["history"]["parts"][-1] for k in rates)
    ta, skeleton_a = ckpt.flatten_state(a_state)
    tb, skeleton_b = ckpt.flatten_state(b.state)
    assert skeleton_a == skeleton_b  # progress, best, history (every loss and metric), sampler, scheduler
    assert ta.keys() == tb.keys()
    for name in ta:
        assert ta[name].dtype == tb[name].dtype and torch.equal(ta[name], tb[name]), name
    for key in ("task", "kind", "part", "epoch", "step_in_epoch", "global_step", "data_fingerprint"):
        assert a.meta.get(key) == b.meta.get(key), key
    # task_meta may gain keys (lm's `corpus`, what its token file was made from), never change one.
    assert {k: a.meta["task_meta"].get(k) for k in b.meta["task_meta"]} == b.meta["task_meta"]
    assert set(a.meta["task_meta"]) - set(b.meta["task_meta"]) <= {"corpus"}
    # A model config may gain fields with defaults (reg's `loss`), never lose or change one.
    assert {k: a.meta["model_config"].get(k) for k in b.meta["model_config"]} == b.meta["model_config"]


@pytest.mark.parametrize("task", ["lm", "reg"])
def test_an_old_baton_resumes_bit_exactly(tmp_path, corpus, task):
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(os.path.join(FIXTURES, f"{task}_part1.safetensors"), out / "checkpoint_part1.safetensors")
    settings, steps = (LM + ["--data", corpus], 14) if task == "lm" else (REG, 9)
    assert train_part.main(["--task", task, "--part", "2", "--out", str(out), "--max-steps", str(steps)] + settings,
                           started=time.time()) == 0
    expected = ckpt.load(os.path.join(FIXTURES, f"{task}_part2_expected.safetensors"))
    assert_same_state(ckpt.load(out / "checkpoint_part2.safetensors"), expected)
