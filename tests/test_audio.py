"""data/audio.py, manifest.py and transcripts.py, speech data: decoding to 16 kHz, manifests in every
layout, bad rows counted, text and CTC vocabulary, metrics."""

import csv
import json
import os
import sys
import unicodedata

import numpy as np
import pytest
import soundfile as sf
import torch

from data import DataError
from data import audio as A
from data import manifest as M
from data import transcripts as T

FORMATS = {"wav": "WAV", "flac": "FLAC", "mp3": "MP3", "ogg": "OGG"}


def sine(rate, seconds=1.0, freq=440.0, amplitude=0.5):
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write(path, data, rate):
    sf.write(str(path), data, rate, format=FORMATS[str(path).rsplit(".", 1)[1]])
    return str(path)


def peak_hz(audio):
    spectrum = np.abs(np.fft.rfft(audio.numpy()))
    return np.argmax(spectrum) * A.SAMPLE_RATE / len(audio)


def write_csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return str(path)


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", sorted(FORMATS))
@pytest.mark.parametrize("rate", [22_050, 44_100])
def test_every_format_decodes_to_normalised_16k_mono(tmp_path, ext, rate):
    left = sine(rate)
    path = write(tmp_path / f"clip.{ext}", np.stack([left, 0.5 * left], axis=1), rate)  # stereo
    audio = A.load_audio(path)
    assert audio.dtype == torch.float32 and audio.ndim == 1
    assert abs(len(audio) - A.SAMPLE_RATE) < 0.05 * A.SAMPLE_RATE  # 1 s (MP3/OGG may pad a frame)
    assert abs(peak_hz(audio) - 440) < 5  # resampling kept the pitch
    assert abs(audio.mean().item()) < 1e-4 and abs(audio.std(unbiased=False).item() - 1) < 1e-3
    assert abs(A.audio_seconds(path) - len(audio) / A.SAMPLE_RATE) < 0.05


def test_channels_are_averaged_and_normalisation_is_wav2vec2s(tmp_path):
    rng = np.random.default_rng(0)
    left, right = 0.3 * rng.standard_normal((2, 16_000)).astype(np.float32)
    stereo = A.load_audio(write(tmp_path / "s.wav", np.stack([left, right], axis=1), 16_000))
    # Reference: Wav2Vec2FeatureExtractor's zero_mean_unit_var_norm on the channel mean. The file
    # stores 16-bit PCM, so compare with what it decodes to.
    decoded, _ = sf.read(tmp_path / "s.wav", dtype="float32")
    mono = decoded.mean(axis=1)
    expected = (mono - mono.mean()) / np.sqrt(mono.var() + 1e-7)
    np.testing.assert_allclose(stereo.numpy(), expected, atol=1e-5)


def test_unreadable_audio_is_a_dataerror_naming_the_file(tmp_path):
    fake = tmp_path / "fake.mp3"
    fake.write_text("this is not audio")
    with pytest.raises(DataError, match="fake.mp3"):
        A.load_audio(str(fake))
    with pytest.raises(DataError, match="fake.mp3"):
        A.audio_seconds(str(fake))


def test_a_float_wav_holding_nan_is_refused_not_trained_on(tmp_path):
    # float WAVs can hold NaN; normalised, one such clip would make every batch it is in NaN
    wave = np.sin(np.linspace(0, 300, 16000)).astype(np.float32)
    wave[100] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, wave, 16000, subtype="FLOAT")
    with pytest.raises(DataError, match="nan.wav holds NaN or infinite samples"):
        A.load_audio(str(path))


# ---------------------------------------------------------------------------------------------
# Manifests
# ---------------------------------------------------------------------------------------------


def test_plain_csv_with_relative_and_absolute_paths(tmp_path):
    os.mkdir(tmp_path / "clips")
    a = write(tmp_path / "clips" / "a.wav", sine(16_000), 16_000)
    write(tmp_path / "clips" / "b.flac", sine(16_000), 16_000)
    manifest = write_csv(tmp_path / "m.csv", [["path", "sentence"], ["clips/b.flac", " আমি ভাত খাই। "], [a, "hello"]])
    got = M.read_manifest(manifest)
    assert [(u.id, u.path, u.sentence, u.split) for u in got] == [
        ("b", str(tmp_path / "clips" / "b.flac"), "আমি ভাত খাই।", None), ("a", a, "hello", None)]


