"""The reg task (training/reg.py, data/table.py, model/regression.py): SMAPE, the table reader's bad-row handling, the regressor, and train/infer end to end."""

import csv
import math
import time

import numpy as np
import pytest
import torch

import ckpt
from data import DataError
from data import table as table_data
import infer
from model.regression import Regressor, RegressorConfig
import train_part
from conftest import assert_same_tensors
from training.record import unpack

TINY = ["--set", "n_layer=1", "--set", "n_head=2", "--set", "n_embd=32", "--set", "hidden=32",
        "--set", "block_size=48", "--set", "batch_size=16", "--set", "dropout=0.2", "--set", "eval_every_steps=3",
        "--set", "warmup_steps=2", "--set", "log_every_steps=1", "--set", "save_every_steps=0"]
BOTH = ["--set", "numeric_columns=carat,depth,table,x,y,z"]


def test_smape_on_hand_computed_cases():
    assert table_data.smape([100], [100]) == 0.0                      # perfect
    assert table_data.smape([0], [0]) == 0.0                          # 0/0 is defined as perfect
    assert table_data.smape([50], [100]) == pytest.approx(50 / 75 * 100)
    assert table_data.smape([0], [100]) == pytest.approx(200.0)       # the worst case
    assert table_data.smape([110, 0, 30], [100, 0, 10]) == pytest.approx((10 / 105 + 0 + 20 / 20) / 3 * 100)
    assert table_data.smape([-10], [10]) == pytest.approx(200.0)
    assert table_data.mae([1, 5], [2, 2]) == pytest.approx(2.0)


def write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


def test_bad_rows_are_dropped_and_counted(tmp_path):
    path = write_csv(tmp_path / "t.csv", ["sample_id", "catalog_content", "weight", "price"], [
        [1, "good", "1.5", "10"], [2, "no price", "1", ""], [3, "words", "1", "ten"], [4, "zero", "1", "0"],
        [5, "negative", "1", "-3"], [6, "", "1", "5"], [7, "bad feature", "heavy", "5"], [8, "fine", "2", "20.5"],
    ])
    t = table_data.read_table(path, "sample_id", "catalog_content", ["weight"], "price")
    assert t.ids == ["1", "8"] and t.target.tolist() == [10.0, 20.5] and t.numeric.shape == (2, 1)
    for text in ("2 with a missing or non-numeric 'price'", "2 with 'price' <= 0", "1 with an empty 'catalog_content'",
                 "1 with a non-numeric 'weight'", "2 of 8 rows"):
        assert text in t.report
    # predicting keeps every row, a bad feature becomes NaN for the standardiser to fill
    p = table_data.read_table(path, "sample_id", "catalog_content", ["weight"], "price", for_training=False)
    assert len(p.ids) == 8 and math.isnan(p.numeric[6, 0]) and p.target is None


def test_missing_columns_and_hopeless_tables_name_the_column(tmp_path):
    path = write_csv(tmp_path / "t.csv", ["sample_id", "catalog_content", "price"], [[1, "a", "x"], [2, "b", "y"]])
    with pytest.raises(DataError, match="'cost'"):
        table_data.read_table(path, "sample_id", "catalog_content", [], "cost")
    with pytest.raises(DataError, match="no usable rows.*non-numeric 'price'"):
        table_data.read_table(path, "sample_id", "catalog_content", [], "price")
    with pytest.raises(DataError, match="'carat', which the model was trained with"):
        table_data.read_table(path, "sample_id", "catalog_content", ["carat"], "price", for_training=False)
    with pytest.raises(DataError, match="no rows"):
        table_data.read_table(write_csv(tmp_path / "e.csv", ["sample_id", "price"], []), "sample_id", "", [], "price")


def test_standardizer_uses_its_own_statistics_and_fills_nan():
    s = table_data.Standardizer.fit(np.array([[1.0, 5.0], [3.0, 5.0]], dtype=np.float32))
    out = s(np.array([[2.0, 5.0], [np.nan, 7.0]], dtype=np.float32))
    assert out.tolist() == [[0.0, 0.0], [0.0, 2.0]]  # constant column: std 1; NaN -> the mean
    assert table_data.Standardizer.from_dict(s.to_dict())(np.array([[3.0, 5.0]], dtype=np.float32)).tolist() == [[1.0, 0.0]]


def test_target_transform_is_positive_finite_and_clipped():
    y = np.array([0.5, 326.0, 18823.0])
    back = table_data.decode_target(table_data.encode_target(y), lo=0.5, hi=18823.0)
    assert np.allclose(back.numpy(), y, rtol=1e-5)
    wild = table_data.decode_target(torch.tensor([-1e9, 1e9, float("nan")]), lo=10.0, hi=100.0)
    assert torch.isfinite(wild[:2]).all() and (wild[:2] > 0).all()
    assert wild[0] == pytest.approx(5.0) and wild[1] == pytest.approx(200.0)


def test_mean_pooling_ignores_padding():
    torch.manual_seed(0)
    model = Regressor(RegressorConfig(text=dict(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16),
                                      n_numeric=3, hidden=8)).eval()
    tokens = torch.randint(1, 50, (1, 5))
    padded = torch.cat([tokens, torch.randint(1, 50, (1, 7))], dim=1)
    numeric = torch.randn(1, 3)
    a = model(tokens, torch.tensor([5]), numeric)
    b = model(padded, torch.tensor([5]), numeric)
    assert a.shape == (1,) and torch.allclose(a, b, atol=1e-6)
    numeric_only = Regressor(RegressorConfig(n_numeric=3, hidden=8)).eval()
    assert numeric_only(numeric=torch.randn(4, 3)).shape == (4,)
    with pytest.raises(ValueError):
        RegressorConfig()


