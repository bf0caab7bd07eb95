"""training/memory.py: a micro-batch that runs out of memory is trained in pieces, the same run
(bit for bit on resume, and with the memory probe deciding before the first step), and one sample
that does not fit is one sentence.

Real train_part.py processes, as in test_faults.py (whose `run` starts them): tests/poisoned_part.py
stands in for a GPU where only a few samples fit."""

import torch

from conftest import assert_same_tensors
from test_faults import handoff, run
from training.record import unpack

SMALL_GPU = {"BATON_OOM_ROWS": "2"}  # only 2 samples fit in a forward and backward
BATCH_4 = {"batch_size": 4, "grad_accum": 1}


def test_out_of_memory_splits_the_micro_batch_and_the_run_stays_the_same_or_the_probe_splits_first(tmp_path, corpus):
    code, said, _ = run(tmp_path / "split", corpus, "--max-steps", "8", settings=BATCH_4, env=SMALL_GPU)
    assert code == 0
    assert "step 1: out of memory in micro-batch 0 (idx 4x16, targets 4x16): trained in 2 pieces" in said
    assert "every micro-batch from step 3 on is trained in 2 pieces" in said
    split = handoff(tmp_path / "split")
    assert split.meta["global_step"] == 8
    assert unpack(split.state["history"])["splits"] == [
        {"step": 1, "micro_batch": 0, "pieces": 2}, {"step": 2, "micro_batch": 0, "pieces": 2},
        {"step": 3, "micro_batch": 0, "pieces": 2}, {"step": 3, "micro_batch": "all", "pieces": 2}]

    # The same samples as micro-batches of 2 with twice the accumulation, on a machine where they fit.
    assert run(tmp_path / "halves", corpus, "--max-steps", "8", settings={"batch_size": 2, "grad_accum": 2})[0] == 0
    halves = handoff(tmp_path / "halves")
    for name, tensor in split.state["model"].items():
        torch.testing.assert_close(tensor, halves.state["model"][name], rtol=0, atol=1e-6)

    # Resumed on a machine where everything fits: the record's plan still splits, bit for bit the same run.
    assert run(tmp_path / "resumed", corpus, "--max-steps", "4", settings=BATCH_4, env=SMALL_GPU)[0] == 0
    code, said, _ = run(tmp_path / "resumed", corpus, "--max-steps", "8", settings=BATCH_4, part=2)
    assert code == 0 and "out of memory" not in said
    assert_same_tensors(handoff(tmp_path / "resumed", 2), split)

    # The memory probe decides before the first step, so no step pays a failed attempt; its own draws are undone.
    code, said, _ = run(tmp_path / "probed", corpus, "--max-steps", "8", settings={**BATCH_4, "probe_memory": True},
                        env=SMALL_GPU)
    assert code == 0
    assert "memory probe: the largest micro-batch (idx 4x16, targets 4x16) fits in 2 pieces" in said
    assert "out of memory in micro-batch" not in said
    probed = handoff(tmp_path / "probed")
    assert unpack(probed.state["history"])["splits"] == [{"step": 1, "micro_batch": "all", "pieces": 2}]
    assert_same_tensors(probed, split)


def test_one_sample_that_does_not_fit_is_one_sentence(tmp_path, corpus):
    code, said, err = run(tmp_path / "run", corpus, "--max-steps", "8", settings=BATCH_4,
                          env={"BATON_OOM_ROWS": "none"})
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: out of memory at step 1: micro-batch 0 of the step does not fit on the cpu "
                                "even as single samples (idx 1x16, targets 1x16); try --set grad_checkpointing=true")
    assert "Traceback" not in err
    assert handoff(tmp_path / "run").meta["global_step"] == 0  # the state before the step that could not run