def test_bengali_ai_layout_by_csv_or_folder_with_split_filter(tmp_path):
    os.mkdir(tmp_path / "train_mp3s")
    for id_ in ("x1", "x2", "x3"):
        write(tmp_path / "train_mp3s" / f"{id_}.mp3", sine(16_000), 16_000)
    write_csv(tmp_path / "train.csv", [["id", "sentence", "split"], ["x1", "এক", "train"],
                                       ["x2", "দুই", "valid"], ["x3", "তিন", "train"]])
    everything = M.read_manifest(str(tmp_path))
    assert everything == M.read_manifest(str(tmp_path / "train.csv"))
    assert [u.path for u in everything] == [str(tmp_path / "train_mp3s" / f"x{i}.mp3") for i in (1, 2, 3)]
    assert [u.id for u in M.read_manifest(str(tmp_path), split="train")] == ["x1", "x3"]
    assert [(u.id, u.sentence, u.split) for u in M.read_manifest(str(tmp_path), split="valid")] == [("x2", "দুই", "valid")]


def test_bengali_ai_ids_with_audio_beside_the_csv(tmp_path):
    write(tmp_path / "p.ogg", sine(16_000), 16_000)
    write(tmp_path / "q.wav", sine(16_000), 16_000)
    got = M.read_manifest(write_csv(tmp_path / "labels.csv", [["id", "sentence"], ["q", "b"], ["p", "a"], ["r", "c"]]))
    assert [os.path.basename(u.path) for u in got] == ["q.wav", "p.ogg", "r.mp3"]  # r is missing: counted later


def test_folder_of_audio_for_inference(tmp_path):
    for name in ("b.mp3", "a.wav", "c.flac"):
        write(tmp_path / name, sine(16_000), 16_000)
    (tmp_path / "notes.txt").write_text("not audio")
    got = M.read_manifest(str(tmp_path), require_text=False)
    assert [u.id for u in got] == ["a", "b", "c"] and all(u.sentence is None for u in got)
    with pytest.raises(DataError, match="no transcripts"):
        M.read_manifest(str(tmp_path))  # training needs sentences
    assert [u.id for u in M.read_manifest(str(tmp_path / "a.wav"), require_text=False)] == ["a"]


def test_manifest_errors_name_the_path_or_column(tmp_path):
    with pytest.raises(DataError, match="nowhere.csv does not exist"):
        M.read_manifest(str(tmp_path / "nowhere.csv"))
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty.csv is empty"):
        M.read_manifest(str(tmp_path / "empty.csv"))
    header_only = write_csv(tmp_path / "header.csv", [["id", "sentence"]])
    with pytest.raises(DataError, match="no rows"):
        M.read_manifest(header_only)
    no_sentence = write_csv(tmp_path / "nosent.csv", [["id", "text"], ["a", "hello"]])
    with pytest.raises(DataError, match="no 'sentence' column"):
        M.read_manifest(no_sentence)
    assert M.read_manifest(no_sentence, require_text=False)[0].sentence is None  # inference needs none
    with pytest.raises(DataError, match="no 'path' or 'id' column"):
        M.read_manifest(write_csv(tmp_path / "noid.csv", [["file", "sentence"], ["a.wav", "x"]]))
    (tmp_path / "binary.csv").write_bytes(bytes(range(256)))
    with pytest.raises(DataError, match="binary.csv is not a UTF-8 CSV"):
        M.read_manifest(str(tmp_path / "binary.csv"))
    os.mkdir(tmp_path / "bare")
    with pytest.raises(DataError, match="no train.csv and no audio files"):
        M.read_manifest(str(tmp_path / "bare"))


# ---------------------------------------------------------------------------------------------
# The dataset: bad rows are counted and dropped, never raised
# ---------------------------------------------------------------------------------------------


