"""GPT training-step speed and memory: Baton's model/gpt.py against transformers' GPT2LMHeadModel.

    python bench/gpt_step.py                  # tiny (the lm default) and GPT-2 small, CPU fp32
    python bench/gpt_step.py --device cuda    # fp32 and bf16 autocast, eager and torch.compile, MFU
    python bench/gpt_step.py --device cuda --sizes gpt2 --modes bf16 --compiles yes --rounds 1   # one row each
    python bench/gpt_step.py --memory         # CPU: GPT-2 small at 8 x 512 fp32, what a step holds

One step = forward, cross-entropy, backward, AdamW update, on the same configuration, weights and
batch for every implementation:
  ours          model(idx, targets): the loss chunked over the tokens, the logits never whole
  full          our model with model(idx, targets, return_logits=True): the whole (B, T, V) logits and
                F.cross_entropy on them in fp32, as nanoGPT does (and as ours did before the chunking)
  transformers  GPT2LMHeadModel's logits, F.cross_entropy on them in fp32
Each (size, precision, compile, implementation) runs in fresh processes, interleaved over rounds
(bench/interleave.py). Memory, two figures: "peak GB", the process's peak (peak RSS on CPU,
torch.cuda.max_memory_allocated on a GPU), and "step GB", the peak during the steps less what was
held before the first step, once the model and AdamW's state were built (on CPU the peak RSS of
the steps, through /proc/self/clear_refs, less the RSS then; on a GPU max_memory_allocated less
memory_allocated then): activations, logits, gradients, temporaries. On a GPU, MFU = model FLOP/s
over the device's peak dense bf16/fp16 FLOP/s (autocast rows only), with nanoGPT's count of
6N + 12 L T C FLOPs a token: N all parameters but the position table (the tied lm_head counted
once, as its product is done), 12 L T C attention's score and value products. Prints figures;
asserts nothing.
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
from training import devices  # noqa: E402  (the peak table MFU is measured against, as in a part)
from interleave import run_interleaved  # noqa: E402  (bench/, the script's own folder)

SIZES = {  # name: (GPTConfig fields, (batch, sequence) on CPU, (batch, sequence) on CUDA)
    "tiny": (dict(vocab_size=256, block_size=64, n_layer=4, n_head=4, n_embd=128), (16, 64), (16, 64)),
    # CPU: small enough for a few steps in seconds; CUDA: nanoGPT's micro-batch, which fills a GPU
    "gpt2": (dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768), (4, 256), (16, 1024)),
}
MEMORY_BATCH = (8, 512)  # --memory: GPT-2 small, CPU fp32


def build(size, impl):
    fields = SIZES[size][0]
    torch.manual_seed(0)
    ours = GPT(GPTConfig(**fields, dropout=0.0))
    if impl in ("ours", "full"):
        return ours
    import transformers
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=fields["vocab_size"], n_positions=fields["block_size"], n_layer=fields["n_layer"],
        n_head=fields["n_head"], n_embd=fields["n_embd"], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    return hf


def flops_per_token(model, fields, seq):
    """nanoGPT's estimate_mfu count: 6N for the parameters' products forward and backward (N without
    the position table, whose lookup is no product; the tied lm_head once: parameters() lists a
    shared tensor once), 12 L T C for attention's QK^T and AV."""
    n = sum(p.numel() for p in model.parameters()) - fields["block_size"] * fields["n_embd"]
    return 6 * n + 12 * fields["n_layer"] * seq * fields["n_embd"]


def host_memory(reset=False):
    """(RSS, peak RSS) of this process in bytes; reset=True first sets the peak to the RSS now
    (Linux: writing 5 to /proc/self/clear_refs), so the peak after is that of what follows."""
    try:
        if reset:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        with open("/proc/self/status") as f:
            kb = {line.split(":")[0]: int(line.split()[1]) for line in f if line.startswith(("VmRSS", "VmHWM"))}
        return kb["VmRSS"] * 1024, kb["VmHWM"] * 1024
    except OSError:  # not Linux: the peak since the process began
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
        return peak, peak


