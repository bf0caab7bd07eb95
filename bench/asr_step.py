"""wav2vec2-CTC training-step speed and peak memory: Baton's model against transformers'.

    python bench/asr_step.py                       # tiny, base, large at batch 1 x 10 s of audio
    python bench/asr_step.py --sizes base --batch 8 --seconds 2,4,6,8,10,4,6,8   # a padded batch
    python bench/asr_step.py --device cuda         # adds fp16 and fp16 + gradient checkpointing

One training step = forward, fp32 CTC loss, backward, AdamW update, with the feature encoder
frozen as in fine-tuning. Each (size, mode, implementation) runs in a fresh process so its
peak memory is its own: peak RSS on CPU, torch.cuda.max_memory_allocated on a GPU. Prints
figures; asserts nothing.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from model.wav2vec2 import Wav2Vec2Config, Wav2Vec2ForCTC  # noqa: E402

VOCAB = 64  # about the size of a Bengali character vocabulary


def build(size, impl, checkpointing):
    cfg = Wav2Vec2Config.preset(size, vocab_size=VOCAB)
    if impl == "ours":
        model = Wav2Vec2ForCTC(cfg)
        model.gradient_checkpointing = checkpointing
        model.freeze_feature_encoder()
        return model, lambda x, mask: model(x, mask)
    import transformers
    hf_cfg = transformers.Wav2Vec2Config(**cfg.to_hf())
    model = transformers.Wav2Vec2ForCTC(hf_cfg)
    if checkpointing:
        model.gradient_checkpointing_enable()
    model.freeze_feature_encoder()

    def forward(x, mask):
        logits = model(x, attention_mask=mask.long()).logits
        return logits, model._get_feat_extract_output_lengths(mask.sum(-1))
    return model, forward


def one(args):
    """Measure one configuration in this process; print a JSON line."""
    torch.manual_seed(0)
    device = torch.device(args.device)
    model, forward = build(args.sizes, args.impl, args.mode.endswith("ckpt"))
    model.to(device).train()
    seconds = [float(s) for s in args.seconds.split(",")]
    seconds = (seconds * args.batch)[: args.batch]
    samples = [int(16000 * s) for s in seconds]
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
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"step_s": dt, "audio_s_per_s": sum(seconds) / dt, "peak_gb": peak / 2**30, "params_m": params / 1e6}))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="tiny,base,large")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seconds", default="10", help="clip lengths, cycled over the batch")
    p.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--impls", default="ours,transformers")
    p.add_argument("--impl", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.impl:
        return one(args)
    modes = ["fp32", "fp16", "fp16+ckpt"] if args.device == "cuda" else ["fp32"]
    print(f"device {args.device}; torch {torch.__version__}; batch {args.batch} x {args.seconds} s; "
          f"mean of {args.steps} steps after one warm-up step")
    print(f"{'size':6s} {'mode':10s} {'impl':13s} {'params':>8s} {'step s':>8s} {'audio s/s':>10s} {'peak GB':>8s}")
    for size in args.sizes.split(","):
        for mode in modes:
            figures = {}
            for impl in args.impls.split(","):
                cmd = [sys.executable, __file__, "--sizes", size, "--batch", str(args.batch), "--seconds", args.seconds,
                       "--steps", str(args.steps), "--device", args.device, "--impl", impl, "--mode", mode]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode != 0:
                    print(f"{size:6s} {mode:10s} {impl:13s} failed: {out.stderr.strip().splitlines()[-1]}")
                    continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
                figures[impl] = r
                print(f"{size:6s} {mode:10s} {impl:13s} {r['params_m']:7.1f}M {r['step_s']:8.3f} "
                      f"{r['audio_s_per_s']:10.1f} {r['peak_gb']:8.2f}")
            if "ours" in figures and "transformers" in figures:
                ratio = figures["transformers"]["step_s"] / figures["ours"]["step_s"]
                print(f"{'':6s} {'':10s} {'speed ratio ours / transformers: ' + format(ratio, '.2f')}")


if __name__ == "__main__":
    main()
