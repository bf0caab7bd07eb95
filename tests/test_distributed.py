"""Two processes under torchrun on CPU (gloo): one checkpoint per save point, exact resume, a change
of process count, and SIGTERM to one rank."""

import os
import signal
import subprocess
import sys
import time

import torch

import ckpt
from conftest import assert_same_tensors, tiny_lm_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 1,680 bytes -> 23 micro-batches of 4 -> 11 per rank with 2 ranks -> 6 steps per epoch (grad_accum 2)
TINY = tiny_lm_args(dropout=0.2, attn_dropout=0.1, save_every_steps=3)


def launch(out, corpus, *extra, processes=2):
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
           if processes > 1 else [sys.executable])
    cmd += [os.path.join(ROOT, "train_part.py"), "--task", "lm", "--out", str(out), "--data", corpus, *TINY, *extra]
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
    assert saved.state["history"]["val_loss"][3] is not None  # evaluated at step 4, over both ranks' shares


def test_resume_with_two_processes_is_bit_identical(tmp_path, corpus):
    finish(launch(tmp_path / "straight", corpus, "--max-steps", "9"))
    finish(launch(tmp_path / "legs", corpus, "--max-steps", "4"))
    finish(launch(tmp_path / "legs", corpus, "--max-steps", "9", "--part", "2"))
    a = ckpt.load(tmp_path / "straight" / "checkpoint_part1.safetensors")
    b = ckpt.load(tmp_path / "legs" / "checkpoint_part2.safetensors")
    assert_same_tensors(a, b)
    ha = {k: v for k, v in a.state["history"].items() if k != "parts"}
    hb = {k: v for k, v in b.state["history"].items() if k != "parts"}
    assert ha == hb


def test_a_two_process_checkpoint_resumes_in_one_process_with_a_warning(tmp_path, corpus):
    out = tmp_path / "run"
    finish(launch(out, corpus, "--max-steps", "4"))
    two = ckpt.load(out / "checkpoint_part1.safetensors")
    assert two.state["progress"]["batch_in_epoch"] == 8  # 4 steps x 2 micro-batches, on each rank
    printed = finish(launch(out, corpus, "--max-steps", "5", "--part", "2", processes=1))
    assert "was written by 2 process(es) and this run has 1" in printed and "same sample position" in printed
    one = ckpt.load(out / "checkpoint_part2.safetensors")
    # global batch 16 (8 per rank x 2), then one step of 2 micro-batches
    assert one.meta["world_size"] == 1 and one.meta["global_step"] == 5
    assert one.state["progress"]["batch_in_epoch"] == 18


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
    events = saved.state["history"]["recoveries"]
    assert [(e["step"], e["back_to"], e["skipped_steps"]) for e in events] == [(5, 3, [4, 5])]
    assert saved.meta["global_step"] == 9 and saved.meta["world_size"] == 2
    for name in os.listdir(out):
        if name.endswith(".safetensors"):
            for key, t in tensors(ckpt.load(out / name), "model").items():
                assert torch.isfinite(t).all(), (name, key)
