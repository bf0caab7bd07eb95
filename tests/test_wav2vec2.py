"""model/wav2vec2.py (wav2vec2-CTC): parity with transformers' Wav2Vec2ForCTC in all four variants,
the Hugging Face layout both ways (both weight-norm spellings, .bin read by model/hf_weights.py,
pretraining checkpoints), padding, lengths, SpecAugment / LayerDrop randomness, gradient
checkpointing and the errors a user can cause."""

import dataclasses
import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from model.wav2vec2 import Wav2Vec2Config, Wav2Vec2ForCTC, span_mask

transformers = pytest.importorskip("transformers")

VARIANTS = [("group", False), ("group", True), ("layer", False), ("layer", True)]
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
             conv_dim=(16, 16, 16), conv_kernel=(10, 3, 3), conv_stride=(5, 2, 2),
             num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)


def tiny_hf_config(norm="layer", stable=True, **kw):
    kw = {**SMALL, "vocab_size": 12, "feat_extract_norm": norm, "do_stable_layer_norm": stable,
          "conv_bias": norm == "layer", **kw}
    return transformers.Wav2Vec2Config(**kw)


def tiny_hf_model(norm="layer", stable=True, seed=0, cls=None, **kw):
    torch.manual_seed(seed)
    model = (cls or transformers.Wav2Vec2ForCTC)(tiny_hf_config(norm, stable, **kw)).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a swapped parameter cannot hide
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def ours_tiny(**kw):
    torch.manual_seed(0)
    return Wav2Vec2ForCTC(Wav2Vec2Config(**{**SMALL, "vocab_size": 12, **kw}))


def audio(batch=2, samples=1600, seed=1):
    return torch.randn(batch, samples, generator=torch.Generator().manual_seed(seed))


def assert_close(a, b, atol=1e-4):
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.allclose(a, b, atol=atol, rtol=0), (a - b).abs().max()


@pytest.mark.parametrize("norm,stable", VARIANTS)
def test_logits_match_transformers_in_all_four_variants(tmp_path, norm, stable):
    hf = tiny_hf_model(norm, stable)
    hf.save_pretrained(tmp_path)
    ours = Wav2Vec2ForCTC.from_pretrained(str(tmp_path)).eval()
    assert ours.config.feat_extract_norm == norm and ours.config.do_stable_layer_norm == stable
    assert set(ours.state_dict()) == set(hf.state_dict())  # identical names
    x = audio()
    with torch.no_grad():
        logits, lengths = ours(x)
        assert_close(logits, hf(x).logits)
        # an all-ones attention mask changes nothing, in either implementation
        ones = torch.ones_like(x, dtype=torch.long)
        assert_close(ours(x, ones)[0], hf(x, attention_mask=ones).logits)
    assert lengths.tolist() == [logits.shape[1]] * 2


@pytest.mark.parametrize("norm,stable", VARIANTS)
def test_padding_does_not_change_real_frames(norm, stable):
    # Holds in every variant for us; transformers matches it for "layer" models (next test) but
    # not for "group" ones, whose GroupNorm statistics include the padding.
    torch.manual_seed(0)
    model = ours_tiny(feat_extract_norm=norm, do_stable_layer_norm=stable).eval()
    x = audio(3, 2400, seed=2)
    real = [2400, 1500, 900]
    mask = torch.zeros(3, 2400, dtype=torch.bool)
    for i, n in enumerate(real):
        x[i, n:] = 7.0  # garbage padding: must not matter
        mask[i, :n] = True
    with torch.no_grad():
        batch_logits, lengths = model(x, mask)
        assert lengths.tolist() == [int(model.feature_lengths(n)) for n in real]
        for i, n in enumerate(real):
            alone, alone_len = model(x[i:i + 1, :n])
            assert int(alone_len) == int(lengths[i])
            assert_close(batch_logits[i, :lengths[i]], alone[0])


@pytest.mark.parametrize("stable", [False, True])
def test_padded_batch_matches_transformers_for_layer_norm_models(tmp_path, stable):
    hf = tiny_hf_model("layer", stable)
    hf.save_pretrained(tmp_path)
    ours = Wav2Vec2ForCTC.from_pretrained(str(tmp_path)).eval()
    x = audio(2, 2000, seed=3)
    mask = torch.ones(2, 2000, dtype=torch.long)
    mask[1, 1100:] = 0
    x[1, 1100:] = 0.0
    with torch.no_grad():
        logits, lengths = ours(x, mask)
        expected = hf(x, attention_mask=mask).logits
    real = torch.arange(logits.shape[1]) < lengths[:, None]
    assert_close(logits[real], expected[real])


