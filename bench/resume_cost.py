"""Resume cost: time from process start to the first training step when resuming in the middle of
a large epoch, for Baton's O(1) jump against iterating and discarding the skipped batches.

    python bench/resume_cost.py [--copies 50]

The epoch is the embedded Bengali training clips listed `--copies` times (~20,000 clips, 2,488
micro-batches of 8): large enough that reading audio dominates, as on Bengali.AI. Checkpoints at
0%, 25%, 50%, 75% and 99% of that epoch are made from one real checkpoint by moving its position;
`train_part.py` resumes from each and reports its start-up time. The alternative is measured with
the same data path: decode the batches before the position and throw them away. Prints
figures; asserts nothing.
"""

import argparse
import csv
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import ckpt  # noqa: E402
import torch  # noqa: E402
from data import manifest  # noqa: E402
from training import asr  # noqa: E402
from training.config import apply_settings  # noqa: E402


def make_manifest(folder, copies):
    with open(os.path.join(manifest.EMBEDDED, "train.csv"), newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    path = os.path.join(folder, "big.csv")
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "path", "sentence", "split"])
        for r in rows:
            mp3 = os.path.join(manifest.EMBEDDED, "train_mp3s", r["id"] + ".mp3")
            for c in range(copies if r["split"] == "train" else 1):
                w.writerow([f"{r['id']}_{c}", mp3, r["sentence"], r["split"]])
    return path


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--copies", type=int, default=50)
    args = p.parse_args()
    work = tempfile.mkdtemp(prefix="baton-resume-")
    csv_path = make_manifest(work, args.copies)
    out = os.path.join(work, "run")
    common = ["--task", "asr", "--data", csv_path, "--set", "eval_every_steps=0", "--set", "save_every_steps=0"]
    subprocess.run([sys.executable, os.path.join(ROOT, "train_part.py"), *common, "--out", out, "--max-steps", "1"],
                   check=True, capture_output=True)
    base = ckpt.load(os.path.join(out, "checkpoint_part1.safetensors"))
    per_epoch = base.state["sampler"]["batches_per_epoch"]
    print(f"epoch: {per_epoch} micro-batches of 8 clips; torch {torch.__version__}, {os.cpu_count()} CPUs")

    # The alternative's cost: decode and discard the batches before the position, same data path.
    cfg = apply_settings(asr.ASRConfig(), [f"data={csv_path}"])
    _, data = asr.build(cfg, torch.device("cpu"))
    batches = data.sampler.batches(0)

    print(f"{'position':>9s} {'batch':>6s} {'Baton: start to first step':>27s} {'discarding batches first':>25s}")
    for share in (0.0, 0.25, 0.5, 0.75, 0.99):
        position = int(share * per_epoch)
        state, meta = dict(base.state), dict(base.meta)
        state["progress"] = {"epoch": 0, "batch_in_epoch": position, "step_in_epoch": position, "global_step": position}
        meta.update(global_step=position, step_in_epoch=position)
        path = os.path.join(work, f"at_{position}.safetensors")
        ckpt.write_file(path, state, meta)
        run = subprocess.run([sys.executable, os.path.join(ROOT, "train_part.py"), *common, "--resume", path,
                              "--out", os.path.join(work, f"r{position}"), "--max-steps", str(position + 1)],
                             capture_output=True, text=True)
        startup = float(re.search(r"start-up until the first step ([\d.]+) s", run.stdout).group(1))
        t0 = time.perf_counter()
        stream = data.batches(batches[:position], 0)
        for _ in stream:  # what a loader without a position would have to do
            pass
        skipping = time.perf_counter() - t0
        print(f"{share:9.0%} {position:6d} {startup:25.1f} s {startup + skipping:23.1f} s")


if __name__ == "__main__":
    main()
