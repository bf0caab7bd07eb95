"""What noticing divergence costs: the same lm training loop with and without it.

    python bench/divergence_cost.py [--steps 400] [--rounds 4] [--model default|small]

Each round trains `--steps` optimizer steps of the lm task twice on the embedded corpus, in
alternating order: once as shipped (divergence.Watch.observe at every step, the checks at every
log, evaluation and save), once with a Watch that only sums the loss on the device, which is all
the loop did before (and a check that only reads that sum). It prints the mean step time of both
and their difference as a share of a step. Because two CPU runs differ by more than the cost
being measured, it also times the added work alone: Watch.observe per step, a check (every log),
and the scan of every weight and AdamW moment (at evaluations and saves). Prints figures;
asserts nothing.
"""

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import torch  # noqa: E402

import train_part  # noqa: E402
from training import divergence, lm  # noqa: E402


class SumOnly(divergence.Watch):
    """The loop without detection: the training loss summed on the device for the log, nothing more."""

    def observe(self, loss_sum, units, grad_norm):
        self.sums[0] += loss_sum.detach().double()
        self.sums[1] += units
        self.steps += 1


def check_sum_only(part, scan_state):
    return part.watch.totals(lambda sums: sums.tolist()), None


def train_once(steps, model_args, detect):
    """Seconds per optimizer step (the budget's own count of time in steps) of one fresh part."""
    seen = {}
    real_finish, real_watch, real_check = train_part.finish, divergence.Watch, train_part.check

    def finish(part, reason):
        seen["seconds"], seen["steps"] = part.budget.spent["steps"], part.position.global_step
        real_finish(part, reason)
    train_part.finish = finish
    if not detect:
        divergence.Watch, train_part.check = SumOnly, check_sum_only
    try:
        with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            code = train_part.main(["--task", "lm", "--out", out, "--resume", "none", "--max-steps", str(steps),
                                    *model_args], started=time.time())
    finally:
        train_part.finish, divergence.Watch, train_part.check = real_finish, real_watch, real_check
    assert code == 0
    return seen["seconds"] / seen["steps"]


def time_alone(model_args):
    """Microseconds of Watch.observe per step, and milliseconds of one check with the state scan."""
    watch = divergence.Watch(torch.device("cpu"), fp16=False)
    loss, norm = torch.tensor(2.5), torch.tensor(0.7)
    n = 20_000
    t0 = time.perf_counter()
    for _ in range(n):
        watch.observe(loss, 4096, norm)
    observe_us = (time.perf_counter() - t0) / n * 1e6
    # the scan: the lm model and AdamW moments as training holds them
    from training.config import apply_settings
    cfg = apply_settings(lm.LMConfig(), [a for a in model_args if a != "--set"])
    model, _ = lm.build(cfg, torch.device("cpu"), 0, 1, None)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.zeros(1, 8, dtype=torch.long), torch.zeros(1, 8, dtype=torch.long))[1].backward()
    optimizer.step()
    t0 = time.perf_counter()
    for _ in range(200):
        divergence.symptom(watch.totals(lambda s: s.tolist()), [2.0] * 10, None, 3.0)
    check_ms = (time.perf_counter() - t0) / 200 * 1e3
    t0 = time.perf_counter()
    for _ in range(20):
        divergence.state_symptom(model, optimizer)
    scan_ms = (time.perf_counter() - t0) / 20 * 1e3
    return observe_us, check_ms, scan_ms, sum(p.numel() for p in model.parameters())


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--model", choices=("default", "small"), default="default",
                   help="default: the README's 0.83M GPT; small: 6 layers x 384 (10.7M)")
    args = p.parse_args()
    model_args = [] if args.model == "default" else \
        ["--set", "n_layer=6", "--set", "n_head=6", "--set", "n_embd=384", "--set", "block_size=256"]
    print(f"lm, {args.model} model, {args.steps} steps per run, {args.rounds} rounds (on/off alternating), "
          f"{torch.get_num_threads()} threads")
    on, off = [], []
    for r in range(args.rounds):
        order = (True, False) if r % 2 == 0 else (False, True)
        for detect in order:
            (on if detect else off).append(train_once(args.steps, model_args, detect))
        print(f"  round {r + 1}: with detection {on[-1] * 1e3:.2f} ms/step, without {off[-1] * 1e3:.2f} ms/step")
    with_ms, without_ms = statistics.median(on) * 1e3, statistics.median(off) * 1e3
    spread = (max(off) - min(off)) / statistics.median(off)
    print(f"median step: with detection {with_ms:.2f} ms, without {without_ms:.2f} ms: "
          f"{(with_ms - without_ms) / without_ms:+.2%} (runs without it spread by {spread:.1%})")
    observe_us, check_ms, scan_ms, params = time_alone(model_args)
    # per step: observe, a check at every 10th (the log), the scan at every 250th (the evaluation)
    per_step = observe_us / 1e3 + check_ms / 10 + scan_ms / 250
    print(f"alone: Watch.observe {observe_us:.1f} us per step; a check {check_ms * 1e3:.0f} us (every log); the scan "
          f"of {params / 1e6:.2f}M weights + AdamW moments {scan_ms:.2f} ms (every evaluation and save); "
          f"together {per_step / without_ms:.3%} of a step")

if __name__ == "__main__":
    main()
