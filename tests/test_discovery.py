"""training/discovery.py: which checkpoint a part continues from (the newest by global step that
verifies, in the run folder or under the input roots, whatever the file times), what it says of
every file it found, a file named with --resume, and the part rule (part N continues from part N-1;
--part auto).

The in-process runs are test_workflow.py's and test_train.py's tiny lm parts (`train`: dropout off
and on)."""

import os
import shutil

import pytest
import torch

import ckpt
import test_train
import test_workflow
from test_ckpt import write
from test_train import final_state
from training import discovery


def test_discovery_picks_highest_global_step_not_newest_file_and_skips_corrupt(tmp_path):
    out, inputs = tmp_path / "out", tmp_path / "input"
    (inputs / "ds1" / "nested").mkdir(parents=True)
    out.mkdir()
    write(out / "ckpt_e0_s10_g10.safetensors", global_step=10)
    write(inputs / "ds1" / "nested" / "checkpoint_part2.safetensors", global_step=30, part=2)
    write(inputs / "ds1" / "ckpt_e0_s20_g20.safetensors", global_step=20)
    write(inputs / "other_task.safetensors", global_step=99, task="asr")
    write(inputs / "best_model.safetensors", global_step=98, kind="weights")
    newest = inputs / "ds1" / "ckpt_e1_s5_g40.safetensors"
    write(newest, global_step=40)
    newest.write_bytes(newest.read_bytes()[:-10])  # a broken upload of the newest one
    for i, p in enumerate(sorted(tmp_path.rglob("*.safetensors"))):  # file times say nothing
        os.utime(p, (1000 + i, 1000 + i))
    found = discovery.scan([str(out), str(inputs)])
    assert len(found) == 6
    saved, skipped = discovery.newest_valid(found, task="lm")
    assert saved.meta["global_step"] == 30
    # the safetensors library sees the truncation in the header's byte ranges, so the scan marks it
    broken = [f for f in found if f.problem]
    assert [os.path.basename(f.path) for f in broken] == ["ckpt_e1_s5_g40.safetensors"] and skipped == []
    assert "truncated" in broken[0].problem


@pytest.fixture
def inputs(tmp_path, monkeypatch):
    root = tmp_path / "kaggle_input"
    root.mkdir()
    monkeypatch.setenv("BATON_INPUT_ROOTS", str(root))
    return root


def test_part_three_with_only_part_one_is_refused_and_auto_picks_two(tmp_path, corpus, inputs, capsys):
    assert test_workflow.train(tmp_path / "s1", corpus, "--max-steps", "2") == 0
    shutil.copytree(tmp_path / "s1", inputs / "session1-output")
    capsys.readouterr()
    assert test_workflow.train(tmp_path / "s3", corpus, "--max-steps", "4", part=3) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: part 3 continues from part 2") and "\n" not in err
    assert "part 1 at global step 2" in err and "session1-output" in err
    assert "checkpoint_part2.safetensors" in err and "--part auto" in err and "--resume none" in err
    assert test_workflow.train(tmp_path / "s3", corpus, "--max-steps", "4", part="auto") == 0
    out = capsys.readouterr().out
    assert "--part auto: this is part 2" in out
    assert ckpt.load(tmp_path / "s3" / "checkpoint_part2.safetensors").meta["global_step"] == 4
    assert test_workflow.train(tmp_path / "fresh", corpus, "--max-steps", "1", "--resume", "none",
                               part=3) == 0  # explicit restart


def test_newest_by_global_step_in_nested_folders_whatever_the_file_times(tmp_path, corpus, inputs, capsys):
    out = tmp_path / "run"
    assert test_workflow.train(out, corpus, "--max-steps", "9", "--set", "save_every_steps=3",
                               "--set", "keep_last=5") == 0
    places = {3: "a/deep/er", 6: "b", 9: "c/x/y/z"}
    for step, folder in places.items():
        (inputs / folder).mkdir(parents=True)
        name = ckpt.rolling_name(0, step, step)
        shutil.copy(out / name, inputs / folder / name)
        os.utime(inputs / folder / name, (2_000_000_000 - step, 2_000_000_000 - step))  # older steps look newer
    legacy = inputs / "b" / "old_checkpoint.pt"
    torch.save({"model_state_dict": {"w": torch.zeros(1)}}, legacy)
    capsys.readouterr()
    assert test_workflow.train(tmp_path / "session2", corpus, "--max-steps", "10", part=2) == 0
    report = capsys.readouterr().out
    for step, folder in places.items():
        assert str(inputs / folder / ckpt.rolling_name(0, step, step)) in report
    assert str(legacy) in report and "legacy .pt/.pth" in report
    chosen = report.split("USING")[1].splitlines()[1].strip()
    assert chosen == str(inputs / "c/x/y/z" / ckpt.rolling_name(0, 9, 9))
    assert f"resumed from {chosen}" in report


def test_next_session_finds_the_baton_under_an_input_root(tmp_path, corpus, monkeypatch, capsys):
    # Kaggle: part 1's output is attached read-only under /kaggle/input/<dataset>/..., the new
    # session's --out is empty.
    assert test_train.train(tmp_path / "session1", corpus, "--max-steps", "3") == 0
    dataset = tmp_path / "input" / "my-baton" / "runs"
    dataset.mkdir(parents=True)
    os.replace(tmp_path / "session1" / ckpt.handoff_name(1), dataset / ckpt.handoff_name(1))
    monkeypatch.setenv("BATON_INPUT_ROOTS", str(tmp_path / "input"))
    capsys.readouterr()
    assert test_train.train(tmp_path / "session2", corpus, "--max-steps", "5", part=2) == 0
    assert f"resumed from {dataset / ckpt.handoff_name(1)}" in capsys.readouterr().out
    assert final_state(tmp_path / "session2", 2).meta["global_step"] == 5


def test_truncated_newest_checkpoint(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    assert test_train.train(out, corpus, "--max-steps", "4", "--set", "save_every_steps=2", "--set", "keep_last=5") == 0
    for name in (ckpt.rolling_name(0, 4, 4), ckpt.handoff_name(1)):
        path = out / name
        path.write_bytes(path.read_bytes()[:-1000])
    capsys.readouterr()
    # Named explicitly: one sentence, non-zero exit.
    assert test_train.train(out, corpus, "--resume", str(out / ckpt.handoff_name(1)), part=2) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "truncated" in err and "\n" not in err
    # Found automatically: both broken files are named and skipped, the valid one at step 2 is used.
    assert test_train.train(out, corpus, "--max-steps", "6", part=2) == 0
    printed = capsys.readouterr().out
    assert printed.count("broken, skipped") == 2 and "truncated" in printed
    assert "resumed from" in printed and ckpt.rolling_name(0, 2, 2) in printed
    using = printed.split("USING")[1].splitlines()[1].strip()
    assert using.endswith(ckpt.rolling_name(0, 2, 2))
    assert final_state(out, 2).meta["global_step"] == 6


def test_wrong_task_checkpoint_is_refused(tmp_path, corpus, capsys):
    path = tmp_path / "asr.safetensors"
    ckpt.write_file(path, {"model": {"w": torch.zeros(2)}}, {"task": "asr", "kind": "train", "global_step": 3})
    assert test_train.train(tmp_path / "run", corpus, "--resume", str(path)) == 2
    err = capsys.readouterr().err
    assert "task 'asr'" in err and "--task asr" in err
