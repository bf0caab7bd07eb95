"""A GPT-2 style language model, small enough to read in one sitting.

Module and parameter names are GPT-2's (`transformer.h.0.attn.c_attn.weight`, ...), so loading a
Hugging Face GPT-2 folder is nearly an identity: the only change is that GPT-2 stores its
projection weights as Conv1D (in, out) where we use nn.Linear (out, in). For the same weights
the logits match `transformers`' GPT2LMHeadModel (see tests/test_gpt.py).

Shapes: B batch, T time (tokens), C channels (n_embd), nh heads, hs head size (C // nh), V vocab.
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
class GPTConfig:
    vocab_size: int = 256        # tokens; 256 for the byte tokenizer, 50257 for GPT-2's BPE
    block_size: int = 256        # longest context (GPT-2: n_positions)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.1         # embedding and residual dropout (GPT-2: embd_pdrop, resid_pdrop)
    attn_dropout: float = 0.0    # dropout on attention probabilities (GPT-2: attn_pdrop); on CPU it
                                 # costs ~35% of a step (a random draw per B*nh*T*T score)
    layer_norm_epsilon: float = 1e-5
    tie_embeddings: bool = True  # lm_head shares the token embedding matrix, as in GPT-2

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")


# GPT-2 checkpoints store these as Conv1D weights of shape (in, out); nn.Linear wants (out, in).
CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Buffers some GPT-2 checkpoints carry (the causal mask); we build masks inside SDPA instead.
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_head = cfg.n_head
        self.attn_dropout = cfg.attn_dropout
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)  # q, k, v in one matmul
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # each (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.attn_dropout if self.training else 0.0)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        # GPT-2's "gelu_new" is the tanh approximation of GELU.
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.mlp = MLP(cfg)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


# ---------------------------------------------------------------------- the training loss, chunked

LOSS_CHUNK_LOGITS = 2 ** 25  # logits of one chunk of the loss: 128 MiB in fp32
IGNORE_INDEX = -100  # F.cross_entropy's default: a target that adds no loss and no gradient


def loss_chunk_for(vocab_size):
    """Tokens per chunk of chunked_cross_entropy: the largest power of two whose logits fit in
    LOSS_CHUNK_LOGITS (GPT-2's 50,257: 512 tokens, 103 MB of fp32 logits, against 823 MB for
    8 x 512 tokens at once). Large enough that the lm_head products stay efficient matrix products
    (512 x 768 x 50,257 per chunk), small enough that a chunk's logits and their softmax are a
    fraction of the step. Depends on the vocabulary only: a run and its resume take the same chunks,
    so the same operations. The byte vocabulary (256) gets 131,072 tokens: one chunk in practice."""
    return 1 << max(0, (LOSS_CHUNK_LOGITS // vocab_size).bit_length() - 1)


def _cross_entropy_chunks(h, weight, targets, chunk, want_grad_h, want_grad_w):
    """The cross-entropy of lm_head(h) against targets, summed, one chunk of tokens at a time; with
    want_grad_*, also its gradients for h and weight, computed from each chunk's logits while they
    are at hand: backward then needs no second lm_head product (recomputing each chunk's logits
    there would add 2 V C FLOPs a token, about a tenth of a GPT-2-small step). Returns (loss,
    grad_h or None, grad_weight or None). h (N, C), weight (V, C), targets (N,).

    Precision as the full-logits way under autocast: the lm_head products in the autocast dtype
    (bf16/fp16 if on, else fp32), log-softmax and softmax in fp32, the weight's gradient summed over
    chunks in fp32."""
    N = h.size(0)
    if torch.is_autocast_enabled(h.device.type):
        # Cast the weight once, not in each of the 3 products of every chunk (autocast would).
        weight_c = weight.to(torch.get_autocast_dtype(h.device.type))  # (V, C)
    else:
        weight_c = weight  # (V, C)
    losses = torch.empty(N, device=h.device, dtype=torch.float32)  # (N,) each token's loss
    grad_h = torch.empty(N, h.size(1), device=h.device, dtype=h.dtype) if want_grad_h else None  # (N, C)
    grad_w = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32) if want_grad_w else None  # (V, C)
    for start in range(0, N, chunk):
        h_c, t_c = h[start:start + chunk], targets[start:start + chunk]  # (n, C), (n,)
        logits = F.linear(h_c, weight_c)  # (n, V), autocast dtype
        z = logits.float()  # (n, V) fp32 (the same tensor when logits are fp32)
        del logits  # a bf16/fp16 copy need not live through the chunk
        lse = torch.logsumexp(z, dim=-1)  # (n,)
        keep = t_c != IGNORE_INDEX  # (n,)
        safe = torch.where(keep, t_c, 0)  # (n,) an in-range index for ignored tokens too
        target_logit = z.gather(1, safe[:, None]).squeeze(1)  # (n,)
        losses[start:start + chunk] = torch.where(keep, lse - target_logit, 0.0)
        if not (want_grad_h or want_grad_w):
            continue
        # d loss / d logits = softmax - one_hot(target), made in place over z (no longer needed).
        g = z.sub_(lse[:, None]).exp_()  # (n, V) softmax
        g[torch.arange(g.size(0), device=g.device), safe] -= 1.0
        g = g.to(weight_c.dtype)  # (n, V) the products' dtype, as autocast's linear backward has it
        keep_c = keep[:, None].to(h_c.dtype)  # (n, 1) ignored tokens: no gradient
        if want_grad_h:
            grad_h[start:start + chunk] = torch.mm(g, weight_c) * keep_c  # (n, C)
        if want_grad_w:
            h_kept = (h_c * keep_c).to(weight_c.dtype)  # (n, C)
            if weight_c.dtype == grad_w.dtype:
                grad_w.addmm_(g.t(), h_kept)  # (V, C) fp32: summed in place, no (V, C) temporary
            else:
                grad_w += torch.mm(g.t(), h_kept)  # (V, C) bf16/fp16 product, summed in fp32
    loss = losses.sum()
    return loss, grad_h, grad_w if grad_w is None else grad_w.to(weight.dtype)


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Forward computes the loss and, chunk by chunk, its gradients (_cross_entropy_chunks); backward
    only scales them by the incoming gradient (the loss is a scalar, so that is the chain rule). What
    is kept between the two: grad_h (N, C) and grad_weight (V, C), not the (N, V) logits."""

    @staticmethod
    def forward(ctx, h, weight, targets, chunk):
        loss, grad_h, grad_w = _cross_entropy_chunks(h, weight, targets, chunk,
                                                     ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        ctx.save_for_backward(grad_h, grad_w)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.saved_tensors
        # In place: these are used once (a second backward through the graph would fail on the
        # saved tensors' version check rather than give wrong gradients).
        return (None if grad_h is None else grad_h.mul_(grad_loss.to(grad_h.dtype)),
                None if grad_w is None else grad_w.mul_(grad_loss.to(grad_w.dtype)), None, None)


def chunked_cross_entropy(h, weight, targets, chunk):
    """sum over tokens of cross_entropy(h @ weight.T, targets), i.e. F.cross_entropy(lm_head(h),
    targets, reduction="sum") within float rounding, holding the logits of `chunk` tokens at a time,
    forward and backward. h (N, C) final hidden states, weight (V, C) the lm_head, targets (N,)."""
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        return _ChunkedCrossEntropy.apply(h, weight, targets, chunk)
    return _cross_entropy_chunks(h, weight, targets, chunk, False, False)[0]  # evaluation: the loss alone


class GPT(nn.Module):
    config_class = GPTConfig

    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.gradient_checkpointing = False  # recompute each block in backward to save memory
        self.loss_chunk = None  # tokens per chunk of the training loss; None: loss_chunk_for(vocab_size)
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
            wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
            drop=nn.Dropout(cfg.dropout),
            h=nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)]),
            ln_f=nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon),
        ))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        self.apply(self._init_weights)
        # GPT-2 scales the init of residual projections by 1/sqrt(2 * n_layer): each block adds
        # two of them to the residual stream, so this keeps its variance from growing with depth.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def hidden_states(self, idx):
        """Token ids (B, T) -> final hidden states (B, T, C), after the last layer norm."""
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence of {T} tokens is longer than block_size {self.config.block_size}")
        pos = torch.arange(T, device=idx.device)  # (T,)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for block in self.transformer.h:
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.transformer.ln_f(x)

    def forward(self, idx, targets=None, return_logits=False):
        """Token ids (B, T) -> next-token logits (B, T, V). With targets (B, T): (output, loss_sum), the
        cross-entropy summed over the B * T tokens (targets of -100 are left out, as in F.cross_entropy).
        Summed, not averaged: the training loop divides by the tokens of its whole step (all micro-batches),
        so every token weighs the same (as in nanoGPT's model(X, Y)).

        With targets, output is None and the loss is chunked_cross_entropy's: the whole logits are never
        held (for GPT-2 small at 8 x 512 they are 0.8 GB in fp32, and their log-softmax and gradient as
        much again each). return_logits=True gives the logits (B, T, V) as output instead, and the loss
        from them by F.cross_entropy (the full-logits way; same value within float rounding)."""
        h = self.hidden_states(idx)  # (B, T, C)
        if targets is None:
            return self.lm_head(h)  # (B, T, V)
        if return_logits:
            logits = self.lm_head(h)  # (B, T, V)
            # fp32 log-softmax: under autocast the logits may be fp16/bf16, whose sums lose precision.
            return logits, F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="sum")
        return None, chunked_cross_entropy(h.flatten(0, 1), self.lm_head.weight, targets.flatten(),
                                           self.loss_chunk or loss_chunk_for(self.config.vocab_size))

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None):
        """Extend idx (B, T) by sampling max_new_tokens tokens; temperature 0 means greedy."""
        for _ in range(max_new_tokens):
            context = idx[:, -self.config.block_size:]  # (B, <=block_size)
            # Only the last position's logits: the lm_head of the whole context would be (B, T, V).
            logits = self.lm_head(self.hidden_states(context)[:, -1, :])  # (B, V)
            if temperature == 0:
                next_id = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
            else:
                logits = logits / temperature
                if top_k:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]  # (B, 1)
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = F.softmax(logits.float(), dim=-1)
                next_id = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
            idx = torch.cat([idx, next_id], dim=1)
        return idx

    # ------------------------------------------------------------------ Hugging Face layout

    @classmethod
    def config_from_hf(cls, hf):
        if hf.get("model_type", "gpt2") != "gpt2":
            raise ValueError(f"config.json describes a {hf.get('model_type')!r} model, not GPT-2")
        if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"unsupported activation {hf['activation_function']!r} (GPT-2 uses gelu_new)")
        if hf.get("n_inner") not in (None, 4 * hf["n_embd"]):
            raise ValueError("only GPT-2's MLP width (n_inner = 4 * n_embd) is supported")
        if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn"):
            raise ValueError("scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn are not supported")
        if not hf.get("scale_attn_weights", True):
            raise ValueError("scale_attn_weights=false is not supported")
        return GPTConfig(
            vocab_size=hf["vocab_size"], block_size=hf.get("n_positions", hf.get("n_ctx", 1024)),
            n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"],
            dropout=hf.get("resid_pdrop", 0.1), attn_dropout=hf.get("attn_pdrop", 0.1),
            layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5),
            tie_embeddings=hf.get("tie_word_embeddings", True),
        )

    @classmethod
    def from_pretrained(cls, folder, **overrides):
        """Load a Hugging Face GPT-2 folder (config.json + model.safetensors or pytorch_model.bin).

        `overrides` replace config fields that do not change weight shapes (dropout, block_size
        no larger than the checkpoint's).
        """
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            cfg = cls.config_from_hf(json.load(f))
        n_positions = cfg.block_size
        cfg = dataclasses.replace(cfg, **overrides)
        if cfg.block_size > n_positions:
            raise ValueError(f"block_size {cfg.block_size} exceeds the checkpoint's n_positions {n_positions}")
        sd = read_weights_folder(folder)
        model = cls(cfg)
        ours = model.state_dict()
        converted = {}
        for key, value in sd.items():
            name = key[len("transformer."):] if key.startswith("transformer.") else key
            if name.endswith(IGNORED_SUFFIXES):
                continue
            name = name if name == "lm_head.weight" else "transformer." + name
            if name.endswith(CONV1D_SUFFIXES):
                value = value.t()
            if name == "transformer.wpe.weight":
                value = value[: cfg.block_size]
            converted[name] = value
        if cfg.tie_embeddings:
            converted.pop("lm_head.weight", None)
            converted["lm_head.weight"] = converted.get("transformer.wte.weight")
        missing = sorted(set(ours) - set(converted))
        unexpected = sorted(set(converted) - set(ours))
        if missing or unexpected:
            raise ValueError(f"GPT-2 weights in {folder} do not fit: missing {missing[:6]}, unexpected {unexpected[:6]}")
        for name, value in converted.items():
            if value.shape != ours[name].shape:
                raise ValueError(f"{name}: checkpoint shape {tuple(value.shape)} != model shape {tuple(ours[name].shape)}")
        model.load_state_dict(converted)
        return model

    def save_pretrained(self, folder):
        """Write config.json + model.safetensors in GPT-2's layout (opens with transformers)."""
        from safetensors.torch import save_file

        os.makedirs(folder, exist_ok=True)
        cfg = self.config
        hf = {
            "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "vocab_size": cfg.vocab_size, "n_positions": cfg.block_size, "n_ctx": cfg.block_size,
            "n_embd": cfg.n_embd, "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_inner": None,
            "activation_function": "gelu_new", "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout,
            "attn_pdrop": cfg.attn_dropout, "layer_norm_epsilon": cfg.layer_norm_epsilon,
            "initializer_range": 0.02, "scale_attn_weights": True, "use_cache": True,
            "bos_token_id": cfg.vocab_size - 1, "eos_token_id": cfg.vocab_size - 1,
            "tie_word_embeddings": cfg.tie_embeddings,
        }
        with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
            json.dump(hf, f, indent=2)
        sd = {}
        for name, value in self.state_dict().items():
            if name == "lm_head.weight" and cfg.tie_embeddings:
                continue  # tied to wte; transformers re-ties it on load
            if name.endswith(CONV1D_SUFFIXES):
                value = value.t()
            sd[name] = value.detach().cpu().contiguous()
        save_file(sd, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})

