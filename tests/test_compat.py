"""Batons written by an older version of Baton still load and continue the same run.

The fixtures in tests/fixtures/baton_v1/ were written by the code before train_part.py was
restructured (see the README there), on one machine. Resuming their part 1 with today's code must
give the part 2 that the old code wrote: the same positions, record, sampler, RNG streams and
config exactly, and weights and AdamW moments equal up to float rounding, since another CPU's
kernels (or ATEN_CPU_CAPABILITY=avx2 / default) round matmuls and reductions otherwise. On the
machine running the test, the same resume cut in two is bit-identical to it in one go.

The tolerance: against the fixture, weights differ by at most 6e-7 after the 5 (lm) or 6 (reg)
resumed steps with avx2 or default kernels on an AVX-512 machine, while one AdamW step at lr 1e-3
moves a weight by up to 1e-3. ATOL = 1e-5 passes rounding with a margin of 15 and still fails any
step that took another sample or another learning rate."""

import os
import shutil
import time

import pytest
import torch

import ckpt
import train_part
from conftest import assert_same_tensors
from training.optimizer import OPTIMIZER_FLAGS
from training.record import unpack

ATOL = RTOL = 1e-5  # float rounding across kernel sets; see the docstring

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "baton_v1")
LM = ["--set", "n_layer=1", "--set", "n_head=2", "--set", "n_embd=16", "--set", "block_size=16",
      "--set", "batch_size=4", "--set", "grad_accum=2", "--set", "eval_every_steps=4", "--set", "eval_batches=2",
      "--set", "warmup_steps=3", "--set", "log_every_steps=1", "--set", "save_every_steps=0",
      "--set", "dropout=0.2", "--set", "attn_dropout=0.1"]
REG = ["--set", "n_layer=1", "--set", "n_head=2", "--set", "n_embd=16", "--set", "hidden=16",
       "--set", "block_size=32", "--set", "batch_size=16", "--set", "dropout=0.2", "--set", "eval_every_steps=3",
       "--set", "warmup_steps=2", "--set", "log_every_steps=1", "--set", "save_every_steps=0",
       "--set", "numeric_columns=carat,depth,table,x,y,z"]


def assert_same_values(a, b, where="state"):
    """Two JSON values of the same shape: the same keys, lengths, ints, strings and None, and floats
    equal up to float rounding (a logged loss is a sum of rounded numbers)."""
    if isinstance(b, dict):
        assert isinstance(a, dict) and a.keys() == b.keys(), where
        for k in b:
            assert_same_values(a[k], b[k], f"{where}.{k}")
    elif isinstance(b, list):
        assert isinstance(a, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_values(x, y, f"{where}[{i}]")
    elif isinstance(b, float) and not isinstance(a, bool):
        assert a == pytest.approx(b, rel=RTOL, abs=ATOL), where
    else:
        assert type(a) is type(b) and a == b, where


def without_flags(optimizer_state):
    groups = [{k: v for k, v in g.items() if k not in OPTIMIZER_FLAGS} for g in optimizer_state["param_groups"]]
    return {**optimizer_state, "param_groups": groups}


def assert_same_state(a, b):
    """Every JSON value and every tensor of two training states is the same up to float rounding, and
    what counts (positions, the record's structure, RNG streams, step counts) exactly (the config in
    the header may differ: it records the data path, which is another folder here)."""
    # Today's state adds `good` (the roll-back point) and `watch` (training/divergence.py), and the record may add empty
    # event lists: a newer version adds keys, it never changes the ones an old file has.
    added = {k: v for k, v in a.state.items() if k not in b.state}
    assert set(added) <= {"good", "watch"}
    history_added = {k: v for k, v in unpack(a.state["history"]).items() if k not in unpack(b.state["history"])}
    assert all(v == [] for v in history_added.values()), history_added
    a_state = {k: v for k, v in a.state.items() if k in b.state}
    a_state["history"] = {k: v for k, v in unpack(a.state["history"]).items() if k in unpack(b.state["history"])}
    # Each part's entry now also notes where it ended and its step rate (training/record.py close_part).
    rates = ("end_step", "seconds", "steps_per_hour", "steps_per_second")
    a_state["history"]["parts"] = [{k: v for k, v in p.items() if k not in rates} for p in unpack(a.state["history"])["parts"]]
    assert all(k in unpack(a.state["history"])["parts"][-1] for k in rates)
    # How AdamW runs (fused, foreach) is each run's own choice, not part of what it learned.
    b_state = {**b.state, "optimizer": without_flags(b.state["optimizer"])}
    a_state["optimizer"] = without_flags(a_state["optimizer"])
    ta, skeleton_a = ckpt.flatten_state(a_state)
    tb, skeleton_b = ckpt.flatten_state(b_state)
    assert a.state["progress"] == b.state["progress"] and a.state["sampler"] == b.state["sampler"]
    assert_same_values(skeleton_a, skeleton_b)  # progress, best, history (every loss and metric), sampler, scheduler
    assert ta.keys() == tb.keys()
    for name in ta:
        assert ta[name].dtype == tb[name].dtype and ta[name].shape == tb[name].shape, name
        if ta[name].is_floating_point():  # weights, moments: rounding; RNG states and step counts: exactly
            torch.testing.assert_close(ta[name], tb[name], rtol=RTOL, atol=ATOL, msg=name)
        else:
            assert torch.equal(ta[name], tb[name]), name
    for key in ("task", "kind", "part", "epoch", "step_in_epoch", "global_step", "data_fingerprint"):
        assert a.meta.get(key) == b.meta.get(key), key
    # task_meta may gain keys (lm's `corpus`, what its token file was made from), never change one.
    assert {k: a.meta["task_meta"].get(k) for k in b.meta["task_meta"]} == b.meta["task_meta"]
    assert set(a.meta["task_meta"]) - set(b.meta["task_meta"]) <= {"corpus"}
    # A model config may gain fields with defaults (reg's `loss`), never lose or change one.
    assert {k: a.meta["model_config"].get(k) for k in b.meta["model_config"]} == b.meta["model_config"]


@pytest.mark.parametrize("task", ["lm", "reg"])
def test_an_old_baton_resumes_the_same_run(tmp_path, corpus, task):
    settings, steps = (LM + ["--data", corpus], 14) if task == "lm" else (REG, 9)

    def resume(out, *stops):
        out.mkdir()
        shutil.copy(os.path.join(FIXTURES, f"{task}_part1.safetensors"), out / "checkpoint_part1.safetensors")
        for part, stop in enumerate(stops, start=2):
            assert train_part.main(["--task", task, "--part", str(part), "--out", str(out), "--max-steps", str(stop)]
                                   + settings, started=time.time()) == 0
        return ckpt.load(out / f"checkpoint_part{len(stops) + 1}.safetensors")

    once = resume(tmp_path / "once", steps)
    assert once.meta["config"]["random_draws"] == "rank"  # as it began: one stream of draws per process
    expected = ckpt.load(os.path.join(FIXTURES, f"{task}_part2_expected.safetensors"))
    assert_same_state(once, expected)  # made on another machine: up to float rounding
    twice = resume(tmp_path / "twice", steps - 2, steps)  # on this one: bit for bit
    assert_same_tensors(once, twice, sections=("model", "optimizer", "scaler", "rng"))
    assert unpack(once.state["history"])["train_loss"] == unpack(twice.state["history"])["train_loss"]