def test_feature_lengths_match_transformers():
    hf = tiny_hf_model("group", False)
    ours = ours_tiny()
    lengths = torch.tensor([400, 401, 1599, 1600, 16000, 33333])
    assert torch.equal(ours.feature_lengths(lengths), hf._get_feat_extract_output_lengths(lengths))
    assert ours.feature_lengths(1600) == int(hf._get_feat_extract_output_lengths(torch.tensor(1600)))
    real = Wav2Vec2Config()  # wav2vec2-base conv stack: 20 ms frames
    assert real.feature_lengths(16000) == 49 and real.feature_lengths(16000 * 10) == 499


def test_both_weight_norm_spellings_load(tmp_path):
    hf = tiny_hf_model("layer", True)
    hf.save_pretrained(tmp_path / "new")
    sd = load_file(str(tmp_path / "new" / "model.safetensors"))
    assert any(k.endswith("parametrizations.weight.original0") for k in sd)
    old = {k.replace("parametrizations.weight.original0", "weight_g")
            .replace("parametrizations.weight.original1", "weight_v"): v for k, v in sd.items()}
    assert old["wav2vec2.encoder.pos_conv_embed.conv.weight_g"].shape == (1, 1, 16)
    os.makedirs(tmp_path / "old")
    save_file(old, str(tmp_path / "old" / "model.safetensors"), metadata={"format": "pt"})
    hf.config.save_pretrained(tmp_path / "old")
    x = audio()
    with torch.no_grad():
        expected = hf(x).logits
        for sub in ("new", "old"):
            assert_close(Wav2Vec2ForCTC.from_pretrained(str(tmp_path / sub)).eval()(x)[0], expected)


def test_pytorch_model_bin_loads_with_weights_only(tmp_path):
    hf = tiny_hf_model("group", False, seed=5)
    hf.config.save_pretrained(tmp_path)
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    ours = Wav2Vec2ForCTC.from_pretrained(str(tmp_path)).eval()
    x = audio()
    with torch.no_grad():
        assert_close(ours(x)[0], hf(x).logits)


@pytest.mark.parametrize("kind", ["pretraining", "base_model"])
def test_pretraining_checkpoint_gets_a_new_head(tmp_path, kind, capsys):
    cls = transformers.Wav2Vec2ForPreTraining if kind == "pretraining" else transformers.Wav2Vec2Model
    hf = tiny_hf_model("layer", True, cls=cls, codevector_dim=16, proj_codevector_dim=16,
                       num_codevectors_per_group=8)
    hf.save_pretrained(tmp_path)
    keys = load_file(str(tmp_path / "model.safetensors")).keys()
    assert any(k.startswith("quantizer.") for k in keys) == (kind == "pretraining")
    assert any(k.startswith("wav2vec2.") for k in keys) == (kind == "pretraining")
    ours = Wav2Vec2ForCTC.from_pretrained(str(tmp_path), vocab_size=40).eval()
    assert ours.lm_head.weight.shape == (40, 32)
    if kind == "pretraining":
        assert "quantizer.*" in capsys.readouterr().out
        assert any("quantizer" in line for line in ours.load_report)
    encoder = hf.wav2vec2 if kind == "pretraining" else hf
    x = audio()
    with torch.no_grad():  # the encoder is the checkpoint's: same hidden states
        assert_close(ours.wav2vec2(x)[0], encoder(x).last_hidden_state)


def test_different_vocab_size_replaces_only_the_head(tmp_path):
    hf = tiny_hf_model("group", True)
    hf.save_pretrained(tmp_path)
    same = Wav2Vec2ForCTC.from_pretrained(str(tmp_path), vocab_size=12)
    assert torch.equal(same.lm_head.weight, hf.lm_head.weight)
    other = Wav2Vec2ForCTC.from_pretrained(str(tmp_path), vocab_size=20, mask_time_prob=0.2, layerdrop=0.0)
    assert other.lm_head.weight.shape == (20, 32) and other.config.vocab_size == 20
    assert other.config.mask_time_prob == 0.2 and other.config.layerdrop == 0.0
    theirs = hf.state_dict()
    for name, value in other.state_dict().items():
        if not name.startswith("lm_head."):
            assert torch.equal(value, theirs[name]), name