def one(args):
    device = torch.device(args.device)
    model = build(args.sizes, args.impl).to(device).train()
    fields = SIZES[args.sizes][0]
    batch, seq = args.batch
    torch.manual_seed(1)
    x = torch.randint(0, fields["vocab_size"], (batch, seq + 1), device=device)
    inputs, targets = x[:, :-1], x[:, 1:]  # (B, T) each
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    # AdamW's moments exist from the first step on: make them now (an update with lr 0 leaves the
    # weights as they are), so "before the step" holds the weights and the optimizer state.
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    for group in opt.param_groups:
        group["lr"] = 0.0
    opt.step()
    for group in opt.param_groups:
        group["lr"] = 1e-4
    opt.zero_grad(set_to_none=True)
    train_model = torch.compile(model) if args.compile else model
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.mode)
    scaler = torch.amp.GradScaler(device.type, enabled=args.mode == "fp16")

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            if args.impl == "ours":  # (None, loss summed over the tokens), chunked
                loss = train_model(inputs, targets)[1] / targets.numel()
            elif args.impl == "full":  # ((B, T, V) logits, F.cross_entropy over them)
                loss = train_model(inputs, targets, return_logits=True)[1] / targets.numel()
            else:
                logits = train_model(inputs).logits  # (B, T, V)
                loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before, _ = host_memory(reset=True)
    for _ in range(args.warmup):  # allocator, kernels (compilation)
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / args.steps
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else host_memory()[1]
    total_peak = peak if device.type == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    fpt = flops_per_token(model, fields, seq)
    peak_flops = devices.peak_flops(device, args.mode)  # the GPU's dense bf16/fp16 peak; None on CPU or fp32
    mfu = fpt * batch * seq / dt / peak_flops if peak_flops else None
    print(json.dumps({"step_s": dt, "tokens_per_s": batch * seq / dt, "peak_gb": total_peak / 2**30,
                      "before_gb": before / 2**30, "step_gb": (peak - before) / 2**30,
                      "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
                      "flops_per_token": fpt, "mfu": mfu}))


def command(args, size, batch, mode, compiled, steps, warmup):
    """impl -> the command line of one fresh process that measures it (one())."""
    return lambda impl: [sys.executable, __file__, "--sizes", size, "--steps", str(steps), "--warmup", str(warmup),
                         "--device", args.device, "--impl", impl, "--mode", mode,
                         "--batch", f"{batch[0]}x{batch[1]}"] + (["--compile"] if compiled else [])


def speed_table(args):
    modes = (args.modes or ("fp32,bf16" if args.device == "cuda" else "fp32")).split(",")
    compiles = [c == "yes" for c in (args.compiles or ("no,yes" if args.device == "cuda" else "no")).split(",")]
    impls = args.impls.split(",")
    print(f"device {args.device} ({torch.cuda.get_device_name() if args.device == 'cuda' else os.cpu_count()} "
          f"{'' if args.device == 'cuda' else 'CPUs'}); torch {torch.__version__}; mean of {args.steps} steps after "
          f"{args.warmup} warm-up steps; median of {args.rounds} interleaved rounds; step GB: peak less the "
          f"weights and AdamW state; MFU: bf16 peak, 6N + 12 L T C FLOPs a token")
    print(f"{'size':5s} {'mode':5s} {'compile':7s} {'impl':13s} {'params':>8s} {'batch':>9s} {'step s':>8s} "
          f"{'tokens/s':>10s} {'peak GB':>8s} {'step GB':>8s} {'MFU':>6s}  steps of each round")
    for size in args.sizes.split(","):
        fields, cpu_batch, cuda_batch = SIZES[size]
        batch = args.batch or (cuda_batch if args.device == "cuda" else cpu_batch)
        for mode in modes:
            for compiled in compiles:
                figures = run_interleaved(command(args, size, batch, mode, compiled, args.steps, args.warmup),
                                          impls, args.rounds, f"{size:5s} {mode:5s} {'yes' if compiled else 'no':7s}")
                for impl, (median, r, peak_gb, steps) in figures.items():
                    mfu = f"{r['mfu'] * r['step_s'] / median:.1%}" if r["mfu"] else "-"
                    print(f"{size:5s} {mode:5s} {'yes' if compiled else 'no':7s} {impl:13s} {r['params_m']:7.1f}M "
                          f"{f'{batch[0]}x{batch[1]}':>9s} {median:8.3f} {batch[0] * batch[1] / median:10.0f} "
                          f"{peak_gb:8.2f} {r['step_gb']:8.2f} {mfu:>6s}  " + " ".join(f"{s:.3f}" for s in steps))
                for other in ("full", "transformers"):
                    if "ours" in figures and other in figures:
                        print(f"{'':33s}speed ratio ours / {other} (medians): "
                              f"{figures[other][0] / figures['ours'][0]:.2f}")


