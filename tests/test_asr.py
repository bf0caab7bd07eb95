"""training/asr.py, the asr task, end to end on a slice of the embedded Bengali clips: exact resume with SpecAugment,
LayerDrop and dropout on, submission.csv, bad inputs, and export to a Hugging Face folder."""

import csv
import json
import os
import shutil
import time
import types
import unicodedata

import pytest
import torch

import ckpt
from data import audio, manifest, transcripts
import infer
from model import decoding
import train_part
from training import asr
from training.config import apply_settings
from conftest import assert_same_tensors
from training.record import unpack

TINY = ["--set", "batch_size=4", "--set", "grad_accum=2", "--set", "eval_every_steps=3", "--set", "warmup_steps=2",
        "--set", "log_every_steps=1", "--set", "save_every_steps=0", "--set", "mask_time_prob=0.3",
        "--set", "mask_feature_prob=0.2", "--set", "layerdrop=0.3", "--set", "hidden_dropout=0.2"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """A Bengali.AI-layout copy of 24 training and 6 validation clips of the embedded sample."""
    folder = tmp_path_factory.mktemp("speech")
    with open(os.path.join(manifest.EMBEDDED, "train.csv"), newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    chosen = [r for r in rows if r["split"] == "train"][:24] + [r for r in rows if r["split"] == "valid"][:6]
    (folder / "train_mp3s").mkdir()
    for r in chosen:
        shutil.copy(os.path.join(manifest.EMBEDDED, "train_mp3s", r["id"] + ".mp3"), folder / "train_mp3s")
    write_manifest(folder / "train.csv", chosen)
    return folder


def write_manifest(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["id", "sentence", "split"])
        w.writeheader()
        w.writerows({k: r[k] for k in ("id", "sentence", "split")} for r in rows)


def train(out, data, *extra, part=1):
    return train_part.main(["--task", "asr", "--part", str(part), "--out", str(out), "--data", str(data)] + TINY
                           + list(extra), started=time.time())


def test_interrupted_run_is_bit_identical(tmp_path, clips):
    assert train(tmp_path / "a", clips, "--max-steps", "6") == 0
    assert train(tmp_path / "b", clips, "--max-steps", "3") == 0
    assert train(tmp_path / "b", clips, "--max-steps", "6", part=2) == 0
    a = ckpt.load(tmp_path / "a" / "checkpoint_part1.safetensors")
    b = ckpt.load(tmp_path / "b" / "checkpoint_part2.safetensors")
    assert_same_tensors(a, b)
    assert unpack(a.state["history"])["train_loss"] == unpack(b.state["history"])["train_loss"]
    assert unpack(a.state["history"])["cer"] == unpack(b.state["history"])["cer"]


def test_submission_has_every_clip_post_processed_and_export_opens(tmp_path, clips):
    out = tmp_path / "run"
    assert train(out, clips, "--max-steps", "1") == 0  # an untrained model still emits characters
    sub = tmp_path / "submission.csv"
    assert infer.main(["--task", "asr", "--ckpt", str(out), "--out", str(sub), "--batch-size", "4"]) == 0
    with open(sub, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    expected = sorted(os.path.splitext(n)[0] for n in os.listdir(manifest.EMBEDDED_TEST))
    assert rows[0] == ["id", "sentence"] and [r[0] for r in rows[1:]] == expected
    normalizer = infer.use_training_normalizer(ckpt.load(out / "checkpoint_part1.safetensors").meta)
    for _, sentence in rows[1:]:
        assert sentence == transcripts.postprocess_bengali(sentence, normalizer)
        assert "  " not in sentence
        if normalizer.name == "nfc":  # bnunicodenormalizer writes য় as one code point, NFC as two
            assert sentence == unicodedata.normalize("NFC", sentence)
        assert sentence == "" or sentence.endswith(transcripts.SENTENCE_END)
    assert any(sentence for _, sentence in rows[1:])

    hf = tmp_path / "hf"
    assert infer.main(["--task", "asr", "--ckpt", str(out), "--export", str(hf)]) == 0
    assert {"config.json", "model.safetensors", "vocab.json"} <= set(os.listdir(hf))
    vocab = json.loads((hf / "vocab.json").read_text(encoding="utf-8"))
    assert vocab["<pad>"] == 0 and "|" in vocab and "<unk>" in vocab


def test_export_opens_in_a_transformers_pipeline_and_transcribes_as_infer_does(tmp_path, clips):
    transformers = pytest.importorskip("transformers")
    import numpy as np
    import soundfile as sf
    assert train(tmp_path / "run", clips, "--max-steps", "1") == 0  # untrained: it emits many characters
    # A trained model never emits <s>, </s> or <unk> (they are not in its targets); this one would, and for
    # CTC the pipeline keeps special tokens in its text where Baton drops them. Make it behave as trained.
    saved = ckpt.load(tmp_path / "run" / "checkpoint_part1.safetensors")
    vocab = saved.meta["task_meta"]["vocab"]
    bias = saved.state["model"]["lm_head.bias"].clone()
    bias[[vocab[t] for t in (transcripts.BOS, transcripts.EOS, transcripts.UNK)]] = -1e4
    saved.state["model"]["lm_head.bias"] = bias
    # A head of its own random weights: many characters whatever one step's dropout drew (the comparison
    # needs text, and the pipeline must reproduce it character for character).
    head = saved.state["model"]["lm_head.weight"]
    saved.state["model"]["lm_head.weight"] = torch.randn(head.shape, generator=torch.Generator().manual_seed(0))
    meta = {k: v for k, v in saved.meta.items() if k not in ("format", "created_at", "checksum")}
    ckpt.write_file(tmp_path / "model" / "checkpoint_part1.safetensors", saved.state, meta)

    ours = tmp_path / "ours.csv"
    assert infer.main(["--task", "asr", "--ckpt", str(tmp_path / "model"), "--no-postprocess", "--out", str(ours)]) == 0
    hf = tmp_path / "hf"
    assert infer.main(["--task", "asr", "--ckpt", str(tmp_path / "model"), "--export", str(hf)]) == 0
    pipe = transformers.pipeline("automatic-speech-recognition", model=str(hf), device="cpu")
    with open(ours, newline="", encoding="utf-8") as f:
        expected = dict(list(csv.reader(f))[1:])
    assert sum(len(text) for text in expected.values()) > 100  # characters to compare, not blanks
    for name in sorted(os.listdir(manifest.EMBEDDED_TEST)):
        wave, rate = sf.read(os.path.join(manifest.EMBEDDED_TEST, name), dtype="float32", always_2d=True)
        text = pipe({"raw": np.ascontiguousarray(wave.mean(axis=1)), "sampling_rate": rate})["text"]
        assert text == expected[os.path.splitext(name)[0]], name
    again = tmp_path / "again.csv"  # and infer.py reads the exported folder back
    assert infer.main(["--task", "asr", "--ckpt", str(hf), "--no-postprocess", "--out", str(again)]) == 0
    assert again.read_text(encoding="utf-8") == ours.read_text(encoding="utf-8")


def test_beam_search_with_a_language_model_built_from_the_transcripts(tmp_path, clips, capsys):
    assert train(tmp_path / "run", clips, "--max-steps", "1") == 0
    sub = tmp_path / "beam.csv"
    assert infer.main(["--task", "asr", "--ckpt", str(tmp_path / "run"), "--out", str(sub), "--beam", "4",
                       "--lm", str(clips / "train.csv"), "--lm-weight", "0.5", "--word-bonus", "1"]) == 0
    printed = capsys.readouterr()
    assert "language model: a 3-gram built from 24 sentences" in printed.out  # the training rows only
    with open(sub, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert len(rows) == 1 + len(os.listdir(manifest.EMBEDDED_TEST))
    normalizer = infer.use_training_normalizer(ckpt.load(tmp_path / "run" / "checkpoint_part1.safetensors").meta)
    assert all(sentence == transcripts.postprocess_bengali(sentence, normalizer) for _, sentence in rows[1:])
    assert infer.main(["--task", "asr", "--ckpt", str(tmp_path / "run"), "--lm", str(clips / "train.csv")]) == 2
    assert "--lm needs a beam search" in capsys.readouterr().err

    # --export with --lm writes the Hugging Face language_model/ folder beside the model; --lm of that
    # folder decodes as the LM it came from, its alpha and beta the weights given at export.
    hf = tmp_path / "hf"
    assert infer.main(["--task", "asr", "--ckpt", str(tmp_path / "run"), "--export", str(hf),
                       "--lm", str(clips / "train.csv"), "--lm-weight", "0.5", "--word-bonus", "1"]) == 0
    assert sorted(os.listdir(hf / "language_model")) == ["attrs.json", "lm.arpa", "unigrams.txt"]
    again = tmp_path / "again.csv"
    assert infer.main(["--task", "asr", "--ckpt", str(tmp_path / "run"), "--out", str(again), "--beam", "4",
                       "--lm", str(hf)]) == 0
    assert again.read_text(encoding="utf-8") == sub.read_text(encoding="utf-8")


def test_lm_tune_picks_the_pair_of_its_grid_with_the_lowest_validation_wer(tmp_path, clips, capsys, monkeypatch):
    assert train(tmp_path / "run", clips, "--max-steps", "1") == 0
    # A decoder that gets the validation clips right at one pair only (the untrained model's own
    # output would tie every pair): the grid search must find that pair, and --export keep it.
    real = decoding.prefix_beam_search
    truth = {}

    def right_at(log_probs, vocab, beam, lm, weight, bonus):
        key = (log_probs.shape[0], float(log_probs.sum()))
        return truth.get(key, "") if (weight, bonus) == (0.8, 2.0) else real(log_probs, vocab, beam, lm, weight, bonus)
    monkeypatch.setattr(decoding, "prefix_beam_search", right_at)
    model, meta = infer.load_model(str(tmp_path / "run"), "asr", torch.device("cpu"))
    vocab = transcripts.CharVocab.from_dict(meta["task_meta"]["vocab"], infer.use_training_normalizer(meta))
    cfg = asr.ASRConfig(**{k: v for k, v in meta["config"].items() if k in asr.ASRConfig.__dataclass_fields__})
    val = audio.validation_clips(cfg)
    sentences = dict(zip(val.items.column("id"), val.items.column("sentence")))
    settings = types.SimpleNamespace(batch_size=32, chunk_seconds=30.0, stride_seconds=5.0)
    for i, lp in infer.model_outputs(model, val, settings, torch.device("cpu")):
        truth[lp.shape[0], float(lp.sum())] = transcripts.normalize_text(sentences[i], vocab.keep, vocab.normalizer)
    hf = tmp_path / "hf"
    assert infer.main(["--task", "asr", "--ckpt", str(tmp_path / "run"), "--export", str(hf), "--beam", "4",
                       "--lm", str(clips / "train.csv"), "--lm-tune"]) == 0
    err = capsys.readouterr().err
    assert "chosen: LM weight 0.8, word bonus 2 (WER 0.000)" in err
    attrs = json.loads((hf / "language_model" / "attrs.json").read_text())
    assert (attrs["alpha"], attrs["beta"]) == (0.8, 2.0)


class FrameLocal(torch.nn.Module):
    """A stand-in CTC model whose frame t sees only its own 320 samples: chunked and whole clips must
    then give the same log probabilities, frame for frame, if the windows tile the clip exactly."""

    def __init__(self, vocab_size=9):
        super().__init__()
        self.config = types.SimpleNamespace(conv_stride=(5, 64))
        self.weight = torch.nn.Parameter(torch.randn(320, vocab_size, generator=torch.Generator().manual_seed(0)))

    def forward(self, input_values, attention_mask):
        frames = attention_mask.sum(dim=1) // 320  # (B,)
        windows = input_values[:, :input_values.shape[1] // 320 * 320].reshape(len(input_values), -1, 320)
        return windows @ self.weight, frames  # (B, T, V), (B,)


def test_a_clip_longer_than_a_chunk_gives_the_frames_of_the_whole_clip():
    samples = torch.randn(16000 * 11 + 4321, generator=torch.Generator().manual_seed(1))  # 11.27 s
    model = FrameLocal()
    whole = torch.log_softmax(model(samples[None], torch.ones(1, len(samples), dtype=torch.bool))[0][0], dim=-1)
    for chunk, stride in ((4.0, 1.0), (3.0, 0.5), (2.0, 0.9), (20.0, 5.0)):
        settings = types.SimpleNamespace(chunk_seconds=chunk, stride_seconds=stride)
        chunked = infer.chunked_log_probs(model, samples, settings, torch.device("cpu"))
        assert chunked.shape == whole.shape
        torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-4)  # the same frames, float rounding apart


def test_bad_rows_are_reported_and_training_goes_on(tmp_path, clips, capsys):
    data = tmp_path / "data"
    shutil.copytree(clips, data)
    with open(data / "train.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    (data / "train_mp3s" / "not_audio.mp3").write_bytes(b"this is not an mp3 file at all" * 20)
    rows += [{"id": "missing_clip", "sentence": "আমি", "split": "train"},
             {"id": "not_audio", "sentence": "তুমি", "split": "train"},
             {"id": rows[0]["id"], "sentence": "   ", "split": "train"}]
    write_manifest(data / "train.csv", rows)
    assert train(tmp_path / "run", data, "--max-steps", "2") == 0
    report = capsys.readouterr().out
    assert "1 missing" in report and "1 unreadable" in report and "1 empty" in report


def test_bad_inputs_give_one_clear_message(tmp_path, clips, capsys):
    empty = tmp_path / "empty.csv"
    empty.write_text("id,sentence,split\n", encoding="utf-8")
    assert train(tmp_path / "run", empty) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "empty.csv" in err and "Traceback" not in err
    no_sentence = tmp_path / "nosentence.csv"
    no_sentence.write_text("id,split\nx,train\n", encoding="utf-8")
    assert train(tmp_path / "run", no_sentence) == 2
    assert "sentence" in capsys.readouterr().err
    lm = tmp_path / "lm"
    assert train_part.main(["--task", "lm", "--out", str(lm), "--max-steps", "1", "--set", "n_layer=1",
                            "--set", "n_embd=16", "--set", "n_head=2"], started=time.time()) == 0
    assert train(tmp_path / "run", clips, "--resume", str(lm / "checkpoint_part1.safetensors")) == 2
    assert "task 'lm', not 'asr'" in capsys.readouterr().err
    assert infer.main(["--task", "asr", "--ckpt", str(lm)]) == 2
    assert "task 'lm', not 'asr'" in capsys.readouterr().err
    assert infer.main(["--task", "asr", "--ckpt", str(lm), "--data", str(tmp_path / "nowhere")]) == 2


def test_a_micro_batch_whose_clips_all_went_bad_is_skipped(tmp_path, clips, monkeypatch):
    # A clip can pass the up-front check and fail to decode later (a large manifest only reads
    # headers); when every clip of a micro-batch fails, the step trains on the rest of its window.
    cfg = apply_settings(asr.ASRConfig(), [f"data={clips}", *TINY[1::2]])
    _, data = asr.build(cfg, torch.device("cpu"))
    first_batch = data.sampler.batches(0)[0]
    bad_ids = {data.train.items[i].id for i in first_batch}
    real = audio.AudioDataset.__getitem__

    def decoding_fails(self, i):
        item = real(self, i)
        return {**item, "audio": None, "labels": None, "bad": "unreadable"} if item["id"] in bad_ids else item

    monkeypatch.setattr(audio.AudioDataset, "__getitem__", decoding_fails)
    counts = [count for _, count in data.batches(data.sampler.batches(0)[:2], epoch=0)]
    assert counts[0] == 0 and counts[1] > 0
    assert train(tmp_path / "run", clips, "--max-steps", "2") == 0
    saved = ckpt.load(tmp_path / "run" / "checkpoint_part1.safetensors")
    assert saved.meta["global_step"] == 2
    assert all(torch.isfinite(t).all() for t in saved.state["model"].values())
