"""Bad input a new user brings: one sentence on stderr and exit 2, and nothing on disk destroyed.

One row per case (issue 23's list, the cases done so far): what is given, and what the sentence says.
Below the table, inputs that look bad but are not (a reg CSV without an id column) and one that
trains with a warning (an extreme value in a numeric column)."""

import csv
import os
import time

import pytest

import ckpt
import infer
import train_part
from conftest import tiny_lm_args
from test_tokens import gpt2_folder
from data import held_out, manifest
from data import table as table_data

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


def manifest_without_audio(folder):
    """A Bengali.AI-layout manifest of 3 embedded transcripts whose audio was never copied."""
    with open(os.path.join(manifest.EMBEDDED, "train.csv"), newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    path = folder / "speech" / "train.csv"
    path.parent.mkdir()
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([rows[0]] + rows[1:4])
    return path


def diamonds(folder, rows=80, drop=(), change=None):
    """The first `rows` rows of the embedded reg sample, without the columns in `drop`; `change(header,
    rows)` may edit them first."""
    with open(table_data.DEFAULT_TRAIN, newline="", encoding="utf-8") as f:
        header, *body = list(csv.reader(f))[:rows + 1]
    if change:
        change(header, body)
    keep = [j for j, name in enumerate(header) if name not in drop]
    path = folder / "diamonds.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([[r[j] for j in keep] for r in [header] + body])
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
    ("reg id column named but absent", lambda d: ["train", "--task", "reg", "--out", str(d / "run"), "--data",
                                                  str(diamonds(d, drop=["sample_id"])), "--set", "id_column=pid", *REG],
     "has no column 'pid', which is needed"),
    ("lm pretrained folder with a tokenizer but no model", lambda d: [
        "train", "--task", "lm", "--out", str(d / "run"), *tiny_lm_args(tokenizer="gpt2", pretrained=gpt2_folder(d / "bpe"))],
     "cannot be loaded as a GPT-2 model"),
    ("asr manifest whose audio is all missing", lambda d: ["train", "--task", "asr", "--out", str(d / "run"), "--data",
                                                           str(manifest_without_audio(d))],
     "all 3 audio files that"),
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


def reg_train(out, data, *extra):
    return train_part.main(["--task", "reg", "--out", str(out), "--data", str(data), "--max-steps", "1", "--resume",
                            "none", *REG, *extra], started=time.time())


@pytest.mark.parametrize("how", ["no id column", "id_column="])
def test_reg_trains_and_predicts_without_an_id_column(tmp_path, capsys, how):
    # Training never reads ids; without them rows are named by their numbers, in predictions.csv too.
    data = diamonds(tmp_path, drop=["sample_id"] if how == "no id column" else [])
    assert reg_train(tmp_path / "run", data, *(["--set", "id_column="] if how == "id_column=" else [])) == 0
    out = capsys.readouterr().out
    assert ("has no 'sample_id' column" in out) == (how == "no id column")
    predictions = tmp_path / "p.csv"
    assert infer.main(["--task", "reg", "--ckpt", str(tmp_path / "run"), "--data", str(data),
                       "--out", str(predictions)]) == 0
    with open(predictions, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["row", "price"] and [r[0] for r in rows[1:]] == [str(n) for n in range(1, 81)]
    assert "Traceback" not in capsys.readouterr().err


def test_an_extreme_numeric_value_is_named_in_a_warning_and_clipped(tmp_path, capsys):
    def one_wild_x(header, rows):  # in a training row (not held out for validation), so it counts
        row = next(n for n, r in enumerate(rows, start=1) if n > 10 and not held_out([r[0]], 0.2)[0])
        rows[row - 1][header.index("x")] = "1e30"
        one_wild_x.row, one_wild_x.id = row, rows[row - 1][0]

    data = diamonds(tmp_path, change=one_wild_x)
    assert reg_train(tmp_path / "run", data, "--set", "numeric_columns=carat,x") == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "numeric column 'x' has an extreme value 1e+30" in warnings[0], warnings
    assert f"in row {one_wild_x.row} (sample_id {one_wild_x.id})" in warnings[0] and "clipped" in warnings[0]
    clip = ckpt.load(tmp_path / "run" / "checkpoint_part1.safetensors").meta["task_meta"]["standardizer"]["clip"]
    assert clip[0] is None and clip[1][1] < 20  # carat untouched; x clipped to the range of the other stones
