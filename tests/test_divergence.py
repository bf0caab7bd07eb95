"""A diverging run never writes a non-finite state, rolls back and goes on, and decides the same
whether it was interrupted or not.

Divergence is caused two ways: for real, with a learning rate far too high (the lm run below, as a
user would), and by a poisoned data window: `poison` makes the loss of chosen optimizer steps
NaN (or huge, or infinite), the way a corrupt clip or a bad batch does, so the NaN reaches the
gradients and, unchecked, the weights. The steps are global optimizer steps (1-based), so a
resumed run meets the same poison at the same step, as it would meet the same bad data.
"""

import json
import math
import os
import time

import pytest
import torch

import ckpt
import train_part
from training import divergence, record
from training.tasks import TASKS
from conftest import assert_same_tensors, tiny_lm_args
from test_asr import TINY as ASR_TINY
from test_asr import clips  # noqa: F401  (a fixture)
from test_reg import BOTH, TINY as REG_TINY
from test_reg import small_table  # noqa: F401  (a fixture)
from training.record import unpack


@pytest.fixture
def poison(monkeypatch):
    """poison({step: factor}): the loss of those optimizer steps is multiplied by the factor."""
    def install(factors):
        real = train_part.train_step

        def poisoned(part, micro_batches, lr):
            factor = factors.get(part.position.global_step + 1)
            if factor is None:
                return real(part, micro_batches, lr)
            model = part.train_model

            def blown(**inputs):
                output, loss_sum = model(**inputs)
                return output, loss_sum * factor
            part.train_model = blown
            try:
                return real(part, micro_batches, lr)
            finally:
                part.train_model = model
        monkeypatch.setattr(train_part, "train_step", poisoned)
    return install


def run(task, out, data, *extra, part=1):
    tiny = {"lm": tiny_lm_args(), "asr": ASR_TINY, "reg": REG_TINY + BOTH}[task]
    return train_part.main(["--task", task, "--part", str(part), "--out", str(out), "--data", str(data), *tiny,
                            *extra], started=time.time())


def strict_json(path):
    def refuse(name):
        raise ValueError(f"{path} holds a bare {name}")
    with open(path) as f:
        return json.load(f, parse_constant=refuse)


def assert_every_file_finite(out):
    files = [name for name in os.listdir(out) if name.endswith(".safetensors")]
    assert files
    for name in files:
        tensors, _ = ckpt.flatten_state(ckpt.load(os.path.join(out, name)).state)
        for key, t in tensors.items():
            assert not t.is_floating_point() or torch.isfinite(t).all(), f"{name}: {key} is not finite"


@pytest.mark.parametrize("task", ["lm", "asr", "reg"])
def test_a_poisoned_window_is_rolled_back_and_skipped(tmp_path, poison, request, task):
    data = request.getfixturevalue({"lm": "corpus", "asr": "clips", "reg": "small_table"}[task])
    poison({8: float("nan")})
    out = tmp_path / "run"
    assert run(task, out, data, "--max-steps", "14", "--set", "save_every_steps=3", "--set", "keep_last=1") == 0
    assert_every_file_finite(out)
    history = strict_json(out / "metrics.json")
    # checked at step 8 (every step logs here): back to the save at step 6, the data of 7-8 skipped
    assert history["recoveries"] == [{"step": 8, "part": 1, "seen": "a non-finite gradient norm", "back_to": 6,
                                      "skipped_steps": [7, 8], "lr_factor": 0.5}]
    losses = dict(zip(history["steps"], history["train_loss"]))
    assert 8 not in losses and all(math.isfinite(losses[s]) for s in range(9, 15))  # recovered
    # the learning rate is the plan's before the recovery, and half of it after
    handoff = ckpt.load(out / "checkpoint_part1.safetensors")
    cfg = TASKS[task].config(**handoff.meta["config"])
    steps_per_epoch = math.ceil(handoff.state["sampler"]["batches_per_epoch"] / cfg.grad_accum)
    rates = dict(zip(history["steps"], history["learning_rate"]))
    for step, scale in ((7, 1.0), (9, 0.5), (14, 0.5)):
        assert rates[step] == pytest.approx(scale * train_part.learning_rate(step - 1, cfg, steps_per_epoch))
    assert handoff.meta["global_step"] == 14


