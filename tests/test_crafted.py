"""Checkpoints edited on purpose: the header changed and the checksum recomputed to match, so only
the safetensors library's validation stands between them and the loader. Each is refused with one
sentence by every door a file comes in through (ckpt.py FILE, train_part.py --resume, infer.py
--ckpt, the automatic discovery), and the legacy import fills in tied weights a file left out."""

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time

import pytest
import torch
import xxhash

import ckpt
import infer
import train_part
from conftest import tiny_lm_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def recompute_checksum(header_bytes, payload):
    """What an editor of the file would do: blank the digest, hash header and payload, write it back."""
    old = re.search(rb"xxh3_64:[0-9a-f]{16}", header_bytes).group()
    blank = header_bytes.replace(old, ckpt.CHECKSUM_PLACEHOLDER.encode(), 1)
    digest = xxhash.xxh3_64(blank + payload).hexdigest()
    return blank.replace(ckpt.CHECKSUM_PLACEHOLDER.encode(), f"{ckpt.HASH_NAME}:{digest}".encode(), 1)


def split(path):
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def write(path, header_bytes, payload, declared=None):
    header_bytes = recompute_checksum(header_bytes, payload)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes) if declared is None else declared))
        f.write(header_bytes)
        f.write(payload)


def edited(header, change):
    """The header with one tensor entry changed: `change(entries sorted by offset)`."""
    entries = sorted((v for k, v in header.items() if k != "__metadata__"), key=lambda v: v["data_offsets"][0])
    change(entries)
    return json.dumps(header).encode()


def deep(header):  # JSON nested 200,000 levels, beside the real entries
    return json.dumps(header).encode()[:-1] + b',"deep":' + b"[" * 200_000 + b"]" * 200_000 + b"}"


def first_float(entries):
    return next(e for e in entries if e["dtype"] == "F32" and e["shape"])


CRAFTS = {
    "nested": lambda h, p: (deep(h), p, None),
    "shape": lambda h, p: (edited(h, lambda es: first_float(es)["shape"].__setitem__(0, first_float(es)["shape"][0] + 1)), p, None),
    "overlap": lambda h, p: (edited(h, lambda es: es[1].__setitem__("data_offsets", list(es[0]["data_offsets"]))), p, None),
    "past_end": lambda h, p: (edited(h, lambda es: es[-1]["data_offsets"].__setitem__(1, es[-1]["data_offsets"][1] + 64)), p, None),
    "dtype": lambda h, p: (edited(h, lambda es: first_float(es).__setitem__("dtype", "Q7")), p, None),
    "header_length": lambda h, p: (json.dumps(h).encode(), p, len(json.dumps(h)) + len(p) + 64),  # past the end
}


@pytest.fixture(scope="module")
def crafted(tmp_path_factory, corpus):
    """A real part-1 baton, and one edited copy of it per CRAFTS entry (named as later rolling files)."""
    folder = tmp_path_factory.mktemp("crafted")
    run = folder / "run"
    assert train_part.main(["--task", "lm", "--out", str(run), "--data", corpus, "--max-steps", "3", *tiny_lm_args()],
                           started=time.time()) == 0
    good = run / "checkpoint_part1.safetensors"
    files = {}
    for i, (name, craft) in enumerate(CRAFTS.items()):
        header, payload = split(good)
        header_bytes, payload, declared = craft(header, payload)
        path = folder / f"{name}.safetensors"
        write(path, header_bytes, payload, declared)
        files[name] = path
    return good, files


def test_the_crafted_files_carry_a_valid_checksum(crafted):
    for name, path in crafted[1].items():  # the digest matches: only the library's validation can refuse them
        data = open(path, "rb").read()
        digest = re.search(rb"xxh3_64:([0-9a-f]{16})", data)
        blank = data.replace(digest.group(), ckpt.CHECKSUM_PLACEHOLDER.encode(), 1)
        assert xxhash.xxh3_64(blank[8:]).hexdigest() == digest.group(1).decode(), name


def one_sentence(text, path):
    text = text.strip()
    return str(path) in text and "\n" not in text and "Traceback" not in text


def test_ckpt_py_refuses_each_with_one_line(crafted):
    good, files = crafted
    done = subprocess.run([sys.executable, os.path.join(ROOT, "ckpt.py"), str(good), *map(str, files.values())],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("OK ") and len(lines) == 1 + len(files)
    for line, path in zip(lines[1:], files.values()):
        assert line.startswith("BAD ") and one_sentence(line, path), line


@pytest.mark.parametrize("name", list(CRAFTS))
def test_resume_and_infer_refuse_each_with_one_sentence(crafted, corpus, tmp_path, capsys, name):
    path = crafted[1][name]
    assert train_part.main(["--task", "lm", "--out", str(tmp_path), "--data", corpus, "--resume", str(path),
                            *tiny_lm_args()], started=time.time()) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and one_sentence(err, path), err
    assert infer.main(["--task", "lm", "--ckpt", str(path), "--prompt", "It"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and one_sentence(err, path), err
    assert not os.listdir(tmp_path)  # nothing was written


def test_discovery_skips_every_crafted_file_and_resumes_from_the_valid_one(crafted, corpus, tmp_path, capsys,
                                                                           monkeypatch):
    good, files = crafted
    monkeypatch.setenv("BATON_INPUT_ROOTS", "")
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(good, out / good.name)
    for i, path in enumerate(files.values()):  # each claims to be newer training than the valid file
        shutil.copy(path, out / ckpt.rolling_name(1, i, 50 + i))
    capsys.readouterr()
    assert train_part.main(["--task", "lm", "--part", "2", "--out", str(out), "--data", corpus, "--max-steps", "5",
                            *tiny_lm_args()], started=time.time()) == 0
    printed = capsys.readouterr().out
    assert printed.count("broken, skipped") == len(files)
    assert f"resumed from {out / good.name}" in printed
    assert ckpt.load(out / "checkpoint_part2.safetensors").meta["global_step"] == 5


def test_a_legacy_gpt_state_without_its_tied_head_is_imported(tmp_path, corpus):
    out = tmp_path / "baton"
    assert train_part.main(["--task", "lm", "--out", str(out), "--data", corpus, "--max-steps", "2", *tiny_lm_args()],
                           started=time.time()) == 0
    weights = {k: v.clone() for k, v in ckpt.load(out / "checkpoint_part1.safetensors").state["model"].items()}
    del weights["lm_head.weight"]  # as Hugging Face and many notebooks save GPT-2: the tied head left out
    legacy = tmp_path / "gpt_without_head.pt"
    torch.save({"model_state_dict": weights, "global_step": 2}, legacy)
    assert train_part.main(["--task", "lm", "--part", "2", "--out", str(tmp_path / "continued"), "--data", corpus,
                            "--resume", str(legacy), "--max-steps", "2", *tiny_lm_args()], started=time.time()) == 0
    model = ckpt.load(tmp_path / "continued" / "checkpoint_part2.safetensors").state["model"]
    assert torch.equal(model["lm_head.weight"], weights["transformer.wte.weight"])
