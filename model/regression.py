"""A regression head on a backbone: pooled GPT features for text, an MLP for numeric columns, or both.

The text backbone is model/gpt.py's GPT under the name `backbone`, so its weights can come from a
Baton lm checkpoint or from Hugging Face GPT-2 (`backbone.transformer.h.0...`). The model returns
one unconstrained number per row, the log1p of the target (`data/table.py` encodes and decodes it);
given the encoded targets it also returns the training loss of `RegressorConfig.loss`.

Shapes: B rows, T tokens, C backbone width, F numeric columns, H head width.
"""

import dataclasses

import torch
import torch.nn as nn

from model.gpt import GPT, GPTConfig


@dataclasses.dataclass
class RegressorConfig:
    text: dict = None        # GPTConfig fields of the text backbone; None = no text input
    n_numeric: int = 0       # numeric input columns; 0 = none
    hidden: int = 128        # width of the numeric MLP and of the head
    dropout: float = 0.1     # before the head's layers
    pooling: str = "mean"    # "mean" over the real tokens, or the "last" real token (a causal model's summary)
    loss: str = "l1"         # on log1p(target): "l1" or "mse"; or "smape" (a smooth SMAPE on the targets)

    def __post_init__(self):
        if not self.text and not self.n_numeric:
            raise ValueError("a regressor needs text, numeric columns, or both")
        if self.pooling not in ("mean", "last"):
            raise ValueError(f"pooling must be 'mean' or 'last' (got {self.pooling!r})")
        if self.loss not in ("l1", "mse", "smape"):
            raise ValueError(f"loss must be 'l1', 'mse' or 'smape' (got {self.loss!r})")


class Regressor(nn.Module):
    config_class = RegressorConfig

    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.backbone = GPT(GPTConfig(**cfg.text)) if cfg.text else None
        self.numeric = nn.Sequential(
            nn.Linear(cfg.n_numeric, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, cfg.hidden), nn.GELU(),
        ) if cfg.n_numeric else None
        width = (self.backbone.config.n_embd if self.backbone else 0) + (cfg.hidden if self.numeric else 0)
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(width, cfg.hidden), nn.GELU(),
                                  nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden, 1))

    @property
    def gradient_checkpointing(self):
        """Recompute the text backbone's blocks in backward (training only) to save activation memory."""
        return self.backbone is not None and self.backbone.gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, on):
        if self.backbone is not None:
            self.backbone.gradient_checkpointing = bool(on)

    def forward(self, tokens=None, lengths=None, numeric=None, targets=None):
        """tokens (B, T) right-padded, lengths (B,) real tokens per row, numeric (B, F) -> (B,) log1p of
        the predicted target; with targets (B,) (log1p of the true ones), also the loss summed over the rows."""
        features = []
        if self.backbone is not None:
            h = self.backbone.hidden_states(tokens)  # (B, T, C); causal, so right padding never leaks left
            if self.config.pooling == "mean":
                real = (torch.arange(tokens.size(1), device=tokens.device)[None, :] < lengths[:, None])  # (B, T)
                pooled = (h * real[..., None]).sum(1) / lengths[:, None].clamp(min=1)  # (B, C)
            else:
                pooled = h[torch.arange(h.size(0), device=h.device), (lengths - 1).clamp(min=0)]  # (B, C)
            features.append(pooled)
        if self.numeric is not None:
            features.append(self.numeric(numeric))  # (B, H)
        x = torch.cat(features, dim=-1)  # (B, C + H)
        # The head in fp32 under any autocast: in bf16, log1p(price) would move in steps of 0.03-0.06,
        # 2-3% of the price, in training, in SMAPE and in the choice of the best model.
        with torch.autocast(x.device.type, enabled=False):
            out = self.head(x.float()).squeeze(-1)  # (B,)
        return out if targets is None else (out, self.loss_sum(out, targets))

    def loss_sum(self, out, targets):
        if self.config.loss == "l1":  # |error| in log space = relative error, the quantity SMAPE scores
            return (out - targets).abs().sum()
        if self.config.loss == "mse":
            return (out - targets).pow(2).sum()
        predicted, actual = torch.expm1(out.clamp(max=30.0)), torch.expm1(targets)  # smooth SMAPE
        return (2 * (predicted - actual).abs() / (predicted.abs() + actual.abs() + 1e-6)).sum()
