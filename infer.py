"""The inference stage: a checkpoint in, predictions out.

    python infer.py --task lm  --ckpt runs/lm --prompt "It was" [--max-new-tokens 200]

`--ckpt` takes a full training checkpoint, a weights-only `best_model.safetensors`, or a run
folder (then its best model, else its newest valid checkpoint). The model is rebuilt from the
config stored in the file, so no training flags need repeating.
"""

import argparse
import os
import sys

import torch

import ckpt
from data import DataError
from data import text as text_data
from model.gpt import GPT, GPTConfig


class InferError(Exception):
    """A bad argument or input; the message is one sentence that says what to do."""


def resolve_checkpoint(path):
    """A file path as given, or for a folder: best model, then latest.txt, then newest by global step."""
    if not os.path.isdir(path):
        return path
    best = os.path.join(path, ckpt.BEST_NAME)
    if os.path.exists(best):
        return best
    latest = os.path.join(path, ckpt.LATEST_NAME)
    if os.path.exists(latest):
        with open(latest, encoding="utf-8") as f:
            named = os.path.join(path, f.read().strip())
        if os.path.exists(named):
            return named
    found = [f for f in ckpt.scan([path]) if f.problem is None]
    if not found:
        raise InferError(f"no checkpoint in {path}; train first or pass a .safetensors file")
    return max(found, key=lambda f: f.global_step).path


def load_model(path, task, device):
    """The model of a checkpoint, in eval mode, plus the checkpoint's metadata."""
    saved = ckpt.load_any(resolve_checkpoint(path))
    if saved.meta.get("kind") == "legacy":
        raise InferError(f"{saved.path} is a legacy file without a config; continue training from it with "
                         f"train_part.py --resume {saved.path} to get a Baton checkpoint")
    if saved.meta.get("task") != task:
        raise InferError(f"{saved.path} is a checkpoint of task {saved.meta.get('task')!r}, not {task!r}; "
                         f"pass --task {saved.meta.get('task')}")
    if task == "lm":
        model = GPT(GPTConfig(**saved.meta["model_config"]))
    else:
        raise InferError(f"unknown task {task!r}")
    model.load_state_dict(saved.state["model"])
    print(f"loaded {saved.path} (task {task}, global step {saved.meta.get('global_step')})", file=sys.stderr)
    return model.to(device).eval(), saved.meta


def infer_lm(args, device):
    model, meta = load_model(args.ckpt, "lm", device)
    tokenizer = text_data.tokenizer_from_dict(meta["task_meta"]["tokenizer"])
    prompt = args.prompt if args.prompt else "\n"
    ids = torch.tensor([tokenizer.encode(prompt)], dtype=torch.long, device=device)  # (1, T)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    for i in range(args.num_samples):
        out = model.generate(ids, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                             generator=generator)
        if args.num_samples > 1:
            print(f"--- sample {i + 1}")
        print(tokenizer.decode(out[0].tolist()))


def parse_args(argv):
    p = argparse.ArgumentParser(description="Predict with a Baton checkpoint.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--task", required=True, choices=("lm",))
    p.add_argument("--ckpt", required=True, help="checkpoint file, best_model.safetensors, or a run folder")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available")
    g = p.add_argument_group("lm")
    g.add_argument("--prompt", default="", help="text to continue")
    g.add_argument("--max-new-tokens", type=int, default=300)
    g.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    g.add_argument("--top-k", type=int, default=40, help="sample among the k likeliest tokens; 0 = all")
    g.add_argument("--num-samples", type=int, default=1)
    g.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        infer_lm(args, device)
    except (InferError, DataError, ckpt.CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