def test_a_run_that_keeps_diverging_stops_with_the_last_good_state(tmp_path, corpus, capsys, poison):
    out = tmp_path / "run"
    # The default model on the embedded corpus, and every step from 12 on made to diverge, whatever is
    # skipped and however low the learning rate goes. (A real one, lr=50, diverges at steps that depend
    # on one CPU's rounding: it gave up after 4 tries here, and recovered twice elsewhere.)
    poison({step: float("nan") for step in range(12, 61)})
    assert train_part.main(["--task", "lm", "--out", str(out), "--max-steps", "60",
                            "--set", "save_every_steps=10", "--set", "keep_last=2", "--set", "eval_every_steps=20"],
                           started=time.time()) == 0
    printed = capsys.readouterr()
    assert_every_file_finite(out)
    history = strict_json(out / "metrics.json")
    events = history["recoveries"]
    assert len(events) == 4 and len({e["back_to"] for e in events}) == 1  # three recoveries, then it gives up
    good = events[0]["back_to"]
    handoff = ckpt.load(out / "checkpoint_part1.safetensors")
    rolling = ckpt.load(out / ckpt.rolling_name(0, good, good))  # never pruned: the newest finite state
    for name, tensor in handoff.state["model"].items():
        assert torch.equal(tensor, rolling.state["model"][name]), name
    assert "stopped: diverged" in printed.out
    assert f"training diverged 4 times after step {good}" in printed.err and "--set lr" in printed.err
    best = out / ckpt.BEST_NAME
    assert not best.exists() or math.isfinite(ckpt.load(best).meta["metrics"]["val_loss"])


def final(out, part):
    return ckpt.load(os.path.join(out, ckpt.handoff_name(part)))


@pytest.mark.parametrize("stops", [
    (14,),     # between the NaN at 13 and its check at 16: the hand-off is the good state of step 10
    (20, 55),  # after the recovery at 16; then after the save at 50, before the spike at 57
])
def test_a_recovery_resumes_bit_exactly(tmp_path, poison, corpus, stops):
    # The NaN at 13 is seen at the evaluation of step 16 (back to the save at 10). The spike at 57 (a loss
    # 10,000 x too high, finite) is judged on the 10 steps logged at 60: back to the save at 50, which the
    # run resumed at 55 must find beside its hand-off to go back where the uninterrupted run goes.
    poison({13: float("nan"), 57: 1e4})
    settings = ["--set", "log_every_steps=10", "--set", "save_every_steps=10", "--set", "keep_last=3"]
    assert run("lm", tmp_path / "straight", corpus, "--max-steps", "70", *settings) == 0
    for part, stop in enumerate(list(stops) + [70], start=1):
        assert run("lm", tmp_path / "parts", corpus, "--max-steps", str(stop), *settings, part=part) == 0
    a, b = final(tmp_path / "straight", 1), final(tmp_path / "parts", len(stops) + 1)
    events = unpack(a.state["history"])["recoveries"]
    assert [(e["step"], e["back_to"]) for e in events] == [(16, 10), (60, 50)] and "spike" in events[1]["seen"]
    assert_same_training(a, b)
    assert_every_file_finite(tmp_path / "parts")


def test_a_save_the_clock_asks_for_writes_nothing_from_a_diverged_state(tmp_path, poison, corpus):
    # a rolling save is due at every step by the clock; the NaN at 9 is decided at the log of step 12
    poison({9: float("nan")})
    out = tmp_path / "run"
    assert run("lm", out, corpus, "--max-steps", "16", "--set", "log_every_steps=4", "--set", "eval_every_steps=4",
               "--set", "save_every_minutes=1e-6", "--set", "keep_last=20") == 0
    history = strict_json(out / "metrics.json")
    assert [(e["step"], e["back_to"]) for e in history["recoveries"]] == [(12, 8)]
    steps = sorted(int(ckpt.ROLLING_RE.match(n).group(3)) for n in os.listdir(out) if ckpt.ROLLING_RE.match(n))
    assert steps == [1, 2, 3, 4, 5, 6, 7, 8, 13, 14, 15, 16]  # none from 9 to 12
    assert_every_file_finite(out)