def messy_manifest(tmp_path):
    write(tmp_path / "good1.mp3", sine(16_000, 1.0), 16_000)
    write(tmp_path / "good2.wav", sine(22_050, 2.0), 22_050)
    write(tmp_path / "long.flac", sine(16_000, 4.0), 16_000)
    write(tmp_path / "blank.mp3", sine(16_000, 1.0), 16_000)
    (tmp_path / "fake.mp3").write_bytes(b"ID3 not really an mp3" * 200)
    return M.read_manifest(write_csv(tmp_path / "m.csv", [
        ["path", "sentence"], ["good1.mp3", "আমি ভাত খাই।"], ["good2.wav", "সে যায়"], ["long.flac", "অনেক কথা"],
        ["blank.mp3", " । "], ["fake.mp3", "কিছু"], ["gone.mp3", "নেই"]]))


def test_bad_rows_are_dropped_and_counted(tmp_path):
    utterances = messy_manifest(tmp_path)
    vocab = T.CharVocab.build(u.sentence for u in utterances)
    ds = A.AudioDataset(utterances, vocab, max_seconds=3)
    assert ds.report == ("kept 2 of 6 clips (0.00 h): 1 missing files, 1 unreadable, 1 empty sentences, "
                         "1 longer than 3 s")
    assert [u.id for u in ds.items] == ["good1", "good2"]
    assert ds.lengths == [16_000, 32_000]
    item = ds[1]
    assert item["id"] == "good2" and item["bad"] is None and len(item["audio"]) == 32_000
    assert vocab.decode(item["labels"]) == "সে যায়"
    # Without a vocabulary (inference) an empty sentence is no reason to drop a clip.
    assert len(A.AudioDataset(utterances, cache=True)) == 4


def test_estimated_lengths_and_a_bad_file_found_only_at_load_time(tmp_path):
    utterances = messy_manifest(tmp_path)
    ds = A.AudioDataset(utterances, header_limit=0)  # as for a huge manifest: sizes only
    assert "lengths estimated" in ds.report and "kept 5 of 6" in ds.report and "1 missing files" in ds.report
    estimated = dict(zip([u.id for u in ds.items], ds.lengths))
    for id_ in ("good1", "blank"):  # constant-bitrate MP3: the size gives the duration
        assert abs(estimated[id_] - A.SAMPLE_RATE) < 0.05 * A.SAMPLE_RATE
    items = [ds[i] for i in range(len(ds))]
    assert [it["id"] for it in items if it["bad"]] == ["fake"]
    batch = A.collate(items)
    assert batch["dropped"] == ["fake"] and len(batch["ids"]) == 4 and batch["input_values"].shape[0] == 4


# ---------------------------------------------------------------------------------------------
# Text, vocabulary, post-processing
# ---------------------------------------------------------------------------------------------

BENGALI = ["আমি ভাত খাই।", "তুমি কেমন আছ?", "হ্যাঁ,এক কাপ চা দাও!", "\"চুপ করো!\" বলে   শিক্ষক রেগে গেলেন।",
           "বাবা খবরের কাগজ পড়ছেন।", "আমার বোন কি দই খায়?"]


def test_normalize_text():
    assert T.normalize_text("  আমি   ভাত খাই। ") == "আমি ভাত খাই"
    assert T.normalize_text("হ্যাঁ,এক কাপ চা দাও!") == "হ্যাঁ এক কাপ চা দাও"  # the comma was a word break
    assert T.normalize_text("\"চুপ করো!\" বলে") == "চুপ করো বলে"
    assert T.normalize_text("কি খাও? ভাত।", keep="?।") == "কি খাও? ভাত।"
    assert T.normalize_text("don't stop") == "dont stop"
    assert T.normalize_text("র\u200dযাব") == "রযাব"  # zero-width joiner dropped
    # য় typed as one code point (U+09DF) or two (য + nukta) normalises to the same text.
    one, two = "খা\u09df", "খা\u09af\u09bc"
    assert T.normalize_text(one) == T.normalize_text(two) == unicodedata.normalize("NFC", one)


