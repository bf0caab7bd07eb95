"""GPT training-step speed and peak memory: Baton's model/gpt.py against transformers' GPT2LMHeadModel.

    python bench/gpt_step.py                          # tiny (the lm default) and GPT-2 small, CPU
    python bench/gpt_step.py --device cuda            # adds bf16/fp16 autocast and MFU

One step = forward, cross-entropy, backward, AdamW update, on the same configuration, weights and
batch for both implementations. Each (size, precision, implementation) runs in fresh processes,
interleaved over rounds (bench/interleave.py), so its peak memory is its own (peak RSS on CPU,
torch.cuda.max_memory_allocated on a GPU). On a GPU, MFU = achieved model FLOP/s over the
device's peak dense bf16/fp16 FLOP/s, with 6N + 12 L T C FLOPs per token (N parameters without
embeddings; the second term is attention). Prints figures; asserts nothing.
"""

import argparse
import json
import os
import resource
import sys
import time

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from model.gpt import GPT, GPTConfig  # noqa: E402
from interleave import run_interleaved  # noqa: E402  (bench/, the script's own folder)

SIZES = {  # name: (GPTConfig fields, batch, sequence length)
    "tiny": (dict(vocab_size=256, block_size=64, n_layer=4, n_head=4, n_embd=128), 16, 64),
    "gpt2": (dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768), 4, 256),
}
PEAK_TFLOPS = {"H100": 989, "H200": 989, "A100": 312, "L4": 121, "A10": 125, "T4": 65, "V100": 125, "P100": 19}


def build(size, impl):
    fields, _, _ = SIZES[size]
    torch.manual_seed(0)
    ours = GPT(GPTConfig(**fields, dropout=0.0))
    if impl == "ours":
        return ours
    import transformers
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=fields["vocab_size"], n_positions=fields["block_size"], n_layer=fields["n_layer"],
        n_head=fields["n_head"], n_embd=fields["n_embd"], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    return hf


def one(args):
    device = torch.device(args.device)
    model = build(args.sizes, args.impl).to(device).train()
    fields, batch, seq = SIZES[args.sizes]
    torch.manual_seed(1)
    x = torch.randint(0, fields["vocab_size"], (batch, seq + 1), device=device)
    inputs, targets = x[:, :-1], x[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.mode)
    scaler = torch.amp.GradScaler(device.type, enabled=args.mode == "fp16")

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = model(inputs)
            logits = out if torch.is_tensor(out) else out.logits
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    step()
    step()  # warm-up: allocator, kernels, optimizer state
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / args.steps
    params = sum(p.numel() for p in model.parameters())
    non_embedding = params - fields["vocab_size"] * fields["n_embd"] - fields["block_size"] * fields["n_embd"]
    flops_per_token = 6 * non_embedding + 12 * fields["n_layer"] * seq * fields["n_embd"]
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    mfu = None
    if device.type == "cuda":
        name = torch.cuda.get_device_name()
        peak_tflops = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
        if peak_tflops:
            mfu = flops_per_token * batch * seq / dt / (peak_tflops * 1e12)
    print(json.dumps({"step_s": dt, "tokens_per_s": batch * seq / dt, "peak_gb": peak / 2**30,
                      "params_m": params / 1e6, "mfu": mfu}))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="tiny,gpt2")
    p.add_argument("--steps", type=int, default=5, help="timed steps after two warm-up steps")
    p.add_argument("--rounds", type=int, default=3, help="fresh processes per implementation, interleaved")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--impls", default="ours,transformers")
    p.add_argument("--impl", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.impl:
        return one(args)
    modes = ["fp32", "bf16"] if args.device == "cuda" else ["fp32"]
    impls = args.impls.split(",")
    print(f"device {args.device} ({torch.cuda.get_device_name() if args.device == 'cuda' else os.cpu_count()} "
          f"{'' if args.device == 'cuda' else 'CPUs'}); torch {torch.__version__}; mean of {args.steps} steps after "
          f"two warm-up steps; median of {args.rounds} interleaved rounds")
    print(f"{'size':5s} {'mode':5s} {'impl':13s} {'params':>8s} {'batch':>9s} {'step s':>8s} {'tokens/s':>10s} "
          f"{'peak GB':>8s} {'MFU':>6s}  steps of each round")
    for size in args.sizes.split(","):
        _, batch, seq = SIZES[size]
        for mode in modes:
            figures = run_interleaved(
                lambda impl: [sys.executable, __file__, "--sizes", size, "--steps", str(args.steps),
                              "--device", args.device, "--impl", impl, "--mode", mode],
                impls, args.rounds, f"{size:5s} {mode:5s}")
            for impl, (median, r, peak_gb, steps) in figures.items():
                mfu = f"{r['mfu'] * r['step_s'] / median:.1%}" if r["mfu"] else "-"
                print(f"{size:5s} {mode:5s} {impl:13s} {r['params_m']:7.1f}M {f'{batch}x{seq}':>9s} {median:8.3f} "
                      f"{batch * seq / median:10.0f} {peak_gb:8.2f} {mfu:>6s}  " + " ".join(f"{s:.3f}" for s in steps))
            if "ours" in figures and "transformers" in figures:
                print(f"{'':25s}speed ratio ours / transformers (medians): "
                      f"{figures['transformers'][0] / figures['ours'][0]:.2f}")

if __name__ == "__main__":
    main()
