"""Budget efficiency: how much of a budgeted part's wall time goes to training steps, and how
close to the deadline its hand-off lands, for budgets of 1 to 10 minutes on the default lm task.

    python bench/budget.py [--minutes 1,2,5,10] [--task lm]

Each budget is one real `train_part.py` process; the figures are the part's own account of its
time (start-up, steps, evaluation, saving) and the wall time measured from outside. Prints
figures; asserts nothing.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", default="1,2,5,10")
    p.add_argument("--task", default="lm")
    args = p.parse_args()
    print(f"task {args.task}, default settings, {os.cpu_count()} CPUs")
    print(f"{'budget':>7s} {'wall':>7s} {'start-up':>9s} {'steps':>7s} {'eval':>6s} {'saving':>7s} "
          f"{'hand-off before deadline':>25s}")
    for minutes in [float(m) for m in args.minutes.split(",")]:
        out = tempfile.mkdtemp(prefix="baton-budget-")
        t0 = time.time()
        run = subprocess.run([sys.executable, os.path.join(ROOT, "train_part.py"), "--task", args.task, "--out", out,
                              "--budget-hours", str(minutes / 60)], capture_output=True, text=True)
        wall = time.time() - t0
        line = next(ln for ln in run.stdout.splitlines() if ln.startswith("time:"))
        share = {k: float(v) for k, v in re.findall(r"(steps|evaluation|saving) [\d.]+ s \(([\d.]+)%[;)]", line)}
        startup = float(re.search(r"first step ([\d.]+) s", line).group(1))
        early = float(re.search(r"written ([\d.]+) s before", line).group(1))
        print(f"{minutes:5.0f} m {wall:6.1f}s {startup:8.1f}s {share['steps']:6.1f}% {share['evaluation']:5.1f}% "
              f"{share['saving']:6.1f}% {early:23.1f} s   (exit {run.returncode}, outside wall {wall / 60 / minutes:.1%} "
              f"of the budget)")


if __name__ == "__main__":
    main()
