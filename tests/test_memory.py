"""training/memory.py: a micro-batch that runs out of memory is trained in pieces, the same run
(bit for bit on resume, and with the memory probe deciding before the first step), and one sample
that does not fit is one sentence.

Real train_part.py processes, as in test_faults.py (whose `run` starts them): tests/poisoned_part.py
stands in for a GPU where only a few samples fit."""

import torch

from conftest import assert_same_tensors
from test_faults import handoff, run
from training.memory import SPLITS_BEFORE_LOWERING, pieces_for, split_further
from training.record import unpack

SMALL_GPU = {"BATON_OOM_ROWS": "2"}  # only 2 samples fit in a forward and backward
BATCH_4 = {"batch_size": 4, "grad_accum": 1}


def test_out_of_memory_splits_the_micro_batch_and_the_run_stays_the_same_or_the_probe_splits_first(tmp_path, corpus):
    code, said, _ = run(tmp_path / "split", corpus, "--max-steps", "8", settings=BATCH_4, env=SMALL_GPU)
    assert code == 0
    assert "step 1: out of memory in micro-batch 0 (idx 4x16, targets 4x16): trained in 2 pieces" in said
    assert said.count("out of memory") == 1  # steps 2 to 8 start in the pieces step 1 needed
    split = handoff(tmp_path / "split")
    assert split.meta["global_step"] == 8
    assert unpack(split.state["history"])["splits"] == [
        {"step": 1, "micro_batch": 0, "pieces": 2, "failed": {"idx": [4, 16], "targets": [4, 16]}}]

    # The same samples as micro-batches of 2 with twice the accumulation, on a machine where they fit.
    assert run(tmp_path / "halves", corpus, "--max-steps", "8", settings={"batch_size": 2, "grad_accum": 2})[0] == 0
    halves = handoff(tmp_path / "halves")
    # Up to float rounding: the two runs make the same products, but in buffers the allocator placed
    # otherwise, which BLAS may sum in another order. One AdamW step at lr 1e-3 moves a weight by up to
    # 1e-3, so 1e-5 fails any step that took other samples, masks or learning rates (test_distributed's
    # bound; seen: 5.0e-6 on one rare token's embedding after 8 steps, in one run of the suite).
    for name, tensor in split.state["model"].items():
        torch.testing.assert_close(tensor, halves.state["model"][name], rtol=0, atol=1e-5)

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


def test_a_step_that_needed_4_pieces_starts_every_later_micro_batch_in_4_and_resumes_bit_for_bit(tmp_path, corpus):
    tiny_gpu, batches = {"BATON_OOM_ROWS": "1"}, {"batch_size": 4, "grad_accum": 2}
    code, said, _ = run(tmp_path / "straight", corpus, "--max-steps", "6", settings=batches, env=tiny_gpu)
    assert code == 0
    # Micro-batch 0 of step 1 fails whole and in halves; its micro-batch 1 and every later one start in 4.
    assert [line[line.index("step"):] for line in said.splitlines() if "out of memory" in line] == [
        "step 1: out of memory in micro-batch 0 (idx 4x16, targets 4x16): trained in 2 pieces (the same gradient up "
        "to float rounding); no piece as large as idx 4x16, targets 4x16 is tried again",
        "step 1: out of memory in micro-batch 0 (idx 4x16, targets 4x16): trained in 4 pieces (the same gradient up "
        "to float rounding); no piece as large as idx 2x16, targets 2x16 is tried again"]
    straight = handoff(tmp_path / "straight")
    assert straight.meta["global_step"] == 6
    assert unpack(straight.state["history"])["splits"] == [
        {"step": 1, "micro_batch": 0, "pieces": 2, "failed": {"idx": [4, 16], "targets": [4, 16]}},
        {"step": 1, "micro_batch": 0, "pieces": 4, "failed": {"idx": [2, 16], "targets": [2, 16]}}]

    # Part 1 to step 3 on the tiny machine, part 2 where everything fits: the record's pieces, bit for bit.
    code, said, _ = run(tmp_path / "resumed", corpus, "--max-steps", "3", settings=batches, env=tiny_gpu)
    assert code == 0 and said.count("out of memory") == 2
    code, said, _ = run(tmp_path / "resumed", corpus, "--max-steps", "6", settings=batches, part=2)
    assert code == 0 and "out of memory" not in said
    assert_same_tensors(handoff(tmp_path / "resumed", 2), straight)
    assert unpack(handoff(tmp_path / "resumed", 2).state["history"])["splits"] == \
        unpack(straight.state["history"])["splits"]


def batch(rows, length):
    return {"idx": torch.zeros(rows, length, dtype=torch.long), "targets": torch.zeros(rows, length, dtype=torch.long)}


def test_the_pieces_are_a_function_of_the_record_and_the_shapes():
    # An older record (no "failed"): its step and micro-batch only, as before.
    old = {"splits": [{"step": 1, "micro_batch": 0, "pieces": 2}]}
    assert [pieces_for(old, step, i, batch(4, 16)) for step, i in ((1, 0), (1, 1), (2, 0))] == [2, 1, 1]

    history = {}
    said = split_further(history, 3, 0, batch(8, 16), "cpu")  # 8x16 whole ran out: 4x16 pieces
    assert said.endswith("trained in 2 pieces (the same gradient up to float rounding); "
                         "no piece as large as idx 8x16, targets 8x16 is tried again")
    assert pieces_for(history, 2, 0, batch(8, 16)) == 1  # a step before the split: as the run trained it
    assert pieces_for(history, 3, 0, batch(8, 16)) == 2
    assert pieces_for(history, 9, 1, batch(8, 16)) == 2  # any later micro-batch as large
    assert pieces_for(history, 9, 0, batch(8, 20)) == 2  # longer: not tried whole, its 4x20 halves are
    assert pieces_for(history, 9, 0, batch(16, 16)) == 4  # more rows: its 8x16 halves are not tried either
    assert pieces_for(history, 9, 0, batch(8, 15)) == 1  # shorter, or fewer rows: tried whole
    assert pieces_for(history, 9, 0, batch(6, 16)) == 1
    assert pieces_for(history, 9, "all") == 1  # the probe's question: no micro-batch, the "all" entries only

    # Batches of ever new shapes that no failure covers: after 3 splits, all micro-batches from there on.
    assert SPLITS_BEFORE_LOWERING == 3
    split_further(history, 4, 0, batch(8, 15), "cpu")
    said = split_further(history, 5, 1, batch(8, 14), "cpu")
    assert said.endswith("; after 3 splits every micro-batch from step 5 on is trained in 2 pieces "
                         "(the step, and so the optimisation, stays the same)")
    assert history["splits"][-1] == {"step": 5, "micro_batch": "all", "pieces": 2}
    assert [pieces_for(history, 4, "all"), pieces_for(history, 5, "all"), pieces_for(history, 9, 0, batch(8, 2))] \
        == [1, 2, 2]


def test_one_sample_that_does_not_fit_is_one_sentence(tmp_path, corpus):
    code, said, err = run(tmp_path / "run", corpus, "--max-steps", "8", settings=BATCH_4,
                          env={"BATON_OOM_ROWS": "none"})
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: out of memory at step 1: micro-batch 0 of the step does not fit on the cpu "
                                "even as single samples (idx 1x16, targets 1x16); try --set grad_checkpointing=true")
    assert "Traceback" not in err
    assert handoff(tmp_path / "run").meta["global_step"] == 0  # the state before the step that could not run
