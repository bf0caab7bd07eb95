"""A part runs on whatever machine a session gives: a baton moves between optimizer implementations
and precisions, a GPU that cannot run is one sentence, and what ran where is in the checkpoint.

GPUs are stood in for by patching torch.cuda's queries: the checks run before the first kernel."""

import time
import types

import pytest
import torch

import ckpt
import train_part
from conftest import tiny_lm_args
from model.regression import Regressor, RegressorConfig
from training import devices
from training.tasks import TASKS
from training.config import ConfigError, keep_global_batch
from training.distributed import start_processes
from training.optimizer import load_optimizer_state

ATOL = RTOL = 1e-5  # another AdamW implementation rounds otherwise (see test_compat.py for the size)


def train(out, corpus, *extra, part=1):
    return train_part.main(["--task", "lm", "--part", str(part), "--out", str(out), "--data", corpus, *tiny_lm_args(),
                            *extra], started=time.time())


def handoff(out, part):
    return ckpt.load(out / ckpt.handoff_name(part))


def test_the_optimizer_keeps_this_runs_implementation_when_it_loads_a_state():
    model = torch.nn.Linear(4, 4)
    cpu = torch.optim.AdamW(model.parameters(), foreach=True)
    model(torch.randn(2, 4)).sum().backward()
    cpu.step()
    state = cpu.state_dict()  # as a CPU part saves it: foreach, step counts on the CPU

    def resumed_step(load):
        fused = torch.optim.AdamW(model.parameters(), fused=True)  # as a GPU part builds it
        load(fused, state)
        scaler = torch.amp.GradScaler("cpu")
        with torch.autocast("cpu", dtype=torch.float16):
            loss = model(torch.randn(2, 4)).float().sum()
        scaler.scale(loss).backward()
        scaler.step(fused)
        return fused

    with pytest.raises(AssertionError, match="grad_scale"):  # what torch's own load_state_dict leads to
        resumed_step(torch.optim.AdamW.load_state_dict)
    fused = resumed_step(load_optimizer_state)
    assert all(group["fused"] and not group["foreach"] for group in fused.param_groups)


