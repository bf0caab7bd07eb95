"""Tests import the project's top-level modules (ckpt, model, data) from the repository root;
fixtures shared by several test files."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The first 1,680 bytes of the embedded corpus: the tiny lm runs' step counts assume this size."""
    from data import text as text_data
    path = tmp_path_factory.mktemp("data") / "tiny.txt"
    path.write_text(text_data.read_corpus()[:1680])
    return str(path)


def tiny_lm_args(**overrides):
    """`--set` arguments for a 2-layer, 32-wide GPT on the `corpus` fixture: 1,680 bytes -> 93 windows
    of 16 -> 23 micro-batches of 4 -> 12 optimizer steps per epoch with grad_accum 2 (the last one a
    single micro-batch). `overrides` add or replace settings."""
    settings = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, batch_size=4, grad_accum=2,
                    eval_every_steps=4, eval_batches=2, warmup_steps=3, log_every_steps=1, save_every_steps=0)
    settings.update(overrides)
    return [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]


def assert_same_tensors(a, b, sections=("model", "optimizer", "rng")):
    """Two loaded checkpoints hold bit-identical tensors in these sections of their training state."""
    import torch
    import ckpt
    for section in sections:
        ta, tb = ckpt.flatten_state(a.state[section])[0], ckpt.flatten_state(b.state[section])[0]
        assert ta.keys() == tb.keys(), section
        for k in ta:
            assert torch.equal(ta[k], tb[k]), f"{section}.{k} differs"
