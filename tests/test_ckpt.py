"""ckpt.py: round trips, the safetensors layout, integrity checks, atomicity, legacy import, the
refusal to unpickle code, the RNG streams, pruning, and the disk guard (`make_room`, in a run of
test_workflow.py's `train`). Which checkpoint a part continues from is test_discovery.py's."""

import collections
import os
import pickle
import random
import shutil

import numpy as np
import pytest
import torch
from safetensors import safe_open

import ckpt
from test_workflow import train


def sample_state():
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.LayerNorm(7))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(3, 5, generator=g)).sum().backward()
    opt.step()
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "extra": {"bf16": torch.randn(4, generator=g).bfloat16(), "f16": torch.randn(2, 3, generator=g).half(),
                  "i64": torch.arange(5), "u8": torch.tensor([1, 2, 255], dtype=torch.uint8),
                  "flag": torch.tensor([True, False]), "scalar": torch.tensor(3.5), "empty": torch.zeros(0, 4)},
        "progress": {"epoch": 2, "global_step": 17, "ratio": 0.25, "name": "x", "none": None, "pair": [1, 2]},
    }


def assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    elif isinstance(a, dict):
        assert set(a) == set(b), (set(a), set(b))
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


def write(path, state=None, **meta):
    meta = {"task": "lm", "kind": "train", "part": 1, "epoch": 0, "step_in_epoch": 0, "global_step": 0, **meta}
    return ckpt.write_file(path, state if state is not None else sample_state(), meta)


def test_round_trip_keeps_every_tensor_dtype_and_value(tmp_path):
    state = sample_state()
    path = tmp_path / "a.safetensors"
    nbytes = write(path, state, global_step=17, config={"lr": 0.001})
    assert nbytes == os.path.getsize(path)
    loaded = ckpt.load(path)
    assert_same(state, loaded.state)
    assert loaded.meta["global_step"] == 17 and loaded.meta["config"] == {"lr": 0.001}
    # optimizer state keys come back as ints, so load_state_dict accepts them
    assert all(isinstance(k, int) for k in loaded.state["optimizer"]["state"])


def test_file_is_plain_safetensors_with_the_contract_header(tmp_path):
    path = tmp_path / "a.safetensors"
    write(path, part=3, epoch=1, step_in_epoch=4, global_step=9)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
        weight = f.get_tensor("model.0.weight")
    assert meta["format"] == "baton/1" and meta["task"] == "lm"
    assert (meta["part"], meta["epoch"], meta["step_in_epoch"], meta["global_step"]) == ("3", "1", "4", "9")
    assert "created_at" in meta and meta["checksum"].startswith("xxh3_64:")
    assert {"model.0.weight", "model.0.bias", "model.1.weight"} <= keys
    assert weight.shape == (7, 5)


def test_tied_weights_are_stored_once_and_load_into_both_names(tmp_path):
    emb = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    model = torch.nn.ModuleDict({"wte": emb, "lm_head": head})
    path = tmp_path / "tied.safetensors"
    ckpt.write_file(path, {"model": model.state_dict()}, {"kind": "test"})
    with safe_open(str(path), framework="pt") as f:
        assert sorted(f.keys()) == ["model.wte.weight"]
    loaded = ckpt.load(path).state["model"]
    assert torch.equal(loaded["lm_head.weight"], emb.weight.detach())
    fresh = torch.nn.ModuleDict({"wte": torch.nn.Embedding(10, 4), "lm_head": torch.nn.Linear(4, 10, bias=False)})
    fresh.load_state_dict(loaded)  # strict: both names are present
    assert torch.equal(fresh["lm_head"].weight, emb.weight)


@pytest.mark.parametrize("damage", ["truncate", "payload_byte", "header_digit", "empty"])
def test_damaged_files_are_one_clear_error(tmp_path, damage):
    path = tmp_path / "a.safetensors"
    write(path, global_step=12345)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) - 100]
    elif damage == "payload_byte":
        data[-20] ^= 0x01
    elif damage == "header_digit":
        at = data.index(b"12345")
        data[at] = ord("9")  # still valid JSON, only the checksum can tell
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.load(path)
    message = str(e.value)
    assert str(path) in message and "\n" not in message
    assert any(w in message for w in ("truncated", "corrupt", "checksum", "bytes long"))


