"""wav2vec2-CTC training-step speed and peak memory: Baton's model against transformers'.

    python bench/asr_step.py                       # tiny, base, large at batch 1 x 10 s of audio
    python bench/asr_step.py --sizes base --batch 8 --seconds 2,4,6,8,10,4,6,8   # a padded batch
    python bench/asr_step.py --device cuda         # fp32, fp16 and fp16 + gradient checkpointing
    python bench/asr_step.py --paired --steps 10   # both in one process, steps alternating: ratios
    python bench/asr_step.py --sizes base --seconds 4 --threads 1 --paired --steps 12   # checkpointing on the CPU

On the CPU the modes are fp32 and fp32+ckpt (gradient checkpointing: ours' `gradient_checkpointing`,
transformers' `gradient_checkpointing_enable()`); --modes picks some. --threads 1 is the steady
setting on this shared 2-core machine: with the default 2 threads a busy neighbour stalls the
OpenMP team, and the same step took 0.9 s to 11 s.

One training step = forward, fp32 CTC loss, backward, AdamW update, with the feature encoder
frozen as in fine-tuning and LayerDrop off. Each (size, mode, implementation) runs in fresh
processes, so its peak memory is its own: peak RSS on CPU, torch.cuda.max_memory_allocated on a
GPU. Prints figures; asserts nothing.
"""

import argparse
import dataclasses
import json
import os
import resource
import statistics
import sys
import time
import warnings

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from model.wav2vec2 import Wav2Vec2Config, Wav2Vec2ForCTC  # noqa: E402
from interleave import run_interleaved  # noqa: E402  (bench/, the script's own folder)

VOCAB = 64  # about the size of a Bengali character vocabulary


def build(size, impl, checkpointing):
    # LayerDrop off: otherwise each step skips a random number of layers, differently in the two
    # implementations (their RNG streams differ), and that count dominates the comparison.
    cfg = dataclasses.replace(Wav2Vec2Config.preset(size, vocab_size=VOCAB), layerdrop=0.0)
    if impl == "ours":
        model = Wav2Vec2ForCTC(cfg)
        model.gradient_checkpointing = checkpointing
        model.freeze_feature_encoder()
        return model, lambda x, mask: model(x, mask)
    import transformers
    hf_cfg = transformers.Wav2Vec2Config(**cfg.to_hf())
    model = transformers.Wav2Vec2ForCTC(hf_cfg)
    if checkpointing:  # every layer, non-reentrant, RNG preserved (transformers 5.x defaults)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # 5.x: an alias of activation_checkpointing_enable
            model.gradient_checkpointing_enable()
    model.freeze_feature_encoder()

    def forward(x, mask):
        logits = model(x, attention_mask=mask.long()).logits
        return logits, model._get_feat_extract_output_lengths(mask.sum(-1))
    return model, forward


def make_step(args, impl, device):
    """One implementation's model, a fixed batch and its training step: () -> None."""
    torch.manual_seed(0)
    model, forward = build(args.sizes, impl, args.mode.endswith("ckpt"))
    model.to(device).train()
    seconds = [float(s) for s in args.seconds.split(",")]
    samples = [int(16000 * s) for s in (seconds * args.batch)[: args.batch]]
    x = torch.zeros(args.batch, max(samples), device=device)
    mask = torch.zeros(args.batch, max(samples), dtype=torch.bool, device=device)
    for i, n in enumerate(samples):
        x[i, :n] = torch.randn(n, device=device)
        mask[i, :n] = True
    labels = torch.randint(1, VOCAB, (args.batch, 40), device=device)
    label_lengths = torch.full((args.batch,), 40, device=device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5,
                            fused=device.type == "cuda")
    fp16 = args.mode.startswith("fp16")
    scaler = torch.amp.GradScaler(device.type, enabled=fp16)

    def step():
        with torch.autocast(device.type, dtype=torch.float16, enabled=fp16):
            logits, frames = forward(x, mask)
        log_probs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)
        loss = F.ctc_loss(log_probs, labels, frames, label_lengths, zero_infinity=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return step, model, sum(samples) / 16000


def one(args):
    """Measure one implementation in this process (its own peak memory); print a JSON line."""
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    step, model, audio_seconds = make_step(args, args.impl, device)
    step()  # warm-up: allocator, kernels, optimizer state
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    dt = (time.perf_counter() - t0) / args.steps
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"step_s": dt, "audio_s_per_s": audio_seconds / dt, "peak_gb": peak / 2**30,
                      "params_m": params / 1e6}))


