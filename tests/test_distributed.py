"""Two processes under torchrun on CPU (gloo): one checkpoint per save point, exact resume, a change
of process count, and SIGTERM to one rank."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import ckpt
from conftest import assert_same_tensors, tiny_lm_args
from test_asr import TINY as ASR_TINY
from test_asr import clips  # noqa: F401  (a fixture)
from training.record import unpack

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 1,680 bytes -> 23 micro-batches of 4 -> 11 per rank with 2 ranks -> 6 steps per epoch (grad_accum 2)
TINY = tiny_lm_args(dropout=0.2, attn_dropout=0.1, save_every_steps=3)


def launch(out, corpus, *extra, processes=2, settings=TINY):
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
           if processes > 1 else [sys.executable])
    cmd += [os.path.join(ROOT, "train_part.py"), "--task", "lm", "--out", str(out), "--data", corpus, *settings, *extra]
    env = {**os.environ, "BATON_INPUT_ROOTS": "", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc, timeout=300):
    stdout, stderr = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, stderr[-3000:]
    return stdout


def tensors(saved, section):
    return ckpt.flatten_state(saved.state[section])[0]


def test_two_processes_write_one_checkpoint_per_save_point(tmp_path, corpus):
    out = tmp_path / "run"
    printed = finish(launch(out, corpus, "--max-steps", "8"))
    assert "cpu x 2 processes" in printed and "next: torchrun --nproc_per_node 2 train_part.py" in printed
    assert sorted(n for n in os.listdir(out) if n.endswith(".safetensors")) == sorted(
        ["best_model.safetensors", "checkpoint_part1.safetensors", ckpt.rolling_name(0, 3, 3), ckpt.rolling_name(1, 0, 6)])
    saved = ckpt.load(out / "checkpoint_part1.safetensors")
    assert saved.meta["world_size"] == 2 and saved.meta["global_step"] == 8
    assert len(saved.state["rng"]) == 2  # every rank's RNG, and the ranks draw differently
    assert not torch.equal(saved.state["rng"][0]["torch"], saved.state["rng"][1]["torch"])
    assert unpack(saved.state["history"])["val_loss"][3] is not None  # evaluated at step 4, over both ranks' shares


def test_resume_with_two_processes_is_bit_identical(tmp_path, corpus):
    finish(launch(tmp_path / "straight", corpus, "--max-steps", "9"))
    finish(launch(tmp_path / "legs", corpus, "--max-steps", "4"))
    finish(launch(tmp_path / "legs", corpus, "--max-steps", "9", "--part", "2"))
    a = ckpt.load(tmp_path / "straight" / "checkpoint_part1.safetensors")
    b = ckpt.load(tmp_path / "legs" / "checkpoint_part2.safetensors")
    assert_same_tensors(a, b)
    ha = {k: v for k, v in unpack(a.state["history"]).items() if k != "parts"}
    hb = {k: v for k, v in unpack(b.state["history"]).items() if k != "parts"}
    assert ha == hb


# Dropout off: with it, each rank draws its own masks, and another number of ranks other ones. No
# grad_accum: a part that sets it keeps it, one that does not scales it to the number of processes.
STILL = [arg for pair in zip(*[iter(tiny_lm_args(dropout=0, attn_dropout=0))] * 2)
         if not pair[1].startswith("grad_accum=") for arg in pair]
# Against an uninterrupted run, weights differ by rounding only: the same micro-batches make each step,
# but their gradients are summed in another order (one process's accumulation against DDP's average of
# two). Measured: at most 2.6e-7 after 10 steps (2 -> 1 and 1 -> 2), while one AdamW step at lr 1e-3
# moves a weight by up to 1e-3: 1e-5 fails any step that took other samples or another learning rate.
ATOL = 1e-5


def assert_same_run(a, b):
    assert a.state["progress"] == b.state["progress"]
    assert unpack(a.state["history"])["steps"] == unpack(b.state["history"])["steps"]
    assert unpack(a.state["history"])["learning_rate"] == unpack(b.state["history"])["learning_rate"]  # exactly: the same plan
    for x, y in zip(unpack(a.state["history"])["train_loss"], unpack(b.state["history"])["train_loss"]):
        assert x == pytest.approx(y, rel=ATOL)
    for name, tensor in a.state["model"].items():
        torch.testing.assert_close(b.state["model"][name], tensor, rtol=ATOL, atol=ATOL, msg=name)


@pytest.mark.parametrize("before, after", [(2, 1), (1, 2)])
def test_another_number_of_processes_continues_the_same_run(tmp_path, corpus, before, after):
    # A step is 4 micro-batches: grad_accum 2 x 2 processes, or 4 x 1. 23 micro-batches an epoch, so
    # 6 steps, the last one of 3 (two for rank 0, one for rank 1); 10 steps cross an epoch.
    accum = {1: "4", 2: "2"}
    straight, legs = tmp_path / "straight", tmp_path / "legs"
    first = ["--set", f"grad_accum={accum[before]}"]
    finish(launch(straight, corpus, "--max-steps", "10", *first, processes=before, settings=STILL))
    finish(launch(legs, corpus, "--max-steps", "4", *first, processes=before, settings=STILL))
    printed = finish(launch(legs, corpus, "--max-steps", "10", "--part", "2", processes=after, settings=STILL))
    assert f"grad_accum {accum[before]} -> {accum[after]} keeps a step at 4 micro-batches" in printed
    a = ckpt.load(straight / "checkpoint_part1.safetensors")
    b = ckpt.load(legs / "checkpoint_part2.safetensors")
    assert b.meta["world_size"] == after and b.meta["config"]["grad_accum"] == int(accum[after])
    assert a.state["progress"]["batch_in_epoch"] == 16  # 4 steps into the second epoch, of all ranks
    assert_same_run(a, b)


def test_no_parameter_is_left_unused_under_ddp(tmp_path, clips):
    # wav2vec2 without time masking and without LayerDrop never uses masked_spec_embed; DDP must know
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "train_part.py"), "--task", "asr", "--out", str(tmp_path / "run"),
           "--data", str(clips), *ASR_TINY, "--set", "mask_time_prob=0",
           "--set", "layerdrop=0", "--set", "eval_every_steps=0", "--max-steps", "3"]
    env = {**os.environ, "BATON_INPUT_ROOTS": "", "OMP_NUM_THREADS": "1"}
    finish(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    assert ckpt.load(tmp_path / "run" / "checkpoint_part1.safetensors").meta["global_step"] == 3


def worker_pids(parent):
    """The torchrun workers (children of the launcher) and their ranks, from /proc."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != parent:
                continue
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
            found[int(env[b"RANK"])] = int(pid)
        except (OSError, KeyError, ValueError):
            continue
    return found


