"""wav2vec2 encoder + CTC head for speech recognition, small enough to read in one sitting.

Raw 16 kHz audio goes through a stack of 1-D convolutions (one frame every 20 ms), a linear
projection, a convolutional positional embedding and a transformer encoder; a linear CTC head
turns each frame into logits over the characters (id `pad_token_id` is the CTC blank).

Module and parameter names are Hugging Face's (`wav2vec2.encoder.layers.0.attention.q_proj.weight`,
...), so a `Wav2Vec2ForCTC`, `Wav2Vec2ForPreTraining` or `Wav2Vec2Model` folder loads nearly as an
identity: the only rename is the old weight-norm spelling of the positional convolution
(`weight_g`/`weight_v` -> `parametrizations.weight.original0/1`). For the same weights the logits
match transformers' Wav2Vec2ForCTC to 1e-4 in eval mode (tests/test_wav2vec2.py), in all four
variants: feat_extract_norm "group" (wav2vec2-base) or "layer" (large, XLSR), and post-LN
(do_stable_layer_norm false) or pre-LN (true) transformer layers.

Padding: batches are right-padded and `attention_mask` marks the real samples. Padded frames never
change the real frames' logits: the padded frames are zeroed before the positional convolution and
hidden from attention, as transformers does. One deliberate difference: for "group" models the
GroupNorm of the first conv layer takes its statistics over each utterance's real samples only;
transformers includes the padding there, so in a padded batch its logits depend on the batch-mates.
Unpadded input (or no attention_mask) matches transformers exactly in every variant.

Randomness in training (dropout, LayerDrop, SpecAugment masks) comes only from the torch RNG, so
restoring the RNG state from a checkpoint makes a resumed run draw exactly what it would have drawn.

Shapes: B batch, S audio samples, T frames, C channels (hidden_size or conv channels), nh heads,
hs head size (C // nh), V vocab.
"""

import dataclasses
import json
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from model.hf_weights import read_weights_folder


