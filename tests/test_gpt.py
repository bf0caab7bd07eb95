"""model/gpt.py: parity with transformers' GPT2LMHeadModel, the Hugging Face layout both ways (a
pytorch_model.bin read with weights_only by model/hf_weights.py), generation, gradient checkpointing,
and the chunked training loss against F.cross_entropy on the full logits."""

import json

import pytest
import torch
import torch.nn.functional as F

from model.gpt import GPT, GPTConfig, loss_chunk_for

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
    # the training loss (chunked, 62 tokens in chunks of 5) is transformers' mean loss times the tokens
    ours.loss_chunk = 5
    with torch.no_grad():
        output, loss_sum = ours(idx[:, :-1], idx[:, 1:])
        hf_loss = hf(idx, labels=idx).loss  # transformers shifts the labels itself
    assert output is None
    assert torch.allclose(loss_sum / idx[:, 1:].numel(), hf_loss, rtol=1e-5, atol=0), (loss_sum, hf_loss)


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


def small_model_and_batch(dropout=0.0):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=97, block_size=32, n_layer=2, n_head=2, n_embd=32, dropout=dropout))
    g = torch.Generator().manual_seed(1)
    idx, targets = torch.randint(0, 97, (3, 29), generator=g), torch.randint(0, 97, (3, 29), generator=g)
    targets[0, :4] = -100  # ignored, as F.cross_entropy ignores them
    return model, idx, targets  # 87 tokens: a prime, so no chunk size but 1 and 87 divides it


def loss_and_grads(model, idx, targets, **kw):
    model.zero_grad(set_to_none=True)
    output, loss_sum = model(idx, targets, **kw)
    (0.37 * loss_sum).backward()  # not 1: backward must scale the gradients it kept by the incoming one
    return output, loss_sum.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("chunk", [None, 1, 7, 16, 87, 1000])
def test_chunked_loss_and_gradients_match_full_logits_cross_entropy(chunk):
    model, idx, targets = small_model_and_batch()
    # the full-logits loss, written out: F.cross_entropy over the whole (B, T, V) logits, summed
    model.zero_grad(set_to_none=True)
    logits = model(idx)  # (B, T, V)
    full = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum")
    (0.37 * full).backward()
    full_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.loss_chunk = chunk  # 7 and 16 leave a last chunk of 3 and 7 tokens; 1000 is one chunk
    output, loss_sum, grads = loss_and_grads(model, idx, targets)
    assert output is None
    assert abs(loss_sum.item() - full.item()) <= 1e-5 * abs(full.item()), (loss_sum, full)
    for name, grad in grads.items():
        expected = full_grads[name]
        assert torch.allclose(grad, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item()), \
            (name, (grad - expected).abs().max(), expected.abs().max())
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()  # one gradient for both
    # evaluation (no gradients) gives the same loss, and return_logits the full-logits path
    with torch.no_grad():
        assert model(idx, targets)[1].item() == loss_sum.item()
        logits_out, full_again = model(idx, targets, return_logits=True)
    assert torch.equal(logits_out, logits.detach())
    assert full_again.item() == full.item()


def test_loss_chunk_depends_on_the_vocabulary_only():
    assert loss_chunk_for(50257) == 512  # GPT-2: 512 x 50,257 fp32 logits = 103 MB a chunk
    assert loss_chunk_for(256) == 131072  # the byte vocabulary: one chunk for any lm batch in practice
    assert loss_chunk_for(2 ** 26) == 1


def test_chunked_loss_under_bf16_autocast_is_the_full_logits_loss_within_bf16_rounding():
    model, idx, targets = small_model_and_batch()
    model.loss_chunk = 7
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, chunked, grads = loss_and_grads(model, idx, targets)
        _, full, full_grads = loss_and_grads(model, idx, targets, return_logits=True)
    assert abs(chunked.item() - full.item()) <= 1e-3 * full.item()
    for name, grad in grads.items():  # bf16 products: both about 0.5% from the fp32 gradient
        assert (grad - full_grads[name]).norm() <= 0.03 * full_grads[name].norm(), name


def test_gradient_checkpointing_with_the_chunked_loss_gives_the_same_gradients():
    model, idx, targets = small_model_and_batch(dropout=0.1)
    model.loss_chunk = 16
    runs = []
    for ckpt_on in (False, True):
        model.gradient_checkpointing = ckpt_on
        torch.manual_seed(7)  # same dropout masks in both passes
        runs.append(loss_and_grads(model, idx, targets))
    assert runs[0][1].item() == runs[1][1].item()
    for name, grad in runs[0][2].items():
        assert torch.allclose(grad, runs[1][2][name], atol=1e-6), name