@pytest.fixture(scope="module")
def small_table(tmp_path_factory):
    """The first 400 rows of the embedded sample."""
    folder = tmp_path_factory.mktemp("table")
    with open(table_data.DEFAULT_TRAIN, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return write_csv(folder / "train.csv", rows[0], rows[1:401])


def train(out, data, *extra, part=1):
    return train_part.main(["--task", "reg", "--part", str(part), "--out", str(out), "--data", data] + TINY + list(extra),
                           started=time.time())


def test_interrupted_run_is_bit_identical(tmp_path, small_table):
    assert train(tmp_path / "a", small_table, "--max-steps", "9", *BOTH) == 0
    assert train(tmp_path / "b", small_table, "--max-steps", "4", *BOTH) == 0
    assert train(tmp_path / "b", small_table, "--max-steps", "9", *BOTH, part=2) == 0
    a = ckpt.load(tmp_path / "a" / "checkpoint_part1.safetensors")
    b = ckpt.load(tmp_path / "b" / "checkpoint_part2.safetensors")
    assert_same_tensors(a, b)
    assert unpack(a.state["history"])["smape"] == unpack(b.state["history"])["smape"]


def test_beats_the_median_clearly_and_predicts_every_row(tmp_path, capsys):
    out = tmp_path / "run"
    # numeric columns only: an MLP learns price from carat and size in seconds
    assert train_part.main(["--task", "reg", "--out", str(out), "--max-steps", "250", "--set", "text_column=",
                            *BOTH, "--set", "eval_every_steps=50"], started=time.time()) == 0
    printed = capsys.readouterr().out
    median = float(printed.split("training median scores SMAPE ")[1].split()[0])
    best = ckpt.load(out / "best_model.safetensors").meta["metrics"]["smape"]
    assert best < 0.5 * median, (best, median)

    test_csv = write_csv(tmp_path / "test.csv", ["sample_id", "catalog_content", "carat", "depth", "table", "x", "y", "z"],
                         [["z9", "", "0.3", "61", "57", "4.3", "4.3", "2.6"], ["a1", "x", "n/a", "", "", "", "", ""],
                          ["m5", "y", "2.1", "62", "58", "8.2", "8.1", "5.0"]])
    assert infer.main(["--task", "reg", "--ckpt", str(out), "--data", test_csv, "--out", str(tmp_path / "p.csv")]) == 0
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["sample_id"] for r in rows] == ["z9", "a1", "m5"]
    values = [float(r["price"]) for r in rows]
    assert all(math.isfinite(v) and v > 0 for v in values)
    assert values[2] > values[0]  # a 2.1 carat stone costs more than a 0.3 carat one
    assert "non-numeric feature" in capsys.readouterr().err


def test_bad_inputs_on_the_command_line(tmp_path, small_table, capsys):
    no_price = write_csv(tmp_path / "np.csv", ["sample_id", "catalog_content"], [[1, "a"]])
    assert train(tmp_path / "r", no_price) == 2
    assert "no column 'price'" in capsys.readouterr().err
    words = write_csv(tmp_path / "w.csv", ["sample_id", "catalog_content", "price"], [[1, "a", "cheap"], [2, "b", "dear"]])
    assert train(tmp_path / "r", words) == 2
    assert "non-numeric 'price'" in capsys.readouterr().err
    assert train(tmp_path / "r", small_table, "--max-steps", "2", *BOTH) == 0
    text_only = write_csv(tmp_path / "t.csv", ["sample_id", "catalog_content"], [[1, "0.3 carat"]])
    assert infer.main(["--task", "reg", "--ckpt", str(tmp_path / "r"), "--data", text_only]) == 2
    assert "no column 'carat', which the model was trained with" in capsys.readouterr().err
    assert infer.main(["--task", "lm", "--ckpt", str(tmp_path / "r")]) == 2
    assert "task 'reg', not 'lm'" in capsys.readouterr().err


def test_text_backbone_from_an_lm_checkpoint(tmp_path, small_table, capsys):
    lm_out = tmp_path / "lm"
    assert train_part.main(["--task", "lm", "--out", str(lm_out), "--max-steps", "2", "--set", "n_layer=1",
                            "--set", "n_head=2", "--set", "n_embd=32", "--set", "block_size=64"], started=time.time()) == 0
    lm_file = lm_out / "checkpoint_part1.safetensors"
    out = tmp_path / "reg"
    assert train(out, small_table, "--max-steps", "1", "--set", f"pretrained={lm_file}", "--set", "warmup_steps=100",
                 "--set", "lr=1e-9") == 0
    reg = ckpt.load(out / "checkpoint_part1.safetensors").state["model"]
    lm = ckpt.load(lm_file).state["model"]
    # after one step at a tiny learning rate the backbone still holds the lm's weights
    assert torch.allclose(reg["backbone.transformer.h.0.attn.c_attn.weight"], lm["transformer.h.0.attn.c_attn.weight"], atol=1e-6)
    assert train(tmp_path / "reg2", small_table, "--set", f"pretrained={out / 'checkpoint_part1.safetensors'}") == 2
    assert "needs an lm checkpoint" in capsys.readouterr().err
