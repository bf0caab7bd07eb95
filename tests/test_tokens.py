"""The lm corpus is tokenized once into a token file that later parts map (data/text.py): the file
holds exactly what encoding the whole text gives, a later part reuses it (also when it is found only
beside the checkpoint, as on Kaggle), a changed corpus and a damaged file are noticed, and resuming
stays bit-exact."""

import glob
import json
import os
import shutil
import time

import numpy as np
import pytest
import xxhash

import ckpt
from data import text as text_data
from data import tokenizers
import train_part
from conftest import assert_same_tensors, tiny_lm_args

TINY = tiny_lm_args()


def train(out, data, *extra, part=1):
    return train_part.main(["--task", "lm", "--part", str(part), "--out", str(out), "--data", str(data)]
                           + TINY + list(extra), started=time.time())


def gpt2_folder(path):
    """A small real-format GPT-2 vocabulary: the 256 byte characters and a few merges."""
    vocab = {c: i for i, c in enumerate(tokenizers.bytes_to_unicode().values())}
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("a", "n"), ("o", "r"), ("e", "r")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    path.mkdir()
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return str(path)


@pytest.fixture
def messy_corpus(tmp_path, corpus):
    """A folder of two files: Windows line ends, a byte that is not UTF-8, Bengali, runs of spaces."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    text = open(corpus, "rb").read().replace(b"\n", b"\r\n")
    (folder / "a.txt").write_bytes(text + b"bad \xff byte  two  spaces")
    (folder / "b.txt").write_text("আমি বাংলায় গান গাই।\n\nthe other   their there " * 40, encoding="utf-8")
    return folder


@pytest.mark.parametrize("kind", ["byte", "char", "gpt2"])
def test_the_token_file_holds_what_encoding_the_whole_text_gives(tmp_path, messy_corpus, monkeypatch, kind):
    monkeypatch.setattr(text_data, "READ_BLOCK", 97)  # pieces cut mid-line, mid-character, mid-"\r\n"
    monkeypatch.setattr(text_data, "BPE_CHUNK", 50)
    tokenizer = tokenizers.make_tokenizer(kind, folder=gpt2_folder(tmp_path / "gpt2")) if kind != "char" else None
    files = text_data.corpus_files(str(messy_corpus))
    built = text_data.build_token_file(files, text_data.corpus_identity(files), tokenizer,
                                       str(tmp_path / "tokens" / f"{kind}.tokens"), workers=2)
    whole = text_data.read_corpus(str(messy_corpus))
    expected = (tokenizer or tokenizers.CharTokenizer.from_text(whole)).encode(whole)
    assert built.tokens.dtype == (np.uint8 if kind == "byte" else np.uint16 if kind == "gpt2" else np.uint8)
    assert built.tokens.tolist() == expected
    again = text_data.TokenFile(built.path)  # and from its header alone
    assert again.tokenizer.to_dict() == built.tokenizer.to_dict() and again.tokens.tolist() == expected
    # The fingerprint a run stores is the one an in-memory run had: a hash of the tokens as int64.
    assert again.fingerprint == xxhash.xxh3_64(np.array(expected, dtype=np.int64).tobytes()).hexdigest()


def test_a_later_part_reuses_the_token_file(tmp_path, corpus, monkeypatch, capsys):
    assert train(tmp_path / "run", corpus, "--max-steps", "3") == 0
    built = os.listdir(tmp_path / "run" / "tokens")
    assert len(built) == 1 and built[0].startswith("byte-") and built[0].endswith(".tokens")

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("the corpus was tokenized again")

    monkeypatch.setattr(text_data, "build_token_file", no_tokenizing)
    capsys.readouterr()
    assert train(tmp_path / "run", corpus, "--max-steps", "6", part=2) == 0
    assert "data: tokens from " + str(tmp_path / "run" / "tokens") in capsys.readouterr().out
    # Kaggle: part 2 runs in a fresh /kaggle/working, part 1's output (baton and tokens/) is read-only input.
    attached = tmp_path / "input" / "part1-output"
    shutil.copytree(tmp_path / "run", attached)
    assert train(tmp_path / "fresh", corpus, "--max-steps", "6", "--resume",
                 str(attached / "checkpoint_part1.safetensors"), part=2) == 0
    assert "read-only; not copied" in capsys.readouterr().out
    assert not (tmp_path / "fresh" / "tokens").exists()
    # A dataset or notebook output attached under /kaggle/input is searched by the file's name.
    folders = text_data.input_token_folders(str(tmp_path / "input"))
    assert any(glob.glob(os.path.join(folder, built[0])) for folder in folders)


def test_a_changed_corpus_is_said_and_tokenized_again(tmp_path, corpus, capsys):
    data = tmp_path / "corpus.txt"
    shutil.copy(corpus, data)
    assert train(tmp_path / "run", data, "--max-steps", "3") == 0
    text = data.read_text()
    data.write_text(text[:100] + text[100:].replace("e", "a", 1))  # same size, one letter changed
    capsys.readouterr()
    assert train(tmp_path / "run", data, "--max-steps", "6", part=2) == 0
    out = capsys.readouterr().out
    assert "is not the one the checkpoint trained on (corpus.txt changed" in out
    assert "the training data differs from the checkpoint's" in out
    assert len(os.listdir(tmp_path / "run" / "tokens")) == 2


def test_a_truncated_token_file_is_refused_and_rebuilt_and_resume_stays_exact(tmp_path, corpus, capsys):
    assert train(tmp_path / "straight", corpus, "--max-steps", "10") == 0
    assert train(tmp_path / "legs", corpus, "--max-steps", "4") == 0
    (path,) = glob.glob(str(tmp_path / "legs" / "tokens" / "*.tokens"))
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 7)
    with pytest.raises(text_data.DataError, match="truncated, damaged or not a token file"):
        text_data.TokenFile(path)
    stale = tmp_path / "legs" / "tokens" / f".{os.path.basename(path)}.tmp12345"  # a part killed while tokenizing
    stale.write_bytes(b"\0" * 1000)
    capsys.readouterr()
    assert train(tmp_path / "legs", corpus, "--max-steps", "10", part=2) == 0
    assert "building it again" in capsys.readouterr().out
    assert not stale.exists()
    assert len(text_data.TokenFile(path).tokens) == os.path.getsize(corpus)
    assert_same_tensors(ckpt.load(tmp_path / "straight" / "checkpoint_part1.safetensors"),
                        ckpt.load(tmp_path / "legs" / "checkpoint_part2.safetensors"))


def test_the_data_may_be_a_token_file_alone(tmp_path, corpus):
    """Tokenized once (e.g. attached as a Kaggle dataset), a corpus is no longer needed at all."""
    assert train(tmp_path / "with_corpus", corpus, "--max-steps", "5") == 0
    (path,) = glob.glob(str(tmp_path / "with_corpus" / "tokens" / "*.tokens"))
    assert train(tmp_path / "with_tokens", path, "--max-steps", "5") == 0
    a = ckpt.load(tmp_path / "with_corpus" / "checkpoint_part1.safetensors")
    b = ckpt.load(tmp_path / "with_tokens" / "checkpoint_part1.safetensors")
    assert a.meta["data_fingerprint"] == b.meta["data_fingerprint"]
    assert_same_tensors(a, b)
    with open(path, "r+b") as f:
        f.truncate(100)
    assert train(tmp_path / "bad", path, "--max-steps", "5") == 2  # nothing to rebuild it from: one sentence