def test_vocab_round_trip_through_ctc_with_repeats_and_blanks():
    vocab = T.CharVocab.build(BENGALI)
    rng = np.random.default_rng(0)
    for sentence in BENGALI:
        ids = vocab.encode(sentence)
        assert vocab.decode(ids) == T.normalize_text(sentence)
        frames = [0] * int(rng.integers(0, 3))  # leading blanks
        for k, i in enumerate(ids):
            if k and ids[k - 1] == i:
                frames.append(0)  # a blank must separate a doubled letter or CTC merges it
            frames += [i] * int(rng.integers(1, 4)) + [0] * int(rng.integers(0, 2))
        assert vocab.decode_ctc(torch.tensor(frames)) == T.normalize_text(sentence)
    # NFD input encodes like NFC; unknown characters become <unk>, which decoding drops.
    nfd = unicodedata.normalize("NFD", BENGALI[5])
    assert vocab.encode(nfd) == vocab.encode(BENGALI[5])
    assert vocab.encode("আমি Z") == vocab.encode("আমি") + [vocab.token_to_id["|"], vocab.unk_id]
    assert vocab.decode_ctc(vocab.encode("আমি Z")) == "আমি"


def test_vocab_json_conventions():
    vocab = T.CharVocab.build(reversed(BENGALI))
    d = vocab.to_dict()
    assert list(d)[:5] == ["<pad>", "<s>", "</s>", "<unk>", "|"] and list(d.values()) == list(range(len(d)))
    assert list(d)[5:] == sorted(set("".join(T.normalize_text(s) for s in BENGALI)) - {" "})
    assert d == T.CharVocab.build(BENGALI).to_dict()  # deterministic: order of sentences does not matter
    again = T.CharVocab.from_dict(json.loads(json.dumps(d, ensure_ascii=False)))
    assert len(again) == len(vocab) and again.encode(BENGALI[0]) == vocab.encode(BENGALI[0])
    assert vocab.encode("এক কাপ")[2] == d["|"]  # এ, ক, then the space
    # A vocab.json in the fine-tuning-blog style: [UNK] and [PAD] at the end.
    blog = T.CharVocab.from_dict({"a": 0, "b": 1, "|": 2, "[UNK]": 3, "[PAD]": 4})
    assert blog.pad_id == 4 and blog.encode("ab c") == [0, 1, 2, 3] and blog.decode_ctc([4, 0, 0, 4, 0, 2, 1]) == "aa b"
    with pytest.raises(DataError, match="needs <pad>"):
        T.CharVocab.from_dict({"a": 0, "|": 1})
    # Punctuation kept at build time stays kept after a round trip through vocab.json.
    punct = T.CharVocab.from_dict(T.CharVocab.build(BENGALI, keep="।?").to_dict())
    assert punct.decode(punct.encode("আমি ভাত খাই।")) == "আমি ভাত খাই।"


def test_postprocess_bengali():
    assert T.postprocess_bengali("আমি ভাত খাই") == "আমি ভাত খাই।"
    assert T.postprocess_bengali("  আমি   ভাত\tখাই ") == "আমি ভাত খাই।"
    assert T.postprocess_bengali("তুমি কেমন আছ?") == "তুমি কেমন আছ?"
    assert T.postprocess_bengali("শুভ সকাল!") == "শুভ সকাল!"
    assert T.postprocess_bengali("আজ শুক্রবার।") == "আজ শুক্রবার।"
    assert T.postprocess_bengali("") == "" and T.postprocess_bengali("   ") == ""
    assert T.postprocess_bengali("খা\u09df") == unicodedata.normalize("NFC", "খা\u09df") + "।"


def test_wer_and_cer_against_hand_counts():
    refs, hyps = ["আমি ভাত খাই", "সে বাজারে যায়"], ["আমি ভাত খায়", "সে যায়"]
    assert T.wer(refs, hyps) == pytest.approx(2 / 6)  # one substitution, one deletion, six words
    assert T.cer(["abcd", "xy z"], ["abxd", "xyz"]) == pytest.approx(2 / 8)  # one substitution, one space deleted
    assert T.wer("a b c", "a b c") == 0.0
    assert T.wer(["", "a b"], ["x y", "a b"]) == pytest.approx(2 / 2)  # empty reference: every word inserted
    assert T.cer(["", "ab"], ["", "ab"]) == 0.0
    assert T.wer([""], [""]) == 0.0 and T.wer([""], ["x"]) == 1.0


