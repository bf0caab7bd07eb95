"""model/gpt.py: parity with transformers' GPT2LMHeadModel, the Hugging Face layout both ways (a
pytorch_model.bin read with weights_only by model/hf_weights.py), generation, gradient checkpointing."""

import json

import pytest
import torch

from model.gpt import GPT, GPTConfig

transformers = pytest.importorskip("transformers")


def tiny_hf_model(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=97, n_positions=32, n_embd=48, n_layer=3, n_head=4, **kw)
    return transformers.GPT2LMHeadModel(cfg).eval()


def test_logits_match_transformers_after_loading_hf_folder(tmp_path):
    hf = tiny_hf_model()
    hf.save_pretrained(tmp_path)
    ours = GPT.from_pretrained(str(tmp_path)).eval()
    idx = torch.randint(0, 97, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(idx).logits
        got = ours(idx)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-4, rtol=0), (got - expected).abs().max()


def test_save_pretrained_opens_in_transformers_with_same_logits(tmp_path):
    torch.manual_seed(3)
    ours = GPT(GPTConfig(vocab_size=61, block_size=24, n_layer=2, n_head=2, n_embd=32)).eval()
    ours.save_pretrained(str(tmp_path))
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["model_type"] == "gpt2"
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path)).eval()
    idx = torch.randint(0, 61, (3, 24), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.allclose(ours(idx), hf(idx).logits, atol=1e-4, rtol=0)
    # and back again: our loader reads what we wrote
    again = GPT.from_pretrained(str(tmp_path)).eval()
    with torch.no_grad():
        assert torch.equal(again(idx), ours(idx))


def test_pytorch_model_bin_is_read_with_weights_only(tmp_path):
    hf = tiny_hf_model(seed=5)
    hf.config.save_pretrained(tmp_path)
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    ours = GPT.from_pretrained(str(tmp_path)).eval()
    idx = torch.randint(0, 97, (1, 16), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.allclose(ours(idx), hf(idx).logits, atol=1e-4, rtol=0)


def test_unsupported_hf_config_is_refused(tmp_path):
    hf = tiny_hf_model(activation_function="relu")
    hf.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="activation"):
        GPT.from_pretrained(str(tmp_path))


def test_weights_are_tied_and_generation_respects_block_size():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=1, n_embd=8)).eval()
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    out = model.generate(torch.zeros(2, 3, dtype=torch.long), max_new_tokens=12, top_k=3,
                         generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 15)
    assert int(out.max()) < 11
    greedy_a = model.generate(torch.zeros(1, 1, dtype=torch.long), 5, temperature=0)
    greedy_b = model.generate(torch.zeros(1, 1, dtype=torch.long), 5, temperature=0)
    assert torch.equal(greedy_a, greedy_b)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.1))
    idx = torch.randint(0, 13, (2, 8))
    grads = []
    for ckpt_on in (False, True):
        model.zero_grad()
        model.gradient_checkpointing = ckpt_on
        torch.manual_seed(7)  # same dropout masks in both passes
        model(idx).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6)