class DiskFullAfter:
    """A file object whose disk fills up after `limit` bytes, like ENOSPC in the middle of a save."""

    def __init__(self, f, limit):
        self.f, self.left = f, limit

    def write(self, data):
        self.left -= len(data)
        if self.left < 0:
            raise OSError(28, "No space left on device")
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "a.safetensors"
    write(path, global_step=1)
    before = path.read_bytes()
    monkeypatch.setattr(ckpt, "open", lambda p, mode="r", **kw: DiskFullAfter(open(p, mode, **kw), 600),
                        raising=False)
    with pytest.raises(ckpt.CheckpointError, match="No space left.*untouched"):
        write(path, global_step=2)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["a.safetensors"]


class Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    Exploit.marker = marker
    for name in ("evil.pt", "evil.pth"):
        path = tmp_path / name
        with open(path, "wb") as f:
            pickle.dump({"model_state_dict": Exploit()}, f)
        with pytest.raises(ckpt.CheckpointError, match="refusing"):
            ckpt.load_any(path)
    assert not marker.exists()
    with open(tmp_path / "evil.pt", "rb") as f:  # control: a plain unpickle does run it
        pickle.load(f)
    assert marker.exists()


def test_legacy_checkpoint_is_imported(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    path = tmp_path / "checkpoint_epoch2_step50.pt"
    torch.save({"model_state_dict": {"module." + k: v for k, v in model.state_dict().items()},
                "optimizer_state_dict": opt.state_dict(), "epoch": 2, "step": 5, "global_step": 50}, path)
    saved = ckpt.load_any(path)
    assert saved.meta["kind"] == "legacy" and saved.meta["global_step"] == 50 and saved.meta["epoch"] == 2
    assert set(saved.state["model"]) == {"weight", "bias"}
    assert "optimizer" in saved.state


def test_prune_keeps_last_rolling_files_and_never_handoffs_or_best(tmp_path):
    for g in (5, 10, 15, 20, 100):
        write(tmp_path / ckpt.rolling_name(0, g, g), global_step=g)
    write(tmp_path / ckpt.handoff_name(1), global_step=3)
    write(tmp_path / ckpt.BEST_NAME, global_step=1, kind="weights")
    removed = ckpt.prune(str(tmp_path), keep_last=2)
    assert sorted(removed) == sorted(ckpt.rolling_name(0, g, g) for g in (5, 10, 15))
    assert sorted(os.listdir(tmp_path)) == sorted(
        [ckpt.rolling_name(0, 20, 20), ckpt.rolling_name(0, 100, 100), ckpt.handoff_name(1), ckpt.BEST_NAME])


def test_pruning_keeps_the_newest_rolling_checkpoint_even_with_keep_last_0(tmp_path):
    for step in (5, 10):
        ckpt.write_file(tmp_path / ckpt.rolling_name(0, step, step), {"x": torch.zeros(1)}, {"kind": "train"})
    assert ckpt.prune(tmp_path, 0) == [ckpt.rolling_name(0, 5, 5)]
    assert os.listdir(tmp_path) == [ckpt.rolling_name(0, 10, 10)]


def test_a_save_that_does_not_fit_keeps_every_checkpoint_and_says_why(tmp_path, corpus, monkeypatch, capsys):
    out = tmp_path / "run"
    assert train(out, corpus, "--max-steps", "4", "--set", "save_every_steps=2") == 0
    before = {name: (out / name).read_bytes() for name in os.listdir(out) if name.endswith(".safetensors")}
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 4096, 4096))
    capsys.readouterr()
    assert train(out, corpus, "--max-steps", "8", "--set", "save_every_steps=2", part=2) == 2
    printed = capsys.readouterr()
    assert "not enough disk space" in printed.err and "every existing checkpoint was kept" in printed.err
    assert "training goes on" in printed.out + printed.err  # the periodic saves at steps 6 and 8 were skipped
    after = {name: (out / name).read_bytes() for name in os.listdir(out) if name.endswith(".safetensors")}
    assert after == before


def test_rng_capture_restores_python_numpy_and_torch_streams():
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.normal()  # leaves a cached gaussian in NumPy's legacy state
    rng = ckpt.capture_rng()
    first = (random.random(), np.random.normal(), torch.rand(3))
    random.random(), np.random.rand(5), torch.rand(7)  # move every stream on
    ckpt.restore_rng(rng)
    second = (random.random(), np.random.normal(), torch.rand(3))
    assert first[0] == second[0] and first[1] == second[1] and torch.equal(first[2], second[2])


def test_rng_survives_a_file_round_trip(tmp_path):
    torch.manual_seed(5)
    path = tmp_path / "rng.safetensors"
    ckpt.write_file(path, {"rng": ckpt.capture_rng()}, {"kind": "test"})
    expected = torch.rand(4)
    torch.manual_seed(99)
    ckpt.restore_rng(ckpt.load(path).state["rng"])
    assert torch.equal(torch.rand(4), expected)