def test_sigterm_to_one_rank_stops_both_with_one_checkpoint(tmp_path, corpus):
    out = tmp_path / "run"
    proc = launch(out, corpus, "--set", "epochs=10000", "--set", "save_every_steps=0")
    for line in proc.stdout:
        if line.startswith("model:"):
            break
    time.sleep(1.0)
    ranks = worker_pids(proc.pid)
    assert set(ranks) == {0, 1}
    t0 = time.time()
    os.kill(ranks[1], signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-3000:]
    assert time.time() - t0 < 30
    assert "stopped: signal on another process" in stdout
    training_states = [n for n in os.listdir(out) if n.endswith(".safetensors") and n != ckpt.BEST_NAME]
    assert training_states == ["checkpoint_part1.safetensors"]  # one file, not one per rank
    assert ckpt.load(out / "checkpoint_part1.safetensors").meta["global_step"] > 0


def test_a_divergence_on_one_rank_is_recovered_by_both_alike(tmp_path, corpus):
    # the NaN reaches only rank 1's loss; the gradient exchange carries it to both, the check at step 5
    # (every step logs here) sees it in the sum over ranks, and both roll back to the save at step 3
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "tests", "poisoned_part.py"), "--task", "lm", "--out", str(out), "--data", corpus,
           *TINY, "--max-steps", "9"]
    env = {**os.environ, "BATON_INPUT_ROOTS": "", "OMP_NUM_THREADS": "1", "BATON_POISON": "5:nan@1"}
    finish(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    saved = ckpt.load(out / "checkpoint_part1.safetensors")
    events = unpack(saved.state["history"])["recoveries"]
    assert [(e["step"], e["back_to"], e["skipped_steps"]) for e in events] == [(5, 3, [4, 5])]
    assert saved.meta["global_step"] == 9 and saved.meta["world_size"] == 2
    for name in os.listdir(out):
        if name.endswith(".safetensors"):
            for key, t in tensors(ckpt.load(out / name), "model").items():
                assert torch.isfinite(t).all(), (name, key)
