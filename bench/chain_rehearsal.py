"""A rehearsed chain against the same kernel file run straight: the figure of the README's
"Kaggle without clicks".

    python bench/chain_rehearsal.py [--parts 3] [--budget-hours 0.02] [--out runs/bench_chain]

Runs `chain.py --rehearse --task lm --parts P --budget-hours H` (the embedded corpus and the default
model, as a newcomer would), then part 1's kaggle_kernel.py alone in an empty folder with --max-steps
at the chain's last global step, and prints each part's steps and wall time, what the driver adds
between parts (noticing the end, reading the output, pushing the next), the straight run's time, and
how the two last batons compare, tensor for tensor. Prints figures; asserts nothing.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import ckpt  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", type=int, default=3)
    p.add_argument("--budget-hours", default="0.02")
    p.add_argument("--out", default=os.path.join(ROOT, "runs", "bench_chain"))
    args = p.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    rehearsal = os.path.join(args.out, "rehearsal")
    started = time.time()
    subprocess.run([sys.executable, os.path.join(ROOT, "chain.py"), "--rehearse", "--task", "lm", "--parts",
                    str(args.parts), "--budget-hours", args.budget_hours, "--out", rehearsal], check=True)
    chain_seconds = time.time() - started
    with open(os.path.join(rehearsal, "chain.json"), encoding="utf-8") as f:
        pushes = json.load(f)["pushes"]

    print(f"\n{'part':>4} {'kernel':>22} {'steps':>7} {'global':>7} {'session s':>9} {'driver s':>8}")
    previous_step, previous_end = 0, None
    for push in pushes:
        session = os.path.join(rehearsal, "kaggle", *push["kernel"].split("/"), f"v{push['version']}")
        with open(os.path.join(session, "pushed.json"), encoding="utf-8") as f:
            began = json.load(f)["startedAt"]
        ended = os.path.getmtime(os.path.join(session, "exit_code"))
        # from the previous session's end to this one's start: noticing the end, reading, pushing
        driver = "" if previous_end is None else f"{began - previous_end:8.1f}"
        print(f"{push['part']:>4} {push['kernel']:>22} {push['global_step'] - previous_step:>7} "
              f"{push['global_step']:>7} {ended - began:>9.1f} {driver:>8}")
        previous_step, previous_end = push["global_step"], ended
    last = pushes[-1]
    chained_path = os.path.join(rehearsal, "kaggle", *last["kernel"].split("/"), f"v{last['version']}", "working",
                                "runs", "lm", f"checkpoint_part{last['part']}.safetensors")

    straight = os.path.join(args.out, "straight")
    os.makedirs(os.path.join(straight, "tmp"))
    env = {**os.environ, "TMPDIR": os.path.join(straight, "tmp"), "BATON_INPUT_ROOTS": ""}
    started = time.time()
    subprocess.run([sys.executable, os.path.join(rehearsal, "part1", "kaggle_kernel.py"), "--task", "lm",
                    "--part", "1", "--max-steps", str(last["global_step"])], cwd=straight, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    straight_seconds = time.time() - started
    chained = ckpt.load(chained_path)
    alone = ckpt.load(os.path.join(straight, "runs", "lm", "checkpoint_part1.safetensors"))
    tensors = same = 0
    worst = 0.0
    for section in ("model", "optimizer", "rng"):
        a, b = ckpt.flatten_state(chained.state[section])[0], ckpt.flatten_state(alone.state[section])[0]
        for key in a:
            tensors += 1
            same += int(a[key].dtype == b[key].dtype and a[key].shape == b[key].shape and bool((a[key] == b[key]).all()))
            if a[key].is_floating_point():
                worst = max(worst, (a[key].double() - b[key].double()).abs().max().item())
    print(f"\nchain of {len(pushes)} parts: {chain_seconds:.1f} s in all (driver, stand-in and sessions)")
    print(f"straight: kaggle_kernel.py --max-steps {last['global_step']} in {straight_seconds:.1f} s")
    print(f"last batons: {same} of {tensors} tensors (model, AdamW moments, RNG) bit-identical; "
          f"largest difference {worst:.3g}")


if __name__ == "__main__":
    main()