def assert_same_training(a, b):
    assert a.meta["global_step"] == b.meta["global_step"]
    assert_same_tensors(a, b, ("model", "optimizer", "rng", "scaler"))
    def same_run(history):  # which part a recovery happened in is the one thing allowed to differ
        events = [{k: v for k, v in e.items() if k != "part"} for e in history["recoveries"]]
        return {**{k: v for k, v in history.items() if k != "parts"}, "recoveries": events}
    assert same_run(unpack(a.state["history"])) == same_run(unpack(b.state["history"]))  # losses, LRs, recoveries


def test_fp16_overflow_is_counted_and_a_collapsed_scale_is_recovered(tmp_path, poison, corpus, capsys):
    out = tmp_path / "run"
    # Steps 3-5 overflow: the scaler skips them (the weights stay as they were) and halves its scale, 2^16
    # -> 2^13; counted, not diverging. From step 8 every step overflows: the 14th skip (step 21) takes the
    # scale to 2^-1, a collapse, which counts as diverging: back to the save at step 18.
    poison({s: float("inf") for s in [3, 4, 5] + list(range(8, 22))})
    assert run("lm", out, corpus, "--amp", "fp16", "--max-steps", "30", "--set", "save_every_steps=6") == 0
    printed = capsys.readouterr().out
    history = strict_json(out / "metrics.json")
    skipped = dict(zip(history["steps"], history["skipped_steps"]))
    assert [s for s, n in skipped.items() if n] == [3, 4, 5] + list(range(8, 21))  # 21 was not logged: rolled back
    assert [(e["step"], e["back_to"]) for e in history["recoveries"]] == [(21, 18)]
    assert "loss scale collapsed to 0.5" in history["recoveries"][0]["seen"]
    losses = dict(zip(history["steps"], history["train_loss"]))
    assert losses[5] is None and all(math.isfinite(losses[s]) for s in range(22, 31))
    assert_every_file_finite(out)
    assert "fp16: the GradScaler skipped 17 of this part's steps" in printed


def test_strict_record_and_the_rules():
    history = record.new_history()
    record.record(history, steps=1, epochs=0, learning_rate=1e-3, train_loss=float("nan"))
    record.record(history, steps=2, epochs=0, learning_rate=1e-3, train_loss=2.0, val_loss=float("inf"))
    assert history["train_loss"] == [None, 2.0] and history["val_loss"] == [None, None]
    assert history["nonfinite"] == [{"step": 1, "key": "train_loss", "value": "nan"},
                                    {"step": 2, "key": "val_loss", "value": "inf"}]
    json.dumps(record.strict({"a": [float("nan"), 1.0]}), allow_nan=False)

    sound = {"loss": 2.0, "skipped": 0, "bad": False, "steps": 10}
    level = [2.0, 2.1, 1.9, 2.0, 2.0]
    assert divergence.symptom(sound, level, None, 3.0) is None
    assert "loss spike (6.1" in divergence.symptom({**sound, "loss": 6.1}, level, None, 3.0)
    assert divergence.symptom({**sound, "loss": 5.9}, level, None, 3.0) is None
    assert divergence.symptom({**sound, "loss": 60.0}, level[:4], None, 3.0) is None  # too little history yet
    assert divergence.symptom({**sound, "loss": 60.0}, level, None, 0) is None         # the rule switched off
    assert divergence.symptom({**sound, "loss": 60.0, "steps": 9}, level, None, 3.0) is None  # too few steps
    assert "non-finite training loss" in divergence.symptom({**sound, "loss": math.inf}, level, None, 3.0)
    assert "gradient" in divergence.symptom({**sound, "bad": True}, level, None, 3.0)
    assert "collapsed" in divergence.symptom(sound, level, 0.5, 3.0)

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    assert divergence.state_symptom(model, optimizer) is None
    optimizer.state[model.weight]["exp_avg_sq"][0, 0] = float("nan")
    assert divergence.state_symptom(model, optimizer) == "a non-finite optimizer exp_avg_sq"


