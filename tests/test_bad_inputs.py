"""Bad input a new user brings: one sentence on stderr and exit 2, and nothing on disk destroyed.

One row per case (issue 23's list, the cases done so far): what is given, and what the sentence says."""

import os
import time

import pytest

import infer
import train_part
from conftest import tiny_lm_args

REG = ["--set", "n_layer=1", "--set", "n_head=2", "--set", "n_embd=16", "--set", "hidden=16", "--set", "block_size=32",
       "--set", "batch_size=16"]


def latin1_csv(folder):
    path = folder / "latin1.csv"
    path.write_bytes("sample_id,catalog_content,price\n1,Caf\xe9 cr\xe8me 500 g,3.5\n".encode("latin-1"))
    return path


def utf16_csv(folder):
    path = folder / "utf16.csv"
    path.write_bytes("sample_id,catalog_content,price\n1,tea,3.5\n".encode("utf-16"))
    return path


def binary_file(folder):
    path = folder / "data.csv"
    path.write_bytes(bytes(range(256)) * 8)
    return path


def tiny_text(folder):
    path = folder / "two.txt"
    path.write_text("hi")
    return path


def file_named_like_a_folder(folder):
    path = folder / "taken"
    path.write_text("a file, not a folder\n")
    return path


CASES = [  # (name, command given the test's folder, the sentence's words)
    ("reg CSV in Latin-1", lambda d: ["train", "--task", "reg", "--out", str(d / "run"), "--data", str(latin1_csv(d)), *REG],
     "is not a UTF-8 CSV file"),
    ("reg CSV in UTF-16", lambda d: ["train", "--task", "reg", "--out", str(d / "run"), "--data", str(utf16_csv(d)), *REG],
     "is not a UTF-8 CSV file"),
    ("reg data a binary file", lambda d: ["train", "--task", "reg", "--out", str(d / "run"), "--data", str(binary_file(d)), *REG],
     "is not a UTF-8 CSV file"),
    ("--out names a file", lambda d: ["train", "--task", "lm", "--out", str(file_named_like_a_folder(d)),
                                      *tiny_lm_args()], "cannot be the run folder"),
    ("--out under a file", lambda d: ["train", "--task", "lm", "--out", str(file_named_like_a_folder(d) / "run"),
                                      *tiny_lm_args()], "cannot be the run folder"),
    ("--out where nothing may be made", lambda d: ["train", "--task", "lm", "--out", "/proc/baton/run",
                                                   *tiny_lm_args()], "cannot be the run folder"),
    ("lm text of 2 bytes", lambda d: ["train", "--task", "lm", "--out", str(d / "run"), "--data", str(tiny_text(d))],
     "the text has 2 tokens, too few for a training and a validation part"),
    ("reg --export", lambda d: ["infer", "--task", "reg", "--ckpt", str(d / "reg"), "--export", str(d / "hf")],
     "a reg model has no Hugging Face counterpart to export"),
]


@pytest.mark.parametrize("name, command, said", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_sentence(tmp_path, capsys, name, command, said):
    argv = command(tmp_path)
    before = {p: os.path.getsize(p) for p in map(str, tmp_path.rglob("*")) if os.path.isfile(p)}
    if argv[0] == "train":
        code = train_part.main(["--max-steps", "1", "--resume", "none", *argv[1:]], started=time.time())
    else:
        code = infer.main(argv[1:])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and said in err[0], err
    assert all(os.path.getsize(p) == size for p, size in before.items())  # what was there is untouched
    assert not any(p.name.endswith(".safetensors") for p in tmp_path.rglob("*"))
