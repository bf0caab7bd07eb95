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


# Dropout and attention dropout on: the draws are keyed by the samples, not the rank (random_draws=sample),
# so another number of ranks draws the same masks. grad_accum comes from each part's own command line.
DROPPING = [arg for pair in zip(*[iter(tiny_lm_args(dropout=0.2, attn_dropout=0.1))] * 2)
            if not pair[1].startswith("grad_accum=") for arg in pair]
# Against an uninterrupted run, weights differ by rounding only: the same micro-batches make each step,
# but their gradients are summed in another order (one process's accumulation against DDP's average of
# two). Measured: at most 3.8e-7 after 10 steps (2 -> 1 and 1 -> 2; with draws per rank, 5.6e-3),
# while one AdamW step at lr 1e-3 moves a weight by up to 1e-3: 1e-5 fails any step that took other
# samples, other masks or another learning rate.
ATOL = 1e-5


def assert_same_run(a, b):
    assert a.state["progress"] == b.state["progress"]
    assert unpack(a.state["history"])["steps"] == unpack(b.state["history"])["steps"]
    assert unpack(a.state["history"])["learning_rate"] == unpack(b.state["history"])["learning_rate"]  # exactly: the same plan
    for x, y in zip(unpack(a.state["history"])["train_loss"], unpack(b.state["history"])["train_loss"]):
        assert x == pytest.approx(y, rel=ATOL)
    for name, tensor in a.state["model"].items():
        torch.testing.assert_close(b.state["model"][name], tensor, rtol=ATOL, atol=ATOL, msg=name)


@pytest.mark.parametrize("before, after, same_line", [(2, 1, True), (1, 2, False)])
def test_another_number_of_processes_continues_the_same_run(tmp_path, corpus, before, after, same_line):
    # A step is 4 micro-batches: grad_accum 2 x 2 processes, or 4 x 1. 23 micro-batches an epoch, so
    # 6 steps, the last one of 3 (two for rank 0, one for rank 1); 10 steps cross an epoch. Part 2 runs
    # the same command line again (its --set grad_accum repeats the checkpoint's: no change asked), or
    # leaves grad_accum out; either way the global batch is kept.
    accum = {1: "4", 2: "2"}
    straight, legs = tmp_path / "straight", tmp_path / "legs"
    first = ["--set", f"grad_accum={accum[before]}"]
    finish(launch(straight, corpus, "--max-steps", "10", *first, processes=before, settings=DROPPING))
    finish(launch(legs, corpus, "--max-steps", "4", *first, processes=before, settings=DROPPING))
    printed = finish(launch(legs, corpus, "--max-steps", "10", "--part", "2", *(first if same_line else []),
                            processes=after, settings=DROPPING))
    assert f"grad_accum {accum[before]} -> {accum[after]} keeps a step at 4 micro-batches" in printed
    assert "global batch goes from" not in printed and "random_draws         'sample'" in printed
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


# -----------------------------------------------------------------------------
# Errors under torchrun, and the next command of a run over several nodes

def test_a_set_up_error_under_torchrun_is_said_once_whichever_rank_fails_first(tmp_path, corpus):
    # Both ranks raise the same ConfigError at once; torchrun stops the other as soon as one exits. The
    # first to fail, whatever its rank, says it; a rank stopped meanwhile says why (never "the next part
    # starts where this one would have"), and torchrun's report carries the sentence too.
    if torch.cuda.device_count() >= 2:
        pytest.skip("--device cuda is no error with two GPUs")
    proc = launch(tmp_path / "run", corpus, "--device", "cuda")
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0
    said = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(said) == 1, stderr[-3000:]
    sentence = said[0][len("error: "):]
    assert "no CUDA GPU is visible" in sentence or "one process per GPU" in sentence
    assert f"traceback : error: {sentence}" in stderr  # torchrun's failure report
    for line in stdout.splitlines():
        if line.startswith("stopped: "):
            assert line == (f"stopped: torchrun stopped this process (SIGTERM while setting up) because another one "
                            f"failed: {sentence}")
    assert "the next part starts" not in stdout


def fake_worker(attempt, local_rank):
    """torchrun's environment of worker `local_rank` of a node: its error file in the attempt's folder."""
    os.makedirs(attempt / str(local_rank), exist_ok=True)
    return {"TORCHELASTIC_RUN_ID": "none", "LOCAL_RANK": str(local_rank),
            "TORCHELASTIC_ERROR_FILE": str(attempt / str(local_rank) / "error.json")}


def test_the_first_worker_of_a_node_to_fail_claims_the_error(tmp_path):
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure
    from training.distributed import claim_error, sibling_error
    attempt = tmp_path / "torchelastic_x" / "none_abc" / "attempt_0"
    rank0, rank1 = fake_worker(attempt, 0), fake_worker(attempt, 1)
    assert sibling_error(rank0) is None  # nobody failed: a stop is a stop
    assert claim_error("the data is bad", rank1)  # rank 1 fails first: it says it
    assert not claim_error("the data is bad", rank0)  # rank 0 fails alike: silent
    assert sibling_error(rank0) == "the data is bad"  # or is stopped by torchrun, and learns why
    for r, env in ((0, rank0), (1, rank1)):  # both failed: torchrun's report shows the sentence for each
        failure = ProcessFailure(local_rank=r, pid=100 + r, exitcode=2, error_file=env["TORCHELASTIC_ERROR_FILE"])
        assert "traceback : error: the data is bad" in ChildFailedError("train_part.py", {r: failure}).format_msg()
    assert sorted(os.listdir(attempt)) == ["0", "1", "baton_error.txt"]  # no draft left behind
    restart = fake_worker(attempt.parent / "attempt_1", 0)  # a restart (or another launch) starts clean
    assert sibling_error(restart) is None and claim_error("again", restart)
    for outside in ({}, {"TORCHELASTIC_RUN_ID": "x", "TORCHELASTIC_ERROR_FILE": ""}):  # no torchrun, --log-dir /dev/null
        assert claim_error("said", outside) and claim_error("said", outside) and sibling_error(outside) is None


