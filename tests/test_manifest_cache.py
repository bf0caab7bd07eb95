"""The asr manifest cache (data/audio.py, `reuse_or_check_manifest`): part 1 keeps its check of the manifest,
later parts reuse it (from their own folder or from beside the checkpoint they resume) and train
bit-identically; a changed manifest or settings, or a damaged file, means checking again."""

import csv
import os
import shutil

import numpy as np
import pytest
import torch

import ckpt
from data import audio
from training import asr, reuse
from training.config import apply_settings
from conftest import assert_same_tensors
import test_asr
from test_asr import TINY, train, write_manifest
from training.record import unpack

clips = test_asr.clips  # the fixture: 24 training and 6 validation clips in the Bengali.AI layout


@pytest.fixture
def cached(monkeypatch):
    """The cache is for large manifests only (a small one is decoded into memory anyway); make the
    test manifests count as large, and count the costly checks."""
    monkeypatch.setattr(audio, "IN_MEMORY_CLIPS", 0)
    calls = []
    real = audio.check_manifest

    def counted(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(audio, "check_manifest", counted)
    return calls


def config(data, *settings):
    return apply_settings(asr.ASRConfig(), [f"data={data}", *TINY[1::2], *settings])


def summary(check, cfg):
    """Everything training sees of the data."""
    data = asr.ASRTask(check, cfg, torch.device("cpu"))
    return {"train": [tuple(vars(u).values()) for u in data.train.items], "lengths": list(data.train.lengths),
            "report": data.train.report, "val": [tuple(vars(u).values()) for u in data.val.items],
            "val_lengths": data.val.lengths, "vocab": data.vocab.to_dict(), "fingerprint": data.fingerprint,
            "batches": [data.sampler.batches(epoch) for epoch in range(3)], "references": data.references}


def test_later_parts_reuse_the_check_in_their_folder_or_beside_the_checkpoint_and_stay_bit_identical(
        tmp_path, clips, cached, monkeypatch, capsys):
    inputs = tmp_path / "kaggle_input"
    monkeypatch.setenv("BATON_INPUT_ROOTS", str(inputs))
    assert train(tmp_path / "whole", clips, "--max-steps", "8") == 0
    assert len(cached) == 1 and (tmp_path / "whole" / audio.CACHE_NAME).is_file()
    # Part 1 in one session; part 2 in a fresh folder with part 1's output attached read-only (Kaggle).
    assert train(tmp_path / "s1", clips, "--max-steps", "3") == 0
    shutil.copytree(tmp_path / "s1", inputs / "session1")
    capsys.readouterr()
    assert train(tmp_path / "s2", clips, "--max-steps", "6", part=2) == 0
    assert "the manifest check of an earlier part is reused" in capsys.readouterr().out
    assert (tmp_path / "s2" / audio.CACHE_NAME).read_bytes() == (inputs / "session1" / audio.CACHE_NAME).read_bytes()
    assert train(tmp_path / "s2", clips, "--max-steps", "8", part=3) == 0  # finds it in its own folder
    assert len(cached) == 2  # the whole run's part 1 and s1's: neither later part checked the manifest
    a = ckpt.load(tmp_path / "whole" / "checkpoint_part1.safetensors")
    b = ckpt.load(tmp_path / "s2" / "checkpoint_part3.safetensors")
    assert_same_tensors(a, b)
    assert unpack(a.state["history"])["train_loss"] == unpack(b.state["history"])["train_loss"]


def messy(tmp_path, clips):
    """The clips with a missing file, an unreadable one and an empty sentence, without a split column."""
    data = tmp_path / "data"
    shutil.copytree(clips, data)
    rows = [{**r, "split": ""} for r in csv_rows(clips / "train.csv")]
    (data / "train_mp3s" / "not_audio.mp3").write_bytes(b"this is not an mp3 file at all" * 20)
    rows += [{"id": "missing_clip", "sentence": "আমি", "split": ""}, {"id": "not_audio", "sentence": "তুমি", "split": ""},
             {"id": "blank", "sentence": " । ", "split": ""}]
    write_manifest(data / "train.csv", rows)
    return data


def csv_rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("header_limit", [audio.HEADER_LIMIT, 0])  # lengths from headers, or estimated from sizes
def test_the_cached_check_gives_exactly_what_checking_gives(tmp_path, clips, cached, monkeypatch, header_limit):
    monkeypatch.setattr(audio, "HEADER_LIMIT", header_limit)
    data = messy(tmp_path, clips)
    cfg = config(data, "val_fraction=0.3")
    fresh = audio.reuse_or_check_manifest(cfg)  # no folder: nothing cached
    assert "1 empty sentences" in fresh.report  # (the missing clip is held out, by its id's hash)
    assert not (tmp_path / audio.CACHE_NAME).exists()
    reuse.asr_manifest_check(cfg, run_folder=str(tmp_path))  # checks and writes the cache
    reused = reuse.asr_manifest_check(cfg, fresh.vocab.to_dict(), run_folder=str(tmp_path))
    assert len(cached) == 2
    assert summary(reused, cfg) == summary(fresh, cfg)
    with np.load(tmp_path / audio.CACHE_NAME, allow_pickle=False) as z:  # plain arrays, no pickles
        assert all(z[name].dtype != object for name in z.files)


def test_a_changed_manifest_or_setting_is_noticed_and_checked_again(tmp_path, clips, cached, capsys):
    data = tmp_path / "data"
    shutil.copytree(clips, data)
    cfg, work = config(data), str(tmp_path / "run")
    os.mkdir(work)
    first = reuse.asr_manifest_check(cfg, run_folder=work)
    rows = csv_rows(data / "train.csv")
    write_manifest(data / "train.csv", rows[1:])  # one training row removed
    capsys.readouterr()
    second = reuse.asr_manifest_check(cfg, first.vocab.to_dict(), run_folder=work)
    assert capsys.readouterr().out.strip() == (f"data: the manifest changed since the cache was made "
                                               f"({os.path.realpath(os.path.join(work, audio.CACHE_NAME))}); "
                                               f"it is checked again")
    assert len(cached) == 2 and len(second.train) == len(first.train) - 1
    assert summary(reuse.asr_manifest_check(cfg, first.vocab.to_dict(), run_folder=work), cfg) == summary(second, cfg)
    assert len(cached) == 2  # the new check was cached
    shorter = config(data, "max_seconds=2")
    reuse.asr_manifest_check(shorter, first.vocab.to_dict(), run_folder=work)
    assert "max_seconds changed since the manifest cache was made" in capsys.readouterr().out
    assert len(cached) == 3


@pytest.mark.parametrize("damage", ["truncated", "garbage", "pickled", "inconsistent"])
def test_a_damaged_cache_is_said_in_one_line_and_made_again(tmp_path, clips, cached, capsys, damage):
    cfg, work = config(clips), str(tmp_path)
    path = tmp_path / audio.CACHE_NAME
    good = reuse.asr_manifest_check(cfg, run_folder=work)
    intact = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(intact[: len(intact) // 2])
    elif damage == "garbage":
        path.write_bytes(os.urandom(len(intact)))
    elif damage == "pickled":  # an object array needs unpickling, which the cache never does
        np.savez(path, header=np.array([{"key": 1}], dtype=object))
    else:
        with np.load(path, allow_pickle=False) as z:
            arrays = {name: z[name] for name in z.files}
        arrays["train.id.offsets"] = arrays["train.id.offsets"][::-1].copy()
        with open(path, "wb") as f:
            np.savez(f, **arrays)
    capsys.readouterr()
    again = reuse.asr_manifest_check(cfg, good.vocab.to_dict(), run_folder=work)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "the manifest cache is damaged" in out and "it is checked again" in out
    assert "Traceback" not in out and len(cached) == 2
    assert summary(again, cfg) == summary(good, cfg)
    reuse.asr_manifest_check(cfg, good.vocab.to_dict(), run_folder=work)  # the file was made again and reads
    assert len(cached) == 2