def memory_table(args):
    """GPT-2 small, 8 x 512 tokens, CPU fp32: what one step holds beyond the weights and AdamW state."""
    batch = args.batch or MEMORY_BATCH
    impls = args.impls.split(",")
    print(f"GPT-2 small, {batch[0]} x {batch[1]} tokens, CPU fp32 ({os.cpu_count()} CPUs), torch {torch.__version__}: "
          f"{args.warmup} + {args.steps} steps in a fresh process per implementation, {args.rounds} round(s)")
    print("before: RSS once the model and AdamW's state are built; step: peak RSS over the steps (reset through "
          "/proc/self/clear_refs) less that")
    print(f"{'impl':13s} {'before GB':>9s} {'step GB':>8s} {'x full':>7s} {'peak RSS GB':>11s} {'step s':>8s}")
    figures = run_interleaved(command(args, "gpt2", batch, "fp32", False, args.steps, args.warmup),
                              impls, args.rounds, "memory")
    full = figures.get("full", (None, {}))[1].get("step_gb")
    for impl, (median, r, peak_gb, _) in figures.items():
        ratio = f"{r['step_gb'] / full:.2f}" if full else "-"
        print(f"{impl:13s} {r['before_gb']:9.2f} {r['step_gb']:8.2f} {ratio:>7s} {peak_gb:11.2f} {median:8.2f}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="tiny,gpt2")
    p.add_argument("--steps", type=int, help="timed steps after the warm-up (default 5; --memory 1)")
    p.add_argument("--warmup", type=int, help="warm-up steps (default 2; --memory 1)")
    p.add_argument("--rounds", type=int, help="fresh processes per implementation, interleaved (default 3; --memory 1)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--impls", default="ours,full,transformers")
    p.add_argument("--batch", type=lambda s: tuple(int(n) for n in s.split("x")),
                   help="BxT for every size, e.g. 8x512 (default: per size and device; --memory 8x512)")
    p.add_argument("--modes", help="fp32, bf16, fp16, comma-separated (default: fp32,bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--compiles", help="no (eager), yes (torch.compile of the model) or both: no,yes (the default "
                                      "on CUDA; no on CPU, where compiling takes minutes)")
    p.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--memory", action="store_true", help="the CPU memory table of GPT-2 small at 8 x 512 instead")
    p.add_argument("--impl", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    args = p.parse_args()
    quick = args.memory and not args.impl
    args.steps = args.steps if args.steps is not None else (1 if quick else 5)
    args.warmup = args.warmup if args.warmup is not None else (1 if quick else 2)
    args.rounds = args.rounds if args.rounds is not None else (1 if quick else 3)
    if args.impl:
        args.batch = args.batch or SIZES[args.sizes][2 if args.device == "cuda" else 1]
        return one(args)
    if args.memory:
        args.device = "cpu"
        return memory_table(args)
    speed_table(args)


if __name__ == "__main__":
    main()