# ---------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------


def test_collate_pads_and_carries_lengths():
    items = [
        {"audio": torch.ones(5), "labels": torch.tensor([5, 6]), "id": "a", "bad": None},
        {"audio": None, "labels": None, "id": "broken", "bad": "unreadable"},
        {"audio": torch.full((3,), 2.0), "labels": torch.tensor([7, 8, 9, 10]), "id": "b", "bad": None},
    ]
    batch = A.collate(items)
    assert batch["ids"] == ["a", "b"] and batch["dropped"] == ["broken"]
    assert batch["input_values"].tolist() == [[1, 1, 1, 1, 1], [2, 2, 2, 0, 0]]
    assert batch["input_values"].dtype == torch.float32
    assert batch["attention_mask"].tolist() == [[True] * 5, [True] * 3 + [False] * 2]
    assert batch["input_lengths"].tolist() == [5, 3] and batch["label_lengths"].tolist() == [2, 4]
    assert batch["labels"].tolist() == [[5, 6, 0, 0], [7, 8, 9, 10]]
    unlabelled = A.collate([{"audio": torch.ones(2), "labels": None, "id": "c", "bad": None}])
    assert unlabelled["labels"] is None and unlabelled["label_lengths"] is None
    empty = A.collate([items[1]])
    assert empty["input_values"].shape == (0, 0) and empty["dropped"] == ["broken"]


# ---------------------------------------------------------------------------------------------
# The embedded sample
# ---------------------------------------------------------------------------------------------


def test_embedded_sample_reads_and_decodes_completely():
    train = M.read_manifest(split="train")
    valid = M.read_manifest(split="valid")
    assert len(train) == 398 and len(valid) == 52
    assert len({u.id for u in train + valid}) == 450 and M.read_manifest() == sorted(train + valid, key=lambda u: u.id)
    vocab = T.CharVocab.build(u.sentence for u in train)
    assert 40 <= len(vocab) <= 70
    for u in valid:  # valid sentences use only characters heard in train
        assert vocab.unk_id not in vocab.encode(u.sentence)
    ds = A.AudioDataset(train + valid, vocab, max_seconds=15, cache=True)  # decodes every clip
    assert ds.report.startswith("kept 450 of 450 clips")
    seconds = np.array(ds.lengths) / A.SAMPLE_RATE
    assert 0.5 < seconds.min() and seconds.max() < 6 and 1.0 < seconds.mean() < 3.0

    test = M.read_manifest(M.EMBEDDED_TEST, require_text=False)
    refs = M.read_manifest(os.path.join(M.EMBEDDED, "test_references.csv"))
    assert len(test) == 20 and [(u.id, u.path) for u in test] == sorted((u.id, u.path) for u in refs)
    assert all(A.audio_seconds(u.path) > 0.5 for u in test)
    size = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(M.EMBEDDED) for f in fs)
    assert size < 8e6


def test_embedded_sample_matches_its_recipe():
    # The regeneration script's plan is a pure function of its seed (no espeak-ng needed here), so
    # the committed CSVs must be exactly what it plans: sentences edited without regenerating fail.
    from data import make_bengali_speech as make

    clips = make.plan(np.random.Generator(np.random.PCG64(make.SEED)))
    train_csv = [(u.id, u.sentence, u.split) for u in M.read_manifest()]
    assert train_csv == [(c["id"], c["sentence"], c["split"]) for c in clips if c["split"] != "test"]
    refs = M.read_manifest(os.path.join(M.EMBEDDED, "test_references.csv"))
    assert [(u.id, u.sentence) for u in refs] == [(c["id"], c["sentence"]) for c in clips if c["split"] == "test"]
    train_words = {w for c in clips if c["split"] == "train" for w in T.normalize_text(c["sentence"]).split()}
    unseen = [c for c in clips if not c["seen"]]
    assert len(unseen) == 22 and all(c["split"] != "train" for c in unseen)
    assert all(set(T.normalize_text(c["sentence"]).split()) <= train_words for c in unseen)

    def combo(c):  # voice, speed band, pitch band
        return c["voice"], c["speed"] // 14, (c["pitch"] - 25) // 10

    train_combos = {combo(c) for c in clips if c["split"] == "train"}
    assert not any(combo(c) in train_combos for c in clips if c["split"] != "train")  # held-out speakers


