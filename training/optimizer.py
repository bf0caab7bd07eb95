"""AdamW for a run that moves between machines: which parameters decay, which implementation runs,
and loading its moments written by another implementation (a CPU part's file on a GPU, and back).
"""

import torch


def make_optimizer(model, cfg, device):
    # Weight decay on matrices only: decaying biases and norm gains just fights the data.
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel does the whole update in one launch on CUDA; foreach elsewhere (on CPU it gives
    # the same bits as the plain loop). `adamw=fused` on a CPU runs the CUDA path's code on a CPU.
    kind = cfg.adamw if cfg.adamw != "auto" else ("fused" if device.type == "cuda" else "foreach")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, cfg.beta2), fused=kind == "fused",
                             foreach=kind == "foreach")


OPTIMIZER_FLAGS = ("fused", "foreach", "capturable", "differentiable")  # how AdamW runs, not what it learned


def load_optimizer_state(optimizer, state):
    """Load AdamW's moments and step counts, keeping this run's implementation flags: a file written on
    a CPU (foreach) says nothing about how a GPU part must run, and load_state_dict would otherwise
    take the file's flags with the param groups (the fused GPU step then meets CPU step counts, and
    the GradScaler a fused optimizer that is not)."""
    own = [{flag: group[flag] for flag in OPTIMIZER_FLAGS if flag in group} for group in optimizer.param_groups]
    groups = [{**saved, **flags} for saved, flags in zip(state["param_groups"], own)]
    optimizer.load_state_dict({**state, "param_groups": groups + state["param_groups"][len(groups):]})