def paired(args):
    """Both implementations in one process, their steps alternating (the order flipped every
    pair): each pair runs under the same machine conditions, so the median of the per-pair ratios
    is the steadiest comparison this noisy machine gives. No memory figures (one process)."""
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = {impl: make_step(args, impl, device)[0] for impl in ("ours", "transformers")}
    for step in steps.values():
        step()  # warm-up
    times = {impl: [] for impl in steps}
    for i in range(args.steps):
        for impl in (("ours", "transformers") if i % 2 == 0 else ("transformers", "ours")):
            t0 = time.perf_counter()
            steps[impl]()
            times[impl].append(time.perf_counter() - t0)
    ratios = [hf / ours for ours, hf in zip(times["ours"], times["transformers"])]
    for impl, t in times.items():
        print(f"{args.sizes:6s} {args.mode:10s} {impl:13s} median step {statistics.median(t):.3f} s  "
              + " ".join(f"{x:.3f}" for x in t))
    print(f"{'':6s} {'':10s} speed ratio ours / transformers, median of {len(ratios)} paired steps: "
          f"{statistics.median(ratios):.2f} (range {min(ratios):.2f} to {max(ratios):.2f})")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="tiny,base,large")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seconds", default="10", help="clip lengths, cycled over the batch")
    p.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    p.add_argument("--rounds", type=int, default=3, help="fresh processes per implementation, interleaved")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--impls", default="ours,transformers")
    p.add_argument("--modes", help="default: fp32,fp16,fp16+ckpt on cuda, fp32,fp32+ckpt on the CPU")
    p.add_argument("--threads", type=int, default=0, help="torch threads per process (0: torch's default)")
    p.add_argument("--paired", action="store_true",
                   help="both implementations in one process, steps alternating; ratios only")
    p.add_argument("--impl", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.impl:
        return one(args)
    modes = (args.modes or ("fp32,fp16,fp16+ckpt" if args.device == "cuda" else "fp32,fp32+ckpt")).split(",")
    if args.paired:
        for args.sizes in args.sizes.split(","):
            for args.mode in modes:
                paired(args)
        return
    impls = args.impls.split(",")
    print(f"device {args.device}; torch {torch.__version__}; threads {args.threads or torch.get_num_threads()}; "
          f"batch {args.batch} x {args.seconds} s; "
          f"mean of {args.steps} steps after one warm-up step; median of {args.rounds} rounds, "
          f"implementations interleaved (the order reversed every other round)")
    print(f"{'size':6s} {'mode':10s} {'impl':13s} {'params':>8s} {'step s':>8s} {'audio s/s':>10s} {'peak GB':>8s}"
          f"  steps of each round")
    for size in args.sizes.split(","):
        for mode in modes:
            figures = run_interleaved(
                lambda impl: [sys.executable, __file__, "--sizes", size, "--batch", str(args.batch),
                              "--seconds", args.seconds, "--steps", str(args.steps), "--device", args.device,
                              "--threads", str(args.threads), "--impl", impl, "--mode", mode],
                impls, args.rounds, f"{size:6s} {mode:10s}")
            for impl, (median, r, peak_gb, steps) in figures.items():
                print(f"{size:6s} {mode:10s} {impl:13s} {r['params_m']:7.1f}M {median:8.3f} "
                      f"{r['audio_s_per_s'] * r['step_s'] / median:10.1f} {peak_gb:8.2f}  "
                      + " ".join(f"{s:.3f}" for s in steps))
            if "ours" in figures and "transformers" in figures:
                print(f"{'':6s} {'':10s} speed ratio ours / transformers (medians): "
                      f"{figures['transformers'][0] / figures['ours'][0]:.2f}")

if __name__ == "__main__":
    main()