def test_error_rates_without_jiwer_match_jiwer(monkeypatch):
    refs = ["আমি ভাত খাই", "সে বাড়ি যায়", "", "a b c d"]
    hyps = ["আমি ভাত খাই না", "সে বাড়ি", "x", "a c d e"]
    with_jiwer = (T.wer(refs, hyps), T.cer(refs, hyps))
    monkeypatch.setitem(sys.modules, "jiwer", None)  # makes `import jiwer` fail
    assert (T.wer(refs, hyps), T.cer(refs, hyps)) == with_jiwer


@pytest.fixture
def bengali_normalizer():
    pytest.importorskip("bnunicodenormalizer")
    return T.Normalizer("bnunicodenormalizer")


BADLY_COMPOSED = [  # (as typed, as bnunicodenormalizer spells it): NFC alone leaves each as it was typed
    ("কিি", "কি"),                  # a vowel sign typed twice
    ("আ\u09cd\u09cd", "আ"),         # hasanta after a vowel, twice
    ("\u09beকা", "কা"),              # a vowel sign before any consonant
    ("কঁা", "কাঁ"),                  # candrabindu before the vowel sign it belongs after
    ("এ্যা", "অ্যা"),                # the ya-phala "æ" written on the wrong vowel
    ("ক\u09cd\u200c", "ক"),         # a hasanta and a zero-width non-joiner at the end
    ("সং\u09cd", "সং"),             # a hasanta after anusvara
]


def test_bnunicodenormalizer_mends_badly_composed_bengali(bengali_normalizer):
    bn = bengali_normalizer
    for typed, mended in BADLY_COMPOSED:
        assert unicodedata.normalize("NFC", typed) != mended
        assert T.normalize_text(typed, normalizer=bn) == mended, typed
    assert T.normalize_text("কথা hello ১২৩ 42", normalizer=bn) == "কথা hello ১২৩ 42"  # other scripts are kept as they are
    assert T.normalize_text("য়", normalizer=bn) == "য়"  # unlike NFC, which keeps য় as two code points
    assert T.normalize_text("কথা \u09be বলো", normalizer=bn) == "কথা বলো"  # a lone vowel sign is no word
    assert T.postprocess_bengali("কিি কথা", bn) == "কি কথা।"
    assert T.normalize_text("কিি") == unicodedata.normalize("NFC", "কিি")


def test_the_checkpoint_records_the_normalizer_and_infer_uses_it(tmp_path, monkeypatch):
    import infer
    from training import asr
    from training.config import ConfigError
    installed = T.bnunicodenormalizer_installed()
    assert asr.choose_normalizer(asr.ASRConfig(), None) == ("bnunicodenormalizer" if installed else "nfc")
    older = type("Saved", (), {"meta": {"config": {"preset": "tiny"}}})()  # a file from before the setting
    assert asr.choose_normalizer(asr.ASRConfig(normalizer="bnunicodenormalizer"), older) == "nfc"
    monkeypatch.setattr(T, "bnunicodenormalizer_installed", lambda: False)
    monkeypatch.setattr(asr, "bnunicodenormalizer_installed", lambda: False)
    with pytest.raises(ConfigError, match="which is not installed"):
        asr.choose_normalizer(asr.ASRConfig(normalizer="bnunicodenormalizer"), None)
    with pytest.raises(infer.InferError, match="which is not installed"):
        infer.use_training_normalizer({"config": {"normalizer": "bnunicodenormalizer"}})
    assert infer.use_training_normalizer({"config": {}}).name == "nfc"  # older files and exported folders: NFC