def test_of_workers_failing_at_once_exactly_one_claims_the_error(tmp_path):
    import multiprocessing
    from training.distributed import claim_error
    attempt = tmp_path / "attempt_0"
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(6)

    def worker(r):
        env = fake_worker(attempt, r)
        barrier.wait()
        os._exit(0 if claim_error(f"said by {r}", env) else 3)

    procs = [ctx.Process(target=worker, args=(r,)) for r in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert sorted(p.exitcode for p in procs) == [0, 3, 3, 3, 3, 3]
    winner = [r for r, p in enumerate(procs) if p.exitcode == 0][0]
    assert (attempt / "baton_error.txt").read_text() == f"said by {winner}"


@pytest.mark.parametrize("sibling", [True, False])
def test_a_worker_stopped_while_setting_up_says_why(tmp_path, monkeypatch, capsys, sibling):
    # as torchrun stops a worker after another failed: SIGTERM while setting up
    import train_part
    from training import signals
    from training.distributed import claim_error
    env = fake_worker(tmp_path / "attempt_0", 0)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if sibling:
        assert claim_error("--out x cannot be the run folder", fake_worker(tmp_path / "attempt_0", 1))
    monkeypatch.setattr(signals.stop, "signal", "SIGTERM")  # came just before: set-up raises Interrupted
    assert train_part.main(["--task", "lm", "--out", str(tmp_path / "run")]) == 0
    said = capsys.readouterr().out
    if sibling:
        assert said == ("stopped: torchrun stopped this process (SIGTERM while setting up) because another one failed: "
                        "--out x cannot be the run folder\n")
    else:
        assert said == ("stopped: SIGTERM while setting up, before this part's first step; nothing new to hand off, and "
                        "the next part starts where this one would have (under torchrun this is usually the launcher "
                        "stopping this process after another one failed: see the errors above)\n")


def test_the_next_command_of_a_run_over_several_nodes_carries_their_flags(monkeypatch):
    from types import SimpleNamespace

    import train_part
    from training import distributed
    part = SimpleNamespace(args=SimpleNamespace(task="lm", budget_hours=11.0), ranks=SimpleNamespace(world=2),
                           run_folder=os.path.join(".", "runs", "lm"), number=1)
    rest = "train_part.py --task lm --part 2 --budget-hours 11"
    one_node = {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "GROUP_WORLD_SIZE": "1"}
    assert train_part.next_command(part, one_node) == f"torchrun --nproc_per_node 2 {rest}"
    assert train_part.next_command(part, {}) == f"torchrun --nproc_per_node 2 {rest}"
    two_nodes = {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "1", "GROUP_WORLD_SIZE": "2"}
    monkeypatch.setattr(distributed, "launcher_argv", lambda: None)  # not known (not Linux)
    assert train_part.next_command(part, two_nodes) == \
        f"torchrun --nnodes 2 --nproc_per_node 1 --rdzv_backend c10d --rdzv_endpoint HOST:PORT {rest}"
    monkeypatch.setattr(distributed, "launcher_argv", lambda: ["/usr/bin/python3", "/usr/local/bin/torchrun",
                        "--nnodes=2", "--nproc-per-node", "1", "--rdzv-backend=c10d", "--rdzv_endpoint", "10.0.0.1:29400",
                        "--rdzv-id", "job7", "train_part.py", "--task", "lm", "--part", "1"])
    assert train_part.next_command(part, two_nodes) == (f"torchrun --nnodes 2 --nproc_per_node 1 --rdzv_backend c10d "
                                                        f"--rdzv_endpoint 10.0.0.1:29400 --rdzv_id job7 {rest}")
    static = ["python", "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "4", "--node_rank", "1",
              "--master_addr", "10.0.0.1", "--master_port", "1234", "train_part.py", "--task", "lm"]
    assert distributed.torchrun_launcher(8, {"WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4"}, static) == \
        "torchrun --nnodes 2 --nproc_per_node 4 --master_addr 10.0.0.1 --master_port 1234 --node_rank NODE_RANK"
    for unknown in (["python", "train_part.py"], ["torchrun", "--no-such-flag", "train_part.py"], []):
        assert distributed.rendezvous_flags(unknown) is None


def test_a_run_over_two_nodes_says_their_flags_in_its_next_command(tmp_path, corpus):
    # two torchrun agents on this machine as two nodes of one process each, meeting at a c10d rendezvous
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    flags = ["--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d", "--rdzv_endpoint", f"localhost:{port}",
             "--rdzv_id", "baton-test"]
    cmd = [sys.executable, "-m", "torch.distributed.run", *flags, os.path.join(ROOT, "train_part.py"), "--task", "lm",
           "--out", str(tmp_path / "run"), "--data", corpus, *TINY, "--max-steps", "1", "--set", "eval_every_steps=0"]
    env = {**os.environ, "BATON_INPUT_ROOTS": "", "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    printed = "".join(finish(node) for node in nodes)
    assert (f"next: torchrun --nnodes 2 --nproc_per_node 1 --rdzv_backend c10d --rdzv_endpoint localhost:{port} "
            f"--rdzv_id baton-test train_part.py --task lm --part 2 --out {tmp_path / 'run'}") in printed