def test_save_pretrained_opens_in_transformers_with_same_logits(tmp_path):
    ours = ours_tiny(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True).eval()
    vocab = {"<pad>": 0, "|": 1, **{chr(0x0985 + i): i + 2 for i in range(10)}}  # Bengali letters
    ours.save_pretrained(str(tmp_path), vocab=vocab)
    with open(tmp_path / "config.json") as f:
        hf_json = json.load(f)
    assert hf_json["model_type"] == "wav2vec2" and hf_json["architectures"] == ["Wav2Vec2ForCTC"]
    with open(tmp_path / "vocab.json", encoding="utf-8") as f:
        assert json.load(f) == vocab
    hf = transformers.Wav2Vec2ForCTC.from_pretrained(str(tmp_path)).eval()
    assert set(hf.state_dict()) == set(ours.state_dict())
    x = audio()
    with torch.no_grad():
        assert_close(ours(x)[0], hf(x).logits)
        assert torch.equal(Wav2Vec2ForCTC.from_pretrained(str(tmp_path)).eval()(x)[0], ours(x)[0])


def test_config_round_trips_through_json_and_presets_build():
    cfg = Wav2Vec2Config.preset("tiny", vocab_size=50)
    again = Wav2Vec2Config(**json.loads(json.dumps(dataclasses.asdict(cfg))))
    assert again == cfg
    assert Wav2Vec2Config.from_hf(transformers.Wav2Vec2Config(**cfg.to_hf()).to_dict()) == cfg
    assert cfg.feature_lengths(16000) == 49  # 20 ms frames like the real model
    large = Wav2Vec2Config.preset("large", vocab_size=50)
    assert (large.hidden_size, large.num_hidden_layers, large.feat_extract_norm, large.do_stable_layer_norm) == \
        (1024, 24, "layer", True)


