"""training/budget.py: a part stops in time for its hand-off to land before the deadline, counted
from Python's start; a slow disk's saves are allowed for; a budget too small for one step is one
sentence, and a budget is used, not left over.

Real processes (test_train.py's `spawn`, or a shell), as the clock of a session is the real one; the
in-process runs are test_train.py's tiny lm part."""

import os
import re
import subprocess
import sys
import time

import pytest

import ckpt
import train_part
from conftest import tiny_lm_args
from test_train import TINY, final_state, spawn, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_budget_counts_from_pythons_start_not_the_shells(tmp_path, corpus):
    # `pip install ... && python train_part.py ...`: the shell's time before it runs Python is not the part's
    script = (f"sleep 4; exec {sys.executable} -u train_part.py --task lm --out {tmp_path} --data {corpus} "
              f"--budget-hours {16 / 3600} " + " ".join(tiny_lm_args()))  # room for a cold start-up (~8 s)
    t0 = time.time()
    done = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    total = time.time() - t0
    assert done.returncode == 0, done.stderr
    wall = float(done.stdout.split("time: ")[1].split(" s wall")[0])
    assert wall <= 16.0 and total >= 4.0 + wall - 0.5
    steps = int(done.stdout.split("at global step ")[1].split()[0])
    assert steps > 0


def test_slow_disk_final_save_still_lands_inside_the_budget(tmp_path, corpus, monkeypatch):
    real_write = ckpt.write_file

    def slow_write(path, state, meta):  # a disk that takes 0.8 s per file, whatever its size
        time.sleep(0.8)
        return real_write(path, state, meta)

    monkeypatch.setattr(ckpt, "write_file", slow_write)
    budget_s = 8.0
    started = time.time()
    code = train_part.main(["--task", "lm", "--out", str(tmp_path / "run"), "--data", corpus, "--budget-hours",
                            str(budget_s / 3600), *TINY, "--set", "save_every_steps=5"], started=started)
    elapsed = time.time() - started
    assert code == 0 and elapsed < budget_s
    assert final_state(tmp_path / "run", 1).meta["global_step"] > 0


def test_a_budget_too_small_for_one_step_is_an_error_that_keeps_checkpoints(tmp_path, corpus):
    out = tmp_path / "run"
    assert train(out, corpus, "--max-steps", "2") == 0
    before = (out / ckpt.handoff_name(1)).read_bytes()
    proc = spawn(out, corpus, "--budget-hours", str(1.0 / 3600))  # 1 s: start-up alone takes longer
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "too small" in stderr and "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1
    assert (out / ckpt.handoff_name(1)).read_bytes() == before
    assert not (out / ckpt.handoff_name(2)).exists()


def test_wall_clock_budget_is_used_and_respected(tmp_path, corpus):
    budget_s = 14.0
    t0 = time.time()
    proc = spawn(tmp_path / "run", corpus, "--budget-hours", str(budget_s / 3600), "--set", "epochs=1000")
    stdout, stderr = proc.communicate(timeout=60)
    elapsed = time.time() - t0
    assert proc.returncode == 0, stderr
    assert 0.75 * budget_s <= elapsed < budget_s, elapsed
    assert "stopped: time budget" in stdout
    assert final_state(tmp_path / "run", 1).meta["global_step"] > 0
    assert "next: python train_part.py --task lm --part 2" in stdout


def test_the_time_line_gives_the_first_step_apart_and_the_steady_pace(tmp_path, corpus, capsys):
    # tiny_lm_args: 12 steps an epoch of 2 micro-batches of 4 x 16 tokens, the last one of 1: 1,472 tokens.
    assert train_part.main(["--task", "lm", "--out", str(tmp_path), "--data", corpus, "--max-steps", "12",
                            *tiny_lm_args()], started=time.time()) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("time: "))
    found = re.search(r"steps ([\d.]+) s \([\d.]+%; first step ([\d.]+) s with warm-up, then ([\d.]+) ms a step: "
                      r"([\d,]+) tokens a second\)", line)
    assert found, line
    steps, first, pace, rate = (float(g.replace(",", "")) for g in found.groups())
    assert abs(first + 11 * pace / 1000 - steps) <= 0.11 + 0.01 * steps  # the first step and 11 at the pace (rounded)
    assert rate * 11 * pace / 1000 == pytest.approx(1472 - 128, rel=0.03)  # steps 2-12: 10 x 128 + 64 tokens
    assert "compilation" not in line and "MFU" not in line  # no torch.compile; MFU only on a GPU
