"""The multi-session workflow: parts capped by epochs, plots across parts, a legacy .pt continued,
and the single-file kernel run alone. (Discovery and the part rule: test_discovery.py; the disk
guard: test_ckpt.py.)"""

import os
import shutil
import subprocess
import sys
import time

import numpy as np
import torch

import ckpt
import train_part
from conftest import tiny_lm_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = tiny_lm_args()  # 12 optimizer steps per epoch on the `corpus` fixture


def train(out, corpus, *extra, part="1"):
    return train_part.main(["--task", "lm", "--part", str(part), "--out", str(out), "--data", corpus] + TINY
                           + list(extra), started=time.time())


def test_part_epochs_caps_each_part(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    assert train(out, corpus, "--set", "part_epochs=1") == 0
    assert "stopped: part_epochs 1 at global step 12" in capsys.readouterr().out
    assert train(out, corpus, part=2) == 0
    assert ckpt.load(out / "checkpoint_part2.safetensors").meta["global_step"] == 24


def count_colour(image, rgb, tolerance=0.08):
    return int((np.abs(image[..., :3] - np.array(rgb) / 255).max(axis=-1) < tolerance).sum())


def test_plots_show_losses_learning_rate_and_parts(tmp_path, corpus):
    import matplotlib.image
    out = tmp_path / "run"
    assert train(out, corpus, "--max-steps", "14") == 0
    assert train(out, corpus, "--max-steps", "30", part=2) == 0
    curve = matplotlib.image.imread(out / "training_curve.png")
    assert curve.shape[:2] == (600, 900)
    assert count_colour(curve, (31, 119, 180)) > 200    # training loss (blue)
    assert count_colour(curve, (214, 39, 40)) > 100     # validation loss (red)
    assert count_colour(curve, (44, 160, 44)) > 200     # learning rate (green)
    assert count_colour(curve, (128, 128, 128)) > 100   # the dashed part boundary (gray)
    by_epoch = matplotlib.image.imread(out / "loss_by_epoch.png")
    assert by_epoch.shape[:2] == (400, 700) and count_colour(by_epoch, (31, 119, 180)) > 50


def test_a_legacy_pt_in_the_seeds_format_continues_training(tmp_path, corpus, capsys):
    assert train(tmp_path / "baton", corpus, "--max-steps", "5") == 0
    state = ckpt.load(tmp_path / "baton" / "checkpoint_part1.safetensors").state
    legacy = tmp_path / "checkpoint_epoch1_step10_global5.pt"
    torch.save({"model_state_dict": {k: v.clone() for k, v in state["model"].items()},
                "optimizer_state_dict": state["optimizer"], "scheduler_state_dict": {"last_epoch": 5},
                "epoch": 1, "step": 10, "global_step": 5, "train_loss": 3.2}, legacy)
    capsys.readouterr()
    assert train(tmp_path / "continued", corpus, "--resume", str(legacy), "--max-steps", "8", part=2) == 0
    printed = capsys.readouterr().out
    assert "at global step 5: carried model weights, optimizer moments" in printed
    assert "scheduler state" in printed and "RNG state" in printed
    continued = ckpt.load(tmp_path / "continued" / "checkpoint_part2.safetensors")
    assert continued.meta["global_step"] == 8 and continued.meta["epoch"] == 0 and continued.meta["step_in_epoch"] == 8


def test_generated_kernel_runs_alone_in_an_empty_folder_and_resumes(tmp_path, corpus):
    subprocess.run([sys.executable, os.path.join(ROOT, "make_kernel.py"), "--out", str(tmp_path / "gen" / "k.py")],
                   check=True, capture_output=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(tmp_path / "gen" / "k.py", empty / "kaggle_kernel.py")
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp"), "BATON_INPUT_ROOTS": ""}
    (tmp_path / "tmp").mkdir()

    def kernel(*args):
        return subprocess.run([sys.executable, "kaggle_kernel.py", *args], cwd=empty, env=env,
                              capture_output=True, text=True, timeout=300)

    # the default data comes from inside the file: no --data
    first = kernel("--task", "lm", "--max-steps", "3", *TINY)
    assert first.returncode == 0, first.stderr
    assert "next: python kaggle_kernel.py --task lm --part 2" in first.stdout
    second = kernel("--task", "lm", "--part", "auto", "--max-steps", "5", *TINY)
    assert second.returncode == 0, second.stderr
    assert "resumed from ./runs/lm/checkpoint_part1.safetensors" in second.stdout
    assert ckpt.load(empty / "runs" / "lm" / "checkpoint_part2.safetensors").meta["global_step"] == 5
    generated = kernel("infer", "--task", "lm", "--ckpt", "runs/lm", "--prompt", "ROMEO", "--max-new-tokens", "10")
    assert generated.returncode == 0 and generated.stdout.startswith("ROMEO")
    assert sorted(os.listdir(empty)) == ["kaggle_kernel.py", "runs"]


def test_kaggle_defaults_and_reminder(tmp_path, corpus, monkeypatch, capsys):
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    args = train_part.parse_args(["--task", "asr"])
    assert args.out == "/kaggle/working/runs/asr" and args.budget_hours == 11.0
    assert train_part.parse_args(["--task", "lm", "--budget-hours", "2"]).budget_hours == 2.0
    assert train(tmp_path / "run", corpus, "--max-steps", "1") == 0
    assert "Kaggle: /kaggle/working disappears with this session" in capsys.readouterr().out