def test_span_mask_is_seeded_by_torch_and_respects_lengths():
    lengths = torch.tensor([100, 60, 30, 4])

    def draw(seed):
        torch.manual_seed(seed)
        return span_mask(lengths, 100, mask_prob=0.3, mask_length=5, min_masks=1)

    a, b, c = draw(0), draw(0), draw(1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    for row, n in zip(a, lengths.tolist()):
        assert not row[n:].any()  # spans stay inside the real frames
    assert a[:3].any(dim=1).all() and not a[3].any()  # min_masks=1, but 4 frames cannot hold a 5-frame span
    many = torch.stack([span_mask(torch.tensor([1000]), 1000, 0.2, 10, 0) for _ in range(50)]).float()
    assert 0.12 < many.mean() < 0.2  # ~20 spans of 10 frames, minus overlaps, as transformers


def test_spec_augment_and_layerdrop_only_in_training():
    x = audio(2, 3200)
    plain = ours_tiny(hidden_dropout=0.0, activation_dropout=0.0, attention_dropout=0.0, final_dropout=0.0,
                      layerdrop=0.0, mask_time_prob=0.0)
    noisy = ours_tiny(hidden_dropout=0.0, activation_dropout=0.0, attention_dropout=0.0, final_dropout=0.0,
                      layerdrop=0.5, mask_time_prob=0.5, mask_time_length=2, mask_feature_prob=0.3,
                      mask_feature_length=2)
    noisy.load_state_dict(plain.state_dict())
    with torch.no_grad():
        assert torch.equal(noisy.eval()(x)[0], plain.eval()(x)[0])  # eval: no masks, no LayerDrop
        noisy.train(), plain.train()
        assert torch.equal(plain(x)[0], plain.eval()(x)[0])  # without them train == eval here

        def run(seed):
            torch.manual_seed(seed)
            return noisy(x)[0]

        assert torch.equal(run(0), run(0)) and not torch.equal(run(0), run(1))
        assert not torch.equal(run(0), plain.eval()(x)[0])


@pytest.mark.parametrize("stable", [False, True])
@pytest.mark.parametrize("padded", [True, False])
def test_gradient_checkpointing_is_exact(stable, padded):
    # Dropout, LayerDrop and SpecAugment all on: the rerun in backward must redraw the same masks.
    # Same loss, bit for bit the same gradients, and the RNG left where a run without checkpointing
    # leaves it (a resumed run's draws depend on it).
    model = ours_tiny(do_stable_layer_norm=stable, num_hidden_layers=4, layerdrop=0.3, mask_time_prob=0.2,
                      mask_time_length=2).train()
    x = audio(2, 1600)
    mask = torch.ones(2, 1600, dtype=torch.bool)
    if padded:
        mask[1, 1000:] = False
    labels, label_lengths = torch.tensor([[1, 2, 3], [4, 5, 0]]), torch.tensor([3, 2])
    runs = []
    for checkpointing in (False, True):
        model.zero_grad(set_to_none=True)
        model.gradient_checkpointing = checkpointing
        torch.manual_seed(7)  # same dropout, LayerDrop and SpecAugment draws in both passes
        (logits, _), loss = model(x, mask, labels, label_lengths)
        (loss + logits.square().mean()).backward()
        runs.append((loss.detach(), [p.grad for p in model.parameters()], torch.get_rng_state()))
    (loss_a, grads_a, rng_a), (loss_b, grads_b, rng_b) = runs
    assert torch.equal(loss_a, loss_b)
    for (name, _), a, b in zip(model.named_parameters(), grads_a, grads_b):
        assert (a is None) == (b is None), name
        assert a is None or torch.equal(a, b), name
    assert torch.equal(rng_a, rng_b)


def test_gradient_checkpointing_reruns_every_layer_but_the_last_and_only_when_training():
    model = ours_tiny(num_hidden_layers=3, layerdrop=0.0).train()
    model.gradient_checkpointing = True
    calls = []

    def counted(i, forward):  # module hooks do not fire in the rerun; the forward itself does
        return lambda *args: calls.append(i) or forward(*args)

    for i, layer in enumerate(model.wav2vec2.encoder.layers):
        layer.forward = counted(i, layer.forward)
    x = audio(1, 1600)
    model(x)[0].sum().backward()
    assert sorted(calls) == [0, 0, 1, 1, 2]  # layers 0 and 1 rerun in backward; the last is kept
    calls.clear()
    with torch.no_grad():  # nothing to recompute for: no checkpoint (and no RNG stash) at all
        model(x)
    model.eval()(x)[0].sum().backward()
    assert calls == [0, 1, 2, 0, 1, 2]


def test_unpadded_mask_is_the_same_as_none():
    # An all-ones attention_mask gives attention no mask at all (cheaper), with the same values.
    model = ours_tiny().train()
    x = audio(2, 1600)
    ones = torch.ones(2, 1600, dtype=torch.bool)
    seen = []
    model.wav2vec2.encoder.layers[0].register_forward_pre_hook(lambda module, args: seen.append(args[1]))
    outputs = []
    for mask in (None, ones):
        torch.manual_seed(3)
        outputs.append(model(x, mask))
    assert seen == [None, None]
    assert torch.equal(outputs[0][0], outputs[1][0]) and torch.equal(outputs[0][1], outputs[1][1])


def test_freezing_the_feature_encoder():
    model = ours_tiny(layerdrop=0.3, mask_time_prob=0.2, mask_time_length=2)
    x = audio(2, 1600)
    mask = torch.ones(2, 1600, dtype=torch.bool)
    mask[1, 1000:] = False
    model.freeze_feature_encoder()
    model.gradient_checkpointing = True  # off in eval: nothing changes
    model.eval()(x, mask)[0].sum().backward()  # eval: no LayerDrop, so every layer gets a gradient
    for name, p in model.named_parameters():
        if name.startswith("wav2vec2.feature_extractor."):
            assert p.grad is None and not p.requires_grad, name
        elif name != "wav2vec2.masked_spec_embed":  # used only by SpecAugment in training
            assert p.grad is not None, name


def test_unsupported_configs_and_bad_checkpoints_are_refused(tmp_path):
    with pytest.raises(ValueError, match="hidden_act"):
        Wav2Vec2Config.from_hf(tiny_hf_config(hidden_act="relu").to_dict())
    with pytest.raises(ValueError, match="adapter"):
        Wav2Vec2Config.from_hf(tiny_hf_config(add_adapter=True).to_dict())
    with pytest.raises(ValueError, match="wav2vec2"):
        Wav2Vec2Config.from_hf({**tiny_hf_config().to_dict(), "model_type": "hubert"})
    hf = tiny_hf_model("layer", True)
    hf.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="cannot override.*hidden_size"):
        Wav2Vec2ForCTC.from_pretrained(str(tmp_path), hidden_size=64)
    sd = load_file(str(tmp_path / "model.safetensors"))
    sd["wav2vec2.encoder.layers.0.attention.q_proj.weight"] = torch.zeros(32, 16)
    save_file(sd, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="q_proj.weight: checkpoint \\(32, 16\\)"):
        Wav2Vec2ForCTC.from_pretrained(str(tmp_path))
    del sd["wav2vec2.encoder.layers.0.attention.q_proj.weight"]
    sd["classifier.weight"] = torch.zeros(3, 32)
    save_file(sd, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="missing.*q_proj.*unexpected.*classifier"):
        Wav2Vec2ForCTC.from_pretrained(str(tmp_path))