@dataclasses.dataclass
class Wav2Vec2Config:
    # Defaults are transformers' Wav2Vec2Config defaults (= wav2vec2-base), so a config.json with
    # missing keys means what it means to transformers.
    vocab_size: int = 32                  # CTC output symbols, blank included
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072         # feed-forward width
    hidden_act: str = "gelu"              # feed-forward activation (only gelu is supported)
    hidden_dropout: float = 0.1           # after attention, feed-forward and positional embedding
    activation_dropout: float = 0.1       # inside the feed-forward, after the activation
    attention_dropout: float = 0.1        # on attention probabilities
    feat_proj_dropout: float = 0.0        # after the feature projection
    final_dropout: float = 0.1            # before the CTC head
    layerdrop: float = 0.1                # probability of skipping a whole layer in training
    layer_norm_eps: float = 1e-5
    feat_extract_norm: str = "group"      # "group": GroupNorm on conv layer 0; "layer": LayerNorm on every conv
    feat_extract_activation: str = "gelu"
    conv_dim: tuple = (512,) * 7          # channels of each feature-encoder conv
    conv_stride: tuple = (5, 2, 2, 2, 2, 2, 2)  # product 320 samples = 20 ms per frame at 16 kHz
    conv_kernel: tuple = (10, 3, 3, 3, 3, 2, 2)  # receptive field 400 samples = 25 ms
    conv_bias: bool = False
    num_conv_pos_embeddings: int = 128    # kernel of the positional convolution (frames)
    num_conv_pos_embedding_groups: int = 16
    do_stable_layer_norm: bool = False    # True: pre-LN layers + final LayerNorm (large/XLSR models)
    mask_time_prob: float = 0.05          # SpecAugment: expected share of frames masked in training
    mask_time_length: int = 10            # frames per time-mask span
    mask_time_min_masks: int = 2
    mask_feature_prob: float = 0.0        # SpecAugment: expected share of channels zeroed in training
    mask_feature_length: int = 10
    mask_feature_min_masks: int = 0
    pad_token_id: int = 0                 # the CTC blank

    def __post_init__(self):
        # Lists (from JSON) become tuples, so asdict -> JSON -> Wav2Vec2Config(**d) round-trips equal.
        self.conv_dim, self.conv_stride, self.conv_kernel = (
            tuple(int(v) for v in seq) for seq in (self.conv_dim, self.conv_stride, self.conv_kernel))
        if not len(self.conv_dim) == len(self.conv_stride) == len(self.conv_kernel) >= 1:
            raise ValueError("conv_dim, conv_stride and conv_kernel must be non-empty and of the same length")
        if self.hidden_size % self.num_attention_heads or self.hidden_size % self.num_conv_pos_embedding_groups:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                             f"and num_conv_pos_embedding_groups")
        if self.feat_extract_norm not in ("group", "layer"):
            raise ValueError(f"feat_extract_norm must be 'group' or 'layer', not {self.feat_extract_norm!r}")
        for name in ("hidden_act", "feat_extract_activation"):
            if getattr(self, name) != "gelu":
                raise ValueError(f"unsupported {name} {getattr(self, name)!r}: only 'gelu' (used by every released "
                                 f"wav2vec2 checkpoint) is implemented")
        for f in dataclasses.fields(self):
            if f.name.endswith(("dropout", "layerdrop", "_prob")) and not 0.0 <= getattr(self, f.name) <= 1.0:
                raise ValueError(f"{f.name} must be between 0 and 1, not {getattr(self, f.name)}")
        if self.mask_time_length < 1 or self.mask_feature_length < 1:
            raise ValueError("mask_time_length and mask_feature_length must be at least 1")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"pad_token_id (the CTC blank, {self.pad_token_id}) must be below vocab_size "
                             f"({self.vocab_size})")

    def feature_lengths(self, input_lengths, num_layers=None):
        """Audio samples -> frames after the first `num_layers` convs (all by default).

        The one formula for lengths (int or tensor (B,)): each conv (no padding) gives
        floor((L - kernel) / stride) + 1. It feeds the frame padding mask and the CTC input lengths.
        """
        for kernel, stride in list(zip(self.conv_kernel, self.conv_stride))[:num_layers]:
            input_lengths = (input_lengths - kernel) // stride + 1
        return input_lengths

    @classmethod
    def preset(cls, name, vocab_size):
        """A config by name: "tiny" learns from scratch on a CPU; "base" and "large" have the sizes of
        wav2vec2-base and wav2vec2-large-xlsr-53 / -large-lv60 (for their pretrained weights)."""
        if name == "tiny":
            # The real conv strides (20 ms frames) with 8x fewer channels, a narrow 3-layer encoder,
            # a short positional conv for clips of a few seconds, light masking, no LayerDrop.
            # Pre-LN layers: trained from scratch at lr 2e-3 the post-LN variant stalls on the
            # all-blank plateau, the pre-LN one learns (both learn at 5e-4).
            return cls(vocab_size=vocab_size, hidden_size=144, num_hidden_layers=3, num_attention_heads=4,
                       intermediate_size=576, conv_dim=(64,) * 7, num_conv_pos_embeddings=32,
                       num_conv_pos_embedding_groups=4, do_stable_layer_norm=True, activation_dropout=0.0,
                       attention_dropout=0.0, final_dropout=0.0, layerdrop=0.0, mask_time_length=5,
                       mask_time_min_masks=0)
        if name == "base":
            return cls(vocab_size=vocab_size)
        if name == "large":
            return cls(vocab_size=vocab_size, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                       intermediate_size=4096, feat_extract_norm="layer", conv_bias=True,
                       do_stable_layer_norm=True, activation_dropout=0.0)
        raise ValueError(f"unknown wav2vec2 preset {name!r}; choose tiny, base or large")

    @classmethod
    def from_hf(cls, hf):
        """A transformers config.json dict -> Wav2Vec2Config; keys we do not use are ignored."""
        if hf.get("model_type", "wav2vec2") != "wav2vec2":
            raise ValueError(f"config.json describes a {hf.get('model_type')!r} model, not wav2vec2")
        if hf.get("add_adapter") or hf.get("adapter_attn_dim") is not None:
            raise ValueError("wav2vec2 adapters (add_adapter / adapter_attn_dim, as in MMS) are not supported")
        n_convs = len(hf.get("conv_dim", cls.conv_dim))
        if hf.get("num_feat_extract_layers", n_convs) != n_convs:
            raise ValueError("config.json: num_feat_extract_layers does not match the length of conv_dim")
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in hf.items() if k in names and v is not None}
        if not hf.get("apply_spec_augment", True):
            kwargs.update(mask_time_prob=0.0, mask_feature_prob=0.0)
        return cls(**kwargs)

    def to_hf(self):
        """A config.json dict that transformers.Wav2Vec2ForCTC.from_pretrained accepts."""
        hf = dataclasses.asdict(self)
        hf.update({k: list(hf[k]) for k in ("conv_dim", "conv_stride", "conv_kernel")})
        hf.update(model_type="wav2vec2", architectures=["Wav2Vec2ForCTC"], num_feat_extract_layers=len(self.conv_dim),
                  apply_spec_augment=True, add_adapter=False, initializer_range=0.02, dtype="float32")
        return hf