def test_a_cpu_baton_resumes_with_the_fused_optimizer_and_an_fp16_scaler(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    assert train(out, corpus, "--max-steps", "4") == 0
    capsys.readouterr()
    assert train(out, corpus, "--max-steps", "8", "--set", "adamw=fused", "--amp", "fp16", part=2) == 0
    printed = capsys.readouterr().out
    assert "was trained on cpu with amp off and this part runs on cpu with amp fp16" in printed
    two = handoff(out, 2)
    assert two.meta["global_step"] == 8 and two.meta["amp"] == "fp16" and two.meta["device"] == "cpu"
    assert two.state["scaler"]["scale"] > 0 and two.state["optimizer"]["param_groups"][0]["fused"]
    assert all(torch.isfinite(t).all() for t in two.state["model"].values())


def test_a_fused_baton_resumes_with_foreach_as_the_same_run(tmp_path, corpus):
    assert train(tmp_path / "straight", corpus, "--max-steps", "8", "--set", "adamw=fused") == 0
    assert train(tmp_path / "legs", corpus, "--max-steps", "4", "--set", "adamw=fused") == 0
    assert train(tmp_path / "legs", corpus, "--max-steps", "8", "--set", "adamw=foreach", part=2) == 0
    a, b = handoff(tmp_path / "straight", 1), handoff(tmp_path / "legs", 2)
    assert b.state["optimizer"]["param_groups"][0]["foreach"] and not b.state["optimizer"]["param_groups"][0]["fused"]
    assert a.state["progress"] == b.state["progress"]
    for name, tensor in a.state["model"].items():
        torch.testing.assert_close(b.state["model"][name], tensor, rtol=RTOL, atol=ATOL, msg=name)


def test_an_fp16_loss_scale_waits_through_a_part_without_it(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    assert train(out, corpus, "--max-steps", "3", "--amp", "fp16") == 0
    scale = handoff(out, 1).state["scaler"]
    assert scale["scale"] > 0
    capsys.readouterr()
    assert train(out, corpus, "--max-steps", "6", "--amp", "off", part=2) == 0  # bf16 on an A100, say
    assert "its fp16 loss scale is kept in the checkpoint for a later fp16 part" in capsys.readouterr().out
    assert handoff(out, 2).state["scaler"] == scale and handoff(out, 2).meta["amp"] == "off"
    assert train(out, corpus, "--max-steps", "7", "--amp", "fp16", part=3) == 0  # a T4 again: goes on from it
    assert handoff(out, 3).state["scaler"]["_growth_tracker"] == scale["_growth_tracker"] + 1


def fake_gpu(monkeypatch, name, capability, count=1):
    """torch.cuda's queries answer as a machine with `count` such GPUs would."""
    for attr, value in (("is_available", lambda: True), ("device_count", lambda: count), ("current_device", lambda: 0),
                        ("get_device_name", lambda device=None: name),
                        ("get_device_capability", lambda device=None: capability)):
        monkeypatch.setattr(torch.cuda, attr, value)


def one_sentence(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize("gpu, amp, said", [
    (("Tesla P100-PCIE-16GB", (6, 0)), None, "has no kernels for the Tesla P100-PCIE-16GB (compute capability 6.0"),
    (("Tesla T4", (7, 5)), "bf16", "--amp bf16 needs a GPU with native bfloat16"),
])
def test_a_gpu_that_cannot_run_the_part_is_one_sentence(tmp_path, corpus, monkeypatch, capsys, gpu, amp, said):
    fake_gpu(monkeypatch, *gpu)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"])
    amp_args = ["--amp", amp] if amp else []
    assert train(tmp_path / "run", corpus, "--device", "cuda", *amp_args) == 2
    assert said in one_sentence(capsys)


def test_which_gpus_a_build_runs_on():
    arches = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]
    works = {cap: devices.gpu_has_kernels(cap, arches) for cap in [(6, 0), (7, 0), (7, 5), (8, 0), (8, 9), (9, 0), (12, 0)]}
    assert works == {(6, 0): False, (7, 0): False, (7, 5): True, (8, 0): True, (8, 9): True, (9, 0): True, (12, 0): True}
    assert devices.gpu_has_kernels((8, 9), ["sm_80", "compute_80"]) and devices.gpu_has_kernels((9, 0), ["compute_80"])
    assert not devices.gpu_has_kernels((7, 5), ["sm_80", "compute_80"])


@pytest.mark.parametrize("gpus, said", [
    (0, "--device cuda was asked for but no CUDA GPU is visible"),
    (1, "torchrun started 2 processes on this machine, which has 1 GPU(s): one process per GPU, so use "
        "--nproc_per_node 1"),
])
def test_more_processes_than_gpus_is_one_sentence(tmp_path, corpus, monkeypatch, capsys, gpus, said):
    # as torchrun --nproc_per_node 2 sets the environment of rank 0; the check comes before the process group
    for key, value in (("WORLD_SIZE", "2"), ("LOCAL_WORLD_SIZE", "2"), ("RANK", "0"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(key, value)
    if gpus:
        fake_gpu(monkeypatch, "Tesla T4", (7, 5), count=gpus)
    else:
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert train(tmp_path / "run", corpus, "--device", "cuda") == 2
    assert said in one_sentence(capsys)
    with pytest.raises(ConfigError):
        start_processes("cuda")


def test_the_regression_head_computes_in_fp32_under_autocast():
    torch.manual_seed(0)
    text = {"vocab_size": 50, "block_size": 8, "n_layer": 1, "n_head": 2, "n_embd": 16}
    model = Regressor(RegressorConfig(text=text, n_numeric=3, hidden=16, dropout=0.0)).eval()
    tokens, lengths, numeric = torch.randint(0, 50, (64, 8)), torch.full((64,), 8), torch.randn(64, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, loss = model(tokens, lengths, numeric, targets=torch.full((64,), 7.0))
    assert out.dtype == torch.float32 and loss.dtype == torch.float32
    # bf16 would hold log1p(price) ~ 7 in steps of 1/32: the outputs are finer than that
    assert (out.bfloat16().float() != out).any()


def test_a_step_that_cannot_be_dealt_evenly_to_the_new_ranks_is_said(capsys):
    saved = types.SimpleNamespace(is_training=True, meta={"world_size": 1})
    cfg, args = TASKS["lm"].config(grad_accum=3), types.SimpleNamespace(settings=[])
    assert keep_global_batch(cfg, args, saved, 3).grad_accum == 1  # 3 micro-batches a step either way
    assert keep_global_batch(cfg, args, saved, 2).grad_accum == 3
    assert "a step of 3 micro-batches (1 process(es) x grad_accum 3) cannot be dealt evenly to 2 processes" \
        in capsys.readouterr().out
    told = types.SimpleNamespace(settings=["grad_accum=5"])  # the command line wins
    assert keep_global_batch(cfg, told, saved, 3).grad_accum == 3


def test_a_repeated_set_is_no_change_and_another_global_batch_is_said(tmp_path, corpus, capsys):
    # tiny_lm_args: micro-batches of 4, grad_accum 2, 23 micro-batches an epoch -> 12 steps an epoch.
    assert train(tmp_path, corpus, "--max-steps", "3") == 0
    capsys.readouterr()
    assert train(tmp_path, corpus, "--max-steps", "5", "--set", "grad_accum=2", part=2) == 0  # the same line again
    said = capsys.readouterr().out
    assert "changed from" not in said and "global batch" not in said
    assert train(tmp_path, corpus, "--max-steps", "7", "--set", "grad_accum=3", part=3) == 0
    said = capsys.readouterr().out
    assert "warning: grad_accum changed from 2 to 3 on resume" in said
    assert ("note: the global batch goes from 8 samples a step (4 x grad_accum 2 x 1 process(es)) to 12 (4 x 3 x 1), "
            "and the plan from 12 to 8 steps an epoch") in said
