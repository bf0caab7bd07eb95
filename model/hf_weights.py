"""Reading the weights of a Hugging Face model folder, for from_pretrained: model.safetensors (or its
shards), else pytorch_model.bin read with torch.load(weights_only=True), never a full unpickle.

A folder that cannot be read is `WeightsError`, one sentence. (Baton's own checkpoint files are
ckpt.py's; nothing here knows them.)
"""

import json
import os

import torch


class WeightsError(Exception):
    """A Hugging Face folder whose weights cannot be read; the message is one sentence."""


def read_weights_folder(folder):
    """The weights of a Hugging Face model folder as one state dict: `model.safetensors` (or its
    shards listed in `model.safetensors.index.json`), else `pytorch_model.bin` read with
    weights_only=True, never a full unpickle."""
    from safetensors.torch import load_file

    if not os.path.isdir(folder):
        raise WeightsError(f"pretrained folder {folder} does not exist")
    single = os.path.join(folder, "model.safetensors")
    index = single + ".index.json"
    if os.path.exists(single):
        return load_file(single)
    if os.path.exists(index):
        with open(index, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        sd = {}
        for shard in shards:
            sd.update(load_file(os.path.join(folder, shard)))
        return sd
    bin_path = os.path.join(folder, "pytorch_model.bin")
    if os.path.exists(bin_path):
        return read_bin(bin_path)
    raise WeightsError(f"{folder} has no model.safetensors or pytorch_model.bin")


def read_bin(path):
    """The state dict in a Hugging Face `pytorch_model.bin` (a bare dict of tensors, as save_pretrained
    writes it), by `torch.load(weights_only=True)`: it unpickles plain tensors and containers and
    refuses anything that would construct other objects or run code. (Other .pt/.pth files, with
    optimizer states and wrapper prefixes, are ckpt.py's `load_legacy`.)"""
    try:
        weights = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # the unpickler raises several types; all mean "not plain tensors"
        raise WeightsError(f"refusing to load {path}: it is not a plain state dict that torch.load(weights_only=True) "
                           f"reads ({type(e).__name__})") from None
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise WeightsError(f"{path} is not a Hugging Face state dict (a dict of tensors)")
    return weights