# Pretraining-only parts of Wav2Vec2ForPreTraining (quantizer and contrastive projections): dropped on load.
PRETRAINING_PREFIXES = ("quantizer.", "project_q.", "project_hid.")
# Top-level names of a bare Wav2Vec2Model checkpoint, which has no "wav2vec2." prefix.
BASE_MODEL_PREFIXES = ("feature_extractor.", "feature_projection.", "encoder.", "masked_spec_embed", "adapter.")
# Old checkpoints spell weight norm torch.nn.utils.weight_norm's way; we use the parametrization.
RENAMES = {"pos_conv_embed.conv.weight_g": "pos_conv_embed.conv.parametrizations.weight.original0",
           "pos_conv_embed.conv.weight_v": "pos_conv_embed.conv.parametrizations.weight.original1"}
# Fields from_pretrained may override: they change training behaviour, not weight shapes.
OVERRIDABLE = ("hidden_dropout", "activation_dropout", "attention_dropout", "feat_proj_dropout", "final_dropout",
               "layerdrop", "mask_time_prob", "mask_time_length", "mask_time_min_masks", "mask_feature_prob",
               "mask_feature_length", "mask_feature_min_masks", "pad_token_id")


def span_mask(lengths, size, mask_prob, mask_length, min_masks):
    """SpecAugment spans as transformers' _compute_mask_indices, drawn from the torch RNG.

    lengths (B,) real positions per row -> mask (B, size) bool. Each row gets
    int(mask_prob * length / mask_length + eps) spans (eps ~ U[0,1) once per batch: probabilistic
    rounding), at least min_masks, with distinct starts chosen uniformly among the
    length - mask_length + 1 starts whose span fits inside the row's real length.
    """
    device = lengths.device
    eps = torch.rand((), device=device)
    num = torch.floor(mask_prob * lengths / mask_length + eps).long().clamp(min=min_masks)  # (B,)
    num = torch.where(num * mask_length > size, size // mask_length, num)
    starts_ok = (lengths - mask_length + 1).clamp(min=0)  # (B,) how many starts fit
    num = torch.minimum(num, starts_ok)
    # A uniform random subset of `num` starts: give every valid start a random key and keep the
    # `num` smallest (invalid starts get key 2, above any U[0,1) draw).
    keys = torch.rand(lengths.shape[0], size, device=device)  # (B, size)
    keys = keys.masked_fill(torch.arange(size, device=device) >= starts_ok[:, None], 2.0)
    rank = keys.argsort(dim=1).argsort(dim=1)  # (B, size) rank of each key within its row
    starts = (rank < num[:, None]).long()  # (B, size) 1 where a span starts
    # A position is masked when a span started in the last mask_length positions (itself included).
    started = starts.cumsum(dim=1)  # (B, size)
    return (started - F.pad(started, (mask_length, 0))[:, :size]) > 0


class ConvLayer(nn.Module):
    """One feature-encoder conv: conv -> [GroupNorm (layer 0 of "group") | LayerNorm over channels] -> GELU."""

    def __init__(self, cfg, i):
        super().__init__()
        c_in, c_out = (cfg.conv_dim[i - 1] if i else 1), cfg.conv_dim[i]
        self.conv = nn.Conv1d(c_in, c_out, cfg.conv_kernel[i], stride=cfg.conv_stride[i], bias=cfg.conv_bias)
        if cfg.feat_extract_norm == "layer":
            self.layer_norm = nn.LayerNorm(c_out)  # eps 1e-5 as transformers, not layer_norm_eps
        elif i == 0:
            self.layer_norm = nn.GroupNorm(c_out, c_out)  # one group per channel: normalise over time
        else:
            self.layer_norm = None

    def forward(self, x, lengths=None):
        """x (B, C_in, S_in), lengths (B,) real outputs of this conv or None -> (B, C_out, S_out)."""
        x = self.conv(x)
        if isinstance(self.layer_norm, nn.LayerNorm):
            x = self.layer_norm(x.transpose(1, 2)).transpose(1, 2)  # normalise each frame over channels
        elif isinstance(self.layer_norm, nn.GroupNorm):
            x = self.layer_norm(x) if lengths is None else self.masked_group_norm(x, lengths)
        return F.gelu(x)

    def masked_group_norm(self, x, lengths):
        """GroupNorm (per channel over time) with statistics from each row's first `lengths` frames;
        padded frames come out as zeros."""
        T, lengths = x.shape[2], lengths.clamp(min=1).tolist()
        if min(lengths) == T:  # no padding: one fused kernel over the batch
            return self.layer_norm(x)
        # One fused GroupNorm per row over its real frames. bench/asr_step.py on a padded batch:
        # masking the whole (B, C, T) tensor instead made temporaries of its size and was ~3x slower.
        rows = [self.layer_norm(x[i:i + 1, :, :n]) for i, n in enumerate(lengths)]  # (1, C, n) each
        return torch.cat([F.pad(row, (0, T - row.shape[2])) for row in rows])  # (B, C, T)


class FeatureEncoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.conv_layers = nn.ModuleList([ConvLayer(cfg, i) for i in range(len(cfg.conv_dim))])

    def forward(self, input_values, sample_lengths=None):
        """Audio (B, S), real samples per row (B,) or None -> features (B, T, C_conv)."""
        x = input_values[:, None, :]  # (B, 1, S)
        first_lengths = None if sample_lengths is None else self.config.feature_lengths(sample_lengths, 1)
        for i, layer in enumerate(self.conv_layers):
            # Later layers need no lengths: frame t < its length only sees real samples of the layer below.
            x = layer(x, first_lengths if i == 0 else None)  # (B, C, T_i)
        return x.transpose(1, 2)  # (B, T, C_conv)


class FeatureProjection(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.layer_norm = nn.LayerNorm(cfg.conv_dim[-1], eps=cfg.layer_norm_eps)
        self.projection = nn.Linear(cfg.conv_dim[-1], cfg.hidden_size)
        self.dropout = nn.Dropout(cfg.feat_proj_dropout)

    def forward(self, x):
        """(B, T, C_conv) -> (B, T, C)"""
        return self.dropout(self.projection(self.layer_norm(x)))


class PositionalConvEmbedding(nn.Module):
    """Relative position information from a wide grouped conv over time, weight-normalised."""

    def __init__(self, cfg):
        super().__init__()
        k, c = cfg.num_conv_pos_embeddings, cfg.hidden_size
        conv = nn.Conv1d(c, c, k, padding=k // 2, groups=cfg.num_conv_pos_embedding_groups)
        nn.init.normal_(conv.weight, mean=0.0, std=2 * math.sqrt(1 / (k * c)))  # fairseq's / transformers' init
        nn.init.zeros_(conv.bias)
        # weight = g * v / ||v||, the norm taken per kernel position (dim=2), as transformers does.
        # State-dict names: conv.parametrizations.weight.original0 (g, (1, 1, k)) and .original1 (v).
        self.conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
        self.remove_last = k % 2 == 0  # padding k // 2 on both sides gives T + 1 frames for even k

    def forward(self, x):
        """(B, T, C) -> (B, T, C)"""
        y = self.conv(x.transpose(1, 2))  # (B, C, T or T + 1)
        if self.remove_last:
            y = y[:, :, :-1]  # (B, C, T)
        return F.gelu(y).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.dropout = cfg.attention_dropout
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.out_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x, attn_mask=None):
        """x (B, T, C), attn_mask (B, 1, 1, T) bool (True = real key) or None -> (B, T, C)."""
        B, T, C = x.shape
        q = self.q_proj(x).view(B, T, self.num_heads, C // self.num_heads).transpose(1, 2)  # (B, nh, T, hs)
        k = self.k_proj(x).view(B, T, self.num_heads, C // self.num_heads).transpose(1, 2)  # (B, nh, T, hs)
        v = self.v_proj(x).view(B, T, self.num_heads, C // self.num_heads).transpose(1, 2)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0)  # (B, nh, T, hs)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, C))  # (B, T, C)


class FeedForward(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.intermediate_dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.intermediate_dropout = nn.Dropout(cfg.activation_dropout)
        self.output_dense = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.output_dropout = nn.Dropout(cfg.hidden_dropout)

    def forward(self, x):
        """(B, T, C) -> (B, T, C)"""
        x = self.intermediate_dropout(F.gelu(self.intermediate_dense(x)))  # (B, T, intermediate_size)
        return self.output_dropout(self.output_dense(x))


class EncoderLayer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.pre_norm = cfg.do_stable_layer_norm
        self.attention = Attention(cfg)
        self.dropout = nn.Dropout(cfg.hidden_dropout)
        self.layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.feed_forward = FeedForward(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x, attn_mask=None):
        """x (B, T, C), attn_mask (B, 1, 1, T) or None -> (B, T, C)."""
        if self.pre_norm:  # "stable": normalise each sublayer's input, the residual stream stays raw
            x = x + self.dropout(self.attention(self.layer_norm(x), attn_mask))
            return x + self.feed_forward(self.final_layer_norm(x))
        # post-norm (original Transformer / wav2vec2-base): normalise after each residual add
        x = self.layer_norm(x + self.dropout(self.attention(x, attn_mask)))
        return self.final_layer_norm(x + self.feed_forward(x))


class Encoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.gradient_checkpointing = False
        self.pos_conv_embed = PositionalConvEmbedding(cfg)
        self.layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)
        self.layers = nn.ModuleList([EncoderLayer(cfg) for _ in range(cfg.num_hidden_layers)])

    def forward(self, x, frame_mask=None):
        """x (B, T, C), frame_mask (B, T) bool (True = real frame) or None -> (B, T, C)."""
        attn_mask = None
        if frame_mask is not None:
            x = x.masked_fill(~frame_mask[:, :, None], 0.0)  # padding must not reach real frames via the conv
            attn_mask = frame_mask[:, None, None, :]  # (B, 1, 1, T) every query attends to real keys only
        x = x + self.pos_conv_embed(x)
        if not self.config.do_stable_layer_norm:
            x = self.layer_norm(x)  # post-LN models normalise the input; pre-LN ones the output (below)
        x = self.dropout(x)
        # Gradient checkpointing keeps only each layer's input (B, T, C) and reruns the layer's forward in
        # backward: one more forward a layer (on the CPU, base at 1 x 10 s: +1.0 s on a 3.5 s step, 43%
        # linear products, 28% redrawing dropout masks, 11% attention). Non-reentrant, so backward uses
        # the first forward's graph, and preserve_rng_state, so dropout redraws the same masks: loss and
        # gradients are bit-identical to a run without it. LayerDrop draws outside (once). The last layer
        # is not rerun: backward starts with it, so its activations would be rebuilt the moment they are
        # needed; keeping them leaves the peak as it was and saves 1/num_layers of the rerun. With these
        # and no mask on unpadded batches (Wav2Vec2Model.forward), ours checkpoints at 1.02-1.05x
        # transformers' speed on the CPU (BENCHMARKS.md); transformers reruns every layer the same way.
        checkpointing = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            # LayerDrop: skip the whole layer; the draw comes from the torch CPU RNG (saved in checkpoints).
            if self.training and self.config.layerdrop > 0 and torch.rand(()) < self.config.layerdrop:
                continue
            if checkpointing and i < last:
                x = torch.utils.checkpoint.checkpoint(layer, x, attn_mask, use_reentrant=False,
                                                      preserve_rng_state=True)
            else:
                x = layer(x, attn_mask)
        return self.layer_norm(x) if self.config.do_stable_layer_norm else x


class Wav2Vec2Model(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.feature_extractor = FeatureEncoder(cfg)
        self.feature_projection = FeatureProjection(cfg)
        self.masked_spec_embed = nn.Parameter(torch.rand(cfg.hidden_size))  # replaces time-masked frames
        self.encoder = Encoder(cfg)

    def forward(self, input_values, attention_mask=None):
        """Audio (B, S), attention_mask (B, S) or None -> hidden (B, T, C), frame lengths (B,) long."""
        B, S = input_values.shape
        sample_lengths = None if attention_mask is None else attention_mask.sum(-1).long()  # (B,) right padding
        if sample_lengths is not None and not bool((sample_lengths < S).any()):
            # No padding (batch 1, or equal lengths): as without a mask, so attention gets none. An
            # all-True mask changes no value but makes SDPA convert it on every call and, on a GPU,
            # rules out the flash kernel. This reads a bool from the device, as transformers does;
            # training leaves such masks out on the host (training/asr.py), so it never waits there.
            sample_lengths = None
        x = self.feature_extractor(input_values, sample_lengths)  # (B, T, C_conv)
        T = x.shape[1]
        if sample_lengths is None:
            lengths, frame_mask = torch.full((B,), T, dtype=torch.long, device=x.device), None
        else:
            lengths = self.config.feature_lengths(sample_lengths)  # (B,)
            frame_mask = torch.arange(T, device=x.device) < lengths[:, None]  # (B, T)
        x = self.feature_projection(x)  # (B, T, C)
        if self.training:
            x = self.spec_augment(x, lengths)
        return self.encoder(x, frame_mask), lengths

    def spec_augment(self, x, lengths):
        """Training-time SpecAugment: x (B, T, C), frame lengths (B,) -> x (B, T, C) with time spans
        replaced by the learned masked_spec_embed and channel spans zeroed."""
        B, T, C = x.shape
        cfg = self.config
        if cfg.mask_time_prob > 0:
            mask = span_mask(lengths, T, cfg.mask_time_prob, cfg.mask_time_length, cfg.mask_time_min_masks)  # (B, T)
            x = torch.where(mask[:, :, None], self.masked_spec_embed.to(x.dtype), x)
        if cfg.mask_feature_prob > 0:
            channels = torch.full((B,), C, dtype=torch.long, device=x.device)
            mask = span_mask(channels, C, cfg.mask_feature_prob, cfg.mask_feature_length,
                             cfg.mask_feature_min_masks)  # (B, C)
            x = x.masked_fill(mask[:, None, :], 0.0)
        return x


def ctc_loss_sum(logits, frames, labels, label_lengths):
    """CTC loss of logits (B, T, V) with frames (B,) real frames per row, against labels (B, L) padded
    with label_lengths (B,), summed over the batch (the training loop divides by the labels of its
    whole accumulation window: with variable-length targets, every label then weighs the same).

    In fp32: the log-probabilities of long alignments underflow in fp16. Blank is id 0 (`<pad>`, as
    in transformers). zero_infinity: a transcript longer than its audio has no alignment, and its
    infinite loss would turn every weight into NaN. cuDNN's CTC kernel is non-deterministic and
    restricted (labels <= 256, lengths on the CPU), so it is switched off."""
    log_probs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)  # (T, B, V)
    with torch.backends.cudnn.flags(enabled=False):
        return F.ctc_loss(log_probs, labels, frames, label_lengths, blank=0, reduction="sum", zero_infinity=True)


class Wav2Vec2ForCTC(nn.Module):
    config_class = Wav2Vec2Config

    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.wav2vec2 = Wav2Vec2Model(cfg)
        self.dropout = nn.Dropout(cfg.final_dropout)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module):
        # As transformers' _init_weights; the positional conv initialises itself before weight norm.
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, FeatureProjection):  # PyTorch's default Linear init, written out
            k = 1 / math.sqrt(module.projection.in_features)
            nn.init.uniform_(module.projection.weight, -k, k)
            nn.init.uniform_(module.projection.bias, -k, k)
        elif isinstance(module, ConvLayer):
            nn.init.kaiming_normal_(module.conv.weight)
            if module.conv.bias is not None:
                k = 1 / math.sqrt(module.conv.in_channels * module.conv.kernel_size[0])
                nn.init.uniform_(module.conv.bias, -k, k)

    @property
    def gradient_checkpointing(self):
        """Recompute each transformer layer but the last in backward (training with gradients only) to
        save activation memory; results are bit-identical (Encoder.forward says what it costs)."""
        return self.wav2vec2.encoder.gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, on):
        self.wav2vec2.encoder.gradient_checkpointing = bool(on)

    @property
    def skips_parameters(self):
        """Whether a training forward can leave a trainable parameter without a gradient, which DDP must
        be told (find_unused_parameters): LayerDrop skips whole layers, and without time masking
        masked_spec_embed is never used."""
        return self.config.layerdrop > 0 or self.config.mask_time_prob == 0

    def freeze_feature_encoder(self):
        """Keep the conv stack fixed (the usual way to fine-tune a pretrained model)."""
        for p in self.wav2vec2.feature_extractor.parameters():
            p.requires_grad_(False)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def feature_lengths(self, input_lengths):
        """Audio samples (int or (B,)) -> CTC frames (the conv length formula, see the config)."""
        return self.config.feature_lengths(input_lengths)

    def forward(self, input_values, attention_mask=None, labels=None, label_lengths=None):
        """Audio (B, S) float, attention_mask (B, S) 1 = real sample (right padding) or None
        -> logits (B, T, V), frame lengths (B,) long (the CTC input lengths). With labels (B, L)
        padded and label_lengths (B,), returns ((logits, frames), CTC loss summed over the batch)."""
        x, lengths = self.wav2vec2(input_values, attention_mask)  # (B, T, C), (B,)
        logits = self.lm_head(self.dropout(x))  # (B, T, V)
        if labels is None:
            return logits, lengths
        return (logits, lengths), ctc_loss_sum(logits, lengths, labels, label_lengths)

    # ------------------------------------------------------------------ Hugging Face layout

    @classmethod
    def from_pretrained(cls, folder, vocab_size=None, **overrides):
        """Load a Hugging Face wav2vec2 folder: a Wav2Vec2ForCTC, Wav2Vec2ForPreTraining or Wav2Vec2Model.

        A new random CTC head is made when the folder has none or `vocab_size` differs from its
        head's. `overrides` set training-behaviour fields (OVERRIDABLE: dropout, masking, LayerDrop,
        pad_token_id), never shapes. What was dropped or made new is printed and kept in `load_report`.
        """
        bad = sorted(set(overrides) - set(OVERRIDABLE))
        if bad:
            raise ValueError(f"cannot override {bad} when loading pretrained weights (they change weight shapes "
                             f"or meaning); allowed: {', '.join(OVERRIDABLE)}")
        config_path = os.path.join(folder, "config.json")
        if not os.path.exists(config_path):
            raise ValueError(f"{folder} has no config.json; point to a Hugging Face wav2vec2 folder")
        with open(config_path, encoding="utf-8") as f:
            cfg = Wav2Vec2Config.from_hf(json.load(f))
        sd, report = read_weights_folder(folder), []
        if not any(k.startswith("wav2vec2.") for k in sd):  # a bare Wav2Vec2Model
            sd = {("wav2vec2." + k if k.startswith(BASE_MODEL_PREFIXES) else k): v for k, v in sd.items()}
        dropped = sorted({k.split(".")[0] + ".*" for k in sd if k.startswith(PRETRAINING_PREFIXES)})
        if dropped:
            report.append(f"ignored pretraining-only weights {', '.join(dropped)}")
        sd = {k: v for k, v in sd.items() if not k.startswith(PRETRAINING_PREFIXES)}
        for old, new in RENAMES.items():
            sd = {k.replace(old, new): v for k, v in sd.items()}
        head_vocab = sd["lm_head.weight"].shape[0] if "lm_head.weight" in sd else None
        vocab_size = vocab_size or head_vocab or cfg.vocab_size
        fresh = {"wav2vec2.masked_spec_embed"}  # transformers omits it when masking is off; unused in eval
        if head_vocab != vocab_size:
            sd = {k: v for k, v in sd.items() if not k.startswith("lm_head.")}
            fresh |= {"lm_head.weight", "lm_head.bias"}
            report.append(f"new CTC head for {vocab_size} symbols (checkpoint head: {head_vocab or 'none'})")
        model = cls(dataclasses.replace(cfg, vocab_size=vocab_size, **overrides))
        ours = model.state_dict()
        missing = sorted(set(ours) - set(sd) - fresh)
        unexpected = sorted(set(sd) - set(ours))
        if missing or unexpected:
            raise ValueError(f"wav2vec2 weights in {folder} do not fit the model from its config.json: "
                             f"missing {missing}, unexpected {unexpected}")
        wrong = [f"{k}: checkpoint {tuple(v.shape)} != model {tuple(ours[k].shape)}"
                 for k, v in sd.items() if v.shape != ours[k].shape]
        if wrong:
            raise ValueError(f"wav2vec2 weights in {folder} have the wrong shape: {'; '.join(wrong)}")
        if "wav2vec2.masked_spec_embed" not in sd and model.config.mask_time_prob > 0:
            report.append("new masked_spec_embed for SpecAugment (the checkpoint has none)")
        model.load_state_dict(sd, strict=False)  # strict checks done above, with the allowed new ones
        model.load_report = report
        for line in report:
            print(f"wav2vec2 from {folder}: {line}")
        return model

    def save_pretrained(self, folder, vocab=None):
        """Write config.json + model.safetensors (+ vocab.json from a {token: id} dict) in
        Hugging Face's layout, so the folder opens with transformers.Wav2Vec2ForCTC.from_pretrained."""
        from safetensors.torch import save_file

        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
            json.dump(self.config.to_hf(), f, indent=2)
        sd = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        if self.config.mask_time_prob == 0 and self.config.mask_feature_prob == 0:
            sd.pop("wav2vec2.masked_spec_embed")  # transformers has this parameter only when masking is on
        save_file(sd, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
        if vocab is not None:
            if any(not 0 <= i < self.config.vocab_size for i in vocab.values()):
                raise ValueError(f"vocab ids must lie in [0, {self.config.vocab_size})")
            with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
                json.dump(vocab, f, ensure_ascii=False, indent=2)
