"""Speech data for the `asr` task: manifests, 16 kHz audio, transcripts, the CTC vocabulary, batches,
metrics, and the task itself (its config `ASRConfig`, its data `ASRData`, and `build_asr`).

A manifest is a list of `Utterance`s (id, audio path, sentence, split) read from a CSV or a folder.
`AudioDataset` checks it once up front, drops what cannot be used and says how much in one line,
so a bad row in a million never stops a twelve-hour run. Each item is a whole clip decoded to
mono float32 at 16 kHz and normalised per utterance as wav2vec2 expects; `collate` pads a batch
and carries the true lengths with it. Transcripts are normalised (NFC, no punctuation) before
they become CTC labels through `CharVocab`, which reads and writes Hugging Face's vocab.json.

Checking a large manifest (reading it, a stat per clip) costs ~10 s at Bengali.AI's ~960k clips,
the same for every part of a run; `manifest_check` keeps the outcome in the run folder
(manifest_cache.npz) and later parts load it instead, to the same items in the same order.

Nothing here is random: augmentation, if any, belongs to the model, so the data a step sees
depends only on the sampler's order.
"""

import collections.abc
import csv
import dataclasses
import itertools
import json
import os
import shutil
import stat
import typing
import unicodedata
import zipfile
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
import xxhash
from tqdm import tqdm

import ckpt
import model as models
from data import DataError, held_out
from data.config import ConfigError, TrainConfig
from data.sampler import EpochSampler
from model.wav2vec2 import Wav2Vec2Config

SAMPLE_RATE = 16_000  # what every wav2vec2 checkpoint was trained on
SAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "samples")
EMBEDDED = os.path.join(SAMPLES, "bengali_speech")  # made by data/make_bengali_speech.py
EMBEDDED_TEST = os.path.join(EMBEDDED, "test_mp3s")  # its test clips, transcripts in test_references.csv
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg")
SENTENCE_END = ("।", "?", "!")  # the danda (U+0964) ends a Bengali statement

# ---------------------------------------------------------------------------------------------
# Manifests
# ---------------------------------------------------------------------------------------------


@dataclass
class Utterance:
    id: str
    path: str  # absolute path of the audio file
    sentence: str | None = None  # the transcript as written in the CSV (None for inference)
    split: str | None = None  # "train", "valid", ... when the CSV has a split column


def read_manifest(path="", require_text=True, split=None):
    """The utterances named by `path`; "" means the embedded Bengali sample.

    path may be
    - a CSV (or Common Voice style .tsv) with a `path` column: audio paths relative to the CSV's
      folder, or absolute; ids are the `id` column if there is one, else the file names' stems;
    - a CSV with an `id` column and no `path` (the Bengali.AI layout): the audio is
      `train_mp3s/{id}.mp3` beside the CSV when that folder exists, else `{id}.<ext>` next to it;
    - a folder holding `train.csv` (a Bengali.AI download): that CSV;
    - a folder of audio files, or one audio file (inference): every wav/flac/mp3/ogg in it,
      id = file stem, sorted by id.
    The transcript column is `sentence`, required when `require_text`. `split` keeps only the rows
    whose `split` column equals it; a CSV without that column is returned whole, every split None.
    """
    path = path or EMBEDDED
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "train.csv")):
            return read_manifest(os.path.join(path, "train.csv"), require_text, split)
        return _audio_folder(path, require_text)
    if not os.path.isfile(path):
        raise DataError(f"speech data {path} does not exist; give a CSV, a folder of audio or a Bengali.AI folder")
    if path.lower().endswith(AUDIO_SUFFIXES):
        if require_text:
            raise DataError(f"{path} is a single audio file with no transcript; training needs a CSV with a sentence column")
        return [Utterance(_stem(path), os.path.abspath(path))]
    return _read_csv(path, require_text, split)


def _stem(path):
    return os.path.splitext(os.path.basename(path))[0]


def _audio_folder(folder, require_text):
    names = sorted((_stem(n), n) for n in os.listdir(folder) if n.lower().endswith(AUDIO_SUFFIXES))
    if not names:
        raise DataError(f"folder {folder} has no train.csv and no audio files ({', '.join(AUDIO_SUFFIXES)})")
    if require_text:
        raise DataError(f"folder {folder} holds audio but no transcripts; training needs a CSV with a sentence "
                        f"column (or a Bengali.AI folder with train.csv)")
    return [Utterance(stem, os.path.abspath(os.path.join(folder, name))) for stem, name in names]


def _read_csv(path, require_text, split):
    return list(_read_columns(path, require_text, split))


def _read_rows(path):
    """(column names, rows as lists of str). csv.reader, not DictReader: a dict per row costs
    twice the time and memory on a million rows. Blank lines are skipped, as DictReader does."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: tolerate the BOM Excel writes
            reader = csv.reader(f, delimiter="\t" if path.lower().endswith(".tsv") else ",")
            columns = [c.strip() for c in next(reader, None) or []]
            rows = [row for row in reader if row]
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path} is not a UTF-8 CSV file ({e})") from None
    return columns, rows


def _read_columns(path, require_text, split):
    """The CSV's utterances as an `Utterances` of plain lists (see read_manifest for the layouts)."""
    folder = os.path.dirname(os.path.abspath(path))
    columns, rows = _read_rows(path)
    if not columns:
        raise DataError(f"{path} is empty; it needs a header row with id (or path) and sentence columns")
    if "path" not in columns and "id" not in columns:
        raise DataError(f"{path} has no 'path' or 'id' column (it has: {', '.join(columns)})")
    if require_text and "sentence" not in columns:
        raise DataError(f"{path} has no 'sentence' column (it has: {', '.join(columns)}); training needs transcripts")
    if not rows:
        raise DataError(f"{path} has a header but no rows")

    def column(name):  # stripped cells; a short row's missing cells are ""
        if name not in columns:
            return None
        j = columns.index(name)
        return [row[j].strip() if j < len(row) else "" for row in rows]

    splits = column("split")
    if split is not None and splits is not None:
        chosen = [s == split for s in splits]
        rows, splits = list(itertools.compress(rows, chosen)), list(itertools.compress(splits, chosen))
    ids, sentences = column("id"), column("sentence")
    if "path" in columns:  # plain layout: paths relative to the CSV's folder, or absolute
        names = column("path")
        ids = [id_ or _stem(name) for id_, name in zip(ids or [""] * len(names), names)]
    elif os.path.isdir(os.path.join(folder, "train_mp3s")):
        # The Bengali.AI layout; no listing of its ~960k names is needed.
        names = ["train_mp3s" + os.sep + id_ + ".mp3" for id_ in ids]
    else:  # Bengali.AI ids with the audio beside the CSV; a missing file is counted later
        beside = {_stem(n): n for n in os.listdir(folder) if n.lower().endswith(AUDIO_SUFFIXES)}
        names = [beside.get(id_, id_ + ".mp3") for id_ in ids]
        ids = [id_ or _stem(name) for id_, name in zip(ids, names)]
    empty = [""] * len(names)
    return Utterances(folder, {"id": ids, "name": names, "sentence": sentences, "split": splits or empty})


class Strings:
    """A column of strings packed into two arrays: the UTF-8 bytes of all of them end to end, and
    where each one starts (`offsets`, one more than there are strings).

    Why: a million str objects cost ~100 bytes each, and a DataLoader worker (a forked process)
    that merely reads them touches their reference counts, so the pages holding them are copied
    into every worker (copy-on-write). Two arrays are read without being written to, shared by all
    processes, and saved to a file as they are."""

    def __init__(self, data, offsets):
        self.data, self.offsets = data, offsets

    @classmethod
    def pack(cls, texts):
        encoded = [t.encode() for t in texts]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)), out=offsets[1:])
        return cls(np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets)

    def __len__(self):
        return len(self.offsets) - 1

    def __getitem__(self, i):
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        return self.data[self.offsets[i]:self.offsets[i + 1]].tobytes().decode()

    def subset(self, keep):
        """The strings where the boolean mask `keep` is True, in order (no Python loop)."""
        sizes = np.diff(self.offsets)
        offsets = np.zeros(int(keep.sum()) + 1, dtype=np.int64)
        np.cumsum(sizes[keep], out=offsets[1:])
        return Strings(self.data[np.repeat(keep, sizes)], offsets)


class Utterances(collections.abc.Sequence):
    """A manifest's utterances held as columns: id, name (the audio path relative to `folder`, or
    absolute), sentence and split ("" for none). Each column is a list of str while a manifest is
    read and checked, and a packed `Strings` once kept (`packed`). Indexing gives an `Utterance`."""

    COLUMNS = ("id", "name", "sentence", "split")

    def __init__(self, folder, columns):
        self.folder, self.columns = folder, columns

    def __len__(self):
        return len(self.columns["id"])

    def __getitem__(self, i):
        name, sentence = self.columns["name"][i], self.columns["sentence"]
        return Utterance(self.columns["id"][i], os.path.join(self.folder, name) if name else "",
                         None if sentence is None else sentence[i], self.columns["split"][i] or None)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def paths(self):
        """Every audio path, as a list (one string concatenation each: a million joins cost ~1 s)."""
        prefix = os.path.join(self.folder, "")
        return [name if not name or os.path.isabs(name) else prefix + name for name in self.columns["name"]]

    def column(self, name):
        values = self.columns[name]
        return values if isinstance(values, list) else [values[i] for i in range(len(values))]

    def subset(self, keep):
        """The utterances where the boolean mask `keep` is True, in order."""
        def subset(values):
            if values is None or isinstance(values, Strings):
                return values if values is None else values.subset(keep)
            return list(itertools.compress(values, keep))
        return Utterances(self.folder, {name: subset(values) for name, values in self.columns.items()})

    def packed(self):
        return Utterances(self.folder, {name: Strings.pack(values) if isinstance(values, list) else values
                                        for name, values in self.columns.items()})


# ---------------------------------------------------------------------------------------------
# Audio
# ---------------------------------------------------------------------------------------------


def load_audio(path):
    """A clip as a (S,) float32 tensor: mono, 16 kHz, zero mean and unit variance.

    Channels are averaged; other rates are resampled (windowed sinc, torchaudio). The per-utterance
    normalisation is Wav2Vec2FeatureExtractor's (x - mean) / sqrt(var + 1e-7), so pretrained
    checkpoints see the input statistics they were trained on.
    """
    try:
        data, rate = sf.read(path, dtype="float32", always_2d=True)  # (S, C)
    except (RuntimeError, OSError, ValueError, TypeError) as e:  # LibsndfileError is a RuntimeError
        raise DataError(f"cannot decode audio file {path} ({getattr(e, 'error_string', e)})") from None
    if data.shape[0] == 0:
        raise DataError(f"audio file {path} has no samples")
    if not np.isfinite(data).all():  # a float WAV can hold NaN: one such clip would poison every epoch
        raise DataError(f"audio file {path} holds NaN or infinite samples")
    audio = data.mean(axis=1)  # (S, C) -> (S,)
    if rate != SAMPLE_RATE:
        audio = AF.resample(torch.from_numpy(audio), rate, SAMPLE_RATE).numpy()
    # NumPy, not torch, for the arithmetic: on a few-second clip torch's thread pool costs more
    # than the work (measured 9 ms vs 1 ms per clip on 2 busy cores).
    audio = (audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)
    return torch.from_numpy(audio.astype(np.float32, copy=False))


def audio_seconds(path):
    """Duration from the file's header (for MP3 the Xing/LAME header: no decoding)."""
    try:
        return sf.info(path).duration
    except (RuntimeError, OSError, ValueError, TypeError) as e:
        raise DataError(f"cannot read the header of audio file {path} ({getattr(e, 'error_string', e)})") from None


# ---------------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------------


def normalize_text(text, keep=None):
    """A transcript as the model should learn it: NFC, no punctuation, single spaces.

    NFC first, so one spelling has one code-point sequence (Bengali য় ড় ঢ় are composition
    exclusions: NFC always gives the two code points য + ়, whichever way they were typed).
    Punctuation (Unicode category P: danda, ?, !, commas, quotes, hyphens) becomes a space, so
    "হ্যাঁ,এক" stays two words; characters in `keep` survive. Apostrophes are deleted instead
    ("don't" -> "dont"). Invisible format characters (zero-width joiner and non-joiner, BOM) are
    dropped: they change how a word is drawn, not how it sounds. Case is kept.
    """
    keep = frozenset(keep or ())
    table = _TABLES.get(keep)
    if table is None:
        table = _TABLES[keep] = _Translation(keep)
    return " ".join(unicodedata.normalize("NFC", text).translate(table).split())


class _Translation(dict):
    """normalize_text's str.translate table (code point -> replacement), filled in as characters
    are first met: translate runs in C, where a loop over characters costs ~3x more (Bengali.AI's
    ~960k sentences are normalised in ~2 s instead of ~6 s)."""

    def __init__(self, keep):
        super().__init__()
        self.keep = keep

    def __missing__(self, code):
        c = chr(code)
        category = unicodedata.category(c)
        if c in self.keep:
            out = c
        elif c in "'’" or category == "Cf":
            out = ""
        elif category[0] == "P":
            out = " "
        else:
            out = c
        self[code] = out
        return out


_TABLES = {}  # frozenset(keep) -> its _Translation


PAD, BOS, EOS, UNK, DELIM = "<pad>", "<s>", "</s>", "<unk>", "|"


def write_hf_processor(folder, layer_norm_features):
    """The files beside vocab.json that make `transformers.pipeline("automatic-speech-recognition")`
    open an exported folder: the feature extractor does what load_audio does (16 kHz mono, then
    (x - mean) / sqrt(var + 1e-7) per clip), and the tokenizer decodes CTC as decode_greedy does
    (repeats collapsed, <pad> as the blank, "|" as the space). One difference stays: for CTC the
    pipeline keeps special tokens ("<unk>") in its text, where Baton drops them; a trained model
    does not emit them (they are never in its targets)."""
    files = {
        # Hugging Face passes an attention mask only to models whose feature encoder uses layer norm
        # (the large checkpoints); the group-norm ones are given zero-padded audio without it.
        "preprocessor_config.json": {
            "feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1, "sampling_rate": SAMPLE_RATE,
            "padding_value": 0.0, "padding_side": "right", "do_normalize": True,
            "return_attention_mask": layer_norm_features, "processor_class": "Wav2Vec2Processor"},
        "tokenizer_config.json": {
            "tokenizer_class": "Wav2Vec2CTCTokenizer", "pad_token": PAD, "unk_token": UNK, "bos_token": BOS,
            "eos_token": EOS, "word_delimiter_token": DELIM, "replace_word_delimiter_char": " ",
            "do_lower_case": False, "processor_class": "Wav2Vec2Processor"},
        "special_tokens_map.json": {"pad_token": PAD, "unk_token": UNK, "bos_token": BOS, "eos_token": EOS},
    }
    for name, content in files.items():
        with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
            json.dump(content, f, indent=2)


class CharVocab:
    """Characters <-> CTC label ids, with Hugging Face's vocab.json conventions.

    "<pad>" is id 0 and doubles as the CTC blank (transformers passes pad_token_id as the blank);
    "|" stands for the space between words. "<s>" and "</s>" are never predicted but are kept so
    that Wav2Vec2CTCTokenizer opens our vocab.json without adding tokens. Vocabularies written the
    other common way ("[PAD]", "[UNK]" at the end) are read too. Punctuation characters in the
    vocabulary are kept by `encode`'s normalisation, so a vocab built with `keep="।?!"` stays
    consistent after a round trip through vocab.json.
    """

    def __init__(self, token_to_id):
        self.token_to_id = {str(t): int(i) for t, i in token_to_id.items()}
        self.id_to_token = {i: t for t, i in self.token_to_id.items()}
        if len(self.id_to_token) != len(self.token_to_id):
            raise DataError("the vocabulary gives two tokens the same id; check vocab.json")
        pad = next((t for t in (PAD, "[PAD]") if t in self.token_to_id), None)
        unk = next((t for t in (UNK, "[UNK]") if t in self.token_to_id), None)
        if pad is None or unk is None or DELIM not in self.token_to_id:
            raise DataError(f"a CTC vocabulary needs {PAD} (or [PAD]), {UNK} (or [UNK]) and {DELIM}; check vocab.json")
        self.pad_id, self.unk_id = self.token_to_id[pad], self.token_to_id[unk]
        self.special_ids = {self.token_to_id[t] for t in (pad, unk, BOS, EOS) if t in self.token_to_id}
        self.keep = {t for t in self.token_to_id if len(t) == 1 and unicodedata.category(t)[0] == "P"}

    @classmethod
    def build(cls, sentences, keep=None):
        """The vocabulary of the normalised sentences: specials, then characters in code-point order."""
        return cls.of_texts(normalize_text(s or "", keep) for s in sentences)

    @classmethod
    def of_texts(cls, texts):
        """`build` for texts normalised already."""
        chars = set("".join(texts)) - {" ", DELIM}
        tokens = [PAD, BOS, EOS, UNK, DELIM] + sorted(chars)
        return cls({t: i for i, t in enumerate(tokens)})

    @classmethod
    def from_dict(cls, token_to_id):
        return cls(token_to_id)

    def to_dict(self):
        """The vocab.json content: token -> id, in id order."""
        return dict(sorted(self.token_to_id.items(), key=lambda kv: kv[1]))

    def __len__(self):
        return len(self.token_to_id)

    def encode(self, text):
        """Label ids of the normalised text; characters the vocabulary lacks become <unk>."""
        text = normalize_text(text, self.keep)
        return [self.token_to_id.get(DELIM if c == " " else c, self.unk_id) for c in text]

    def decode(self, ids):
        """Label ids back to text, one token per id (for labels; model output needs decode_ctc)."""
        return self._join(int(i) for i in _as_list(ids) if int(i) not in self.special_ids)

    def decode_ctc(self, ids):
        """Greedy CTC decoding of per-frame argmax ids: merge repeats, then drop blanks.

        The order matters: "a <blank> a" is two a's, "a a" is one. Other special tokens are dropped
        too (an <unk> in a submission would only add an error). Spaces are kept as the model gave
        them, as transformers' Wav2Vec2CTCTokenizer does ("| <blank> |" is two), stripped at the
        ends; post-processing (postprocess_bengali, normalize_text) makes them single.
        """
        kept, previous = [], None
        for i in _as_list(ids):
            i = int(i)
            if i != previous and i not in self.special_ids:
                kept.append(i)
            previous = i
        return "".join(" " if self.id_to_token.get(i) == DELIM else self.id_to_token.get(i, "") for i in kept).strip()

    def decode_greedy(self, logits, frames):
        """Best path decoding of a batch: logits (B, T, V), frames (B,) real frames -> B strings."""
        best_ids = logits.argmax(dim=-1).cpu()  # (B, T)
        return [self.decode_ctc(best_ids[row, : int(frames[row])].tolist()) for row in range(len(best_ids))]

    def _join(self, ids):
        text = "".join(" " if self.id_to_token.get(i) == DELIM else self.id_to_token.get(i, "") for i in ids)
        return " ".join(text.split())


def _as_list(ids):
    return ids.tolist() if hasattr(ids, "tolist") else list(ids)


def sentences_of(path):
    """The normalised sentences of a text file (one a line) or of a manifest's `sentence` column
    (its training rows only, when it has a `split` column): what a decoding LM is built from."""
    if path.lower().endswith((".csv", ".tsv")):
        columns, rows = _read_rows(path)
        if "sentence" not in columns:
            raise DataError(f"{path} has no 'sentence' column to build a language model from")
        rows = [dict(itertools.zip_longest(columns, row)) for row in rows]  # a short row's cells: None
        texts = [row.get("sentence") or "" for row in rows if row.get("split", "train") in ("train", "")]
    else:
        with open(path, encoding="utf-8") as f:
            texts = f.read().splitlines()
    return [normalize_text(t) for t in texts]


def postprocess_bengali(text):
    """A prediction as submission.csv wants it: NFC, single spaces, ending in a danda unless it ends in ।, ? or !."""
    text = " ".join(unicodedata.normalize("NFC", text).split())
    if text and not text.endswith(SENTENCE_END):
        text += "।"
    return text


# ---------------------------------------------------------------------------------------------
# Dataset and batches
# ---------------------------------------------------------------------------------------------


HEADER_LIMIT = 20_000  # above this many clips, lengths are estimated from file sizes (AudioDataset)


class AudioDataset(torch.utils.data.Dataset):
    """Utterances checked once, then served as {"audio", "labels", "id", "bad"} items.

    At construction every clip is checked (no sentence left after normalisation when a vocab is
    given, file missing, header unreadable, longer than max_seconds); failures are dropped and
    counted in `self.report`. `self.items` are the kept utterances and `self.lengths` their lengths
    in 16 kHz samples (for length-grouped batches). `texts`, if given, are the sentences normalised
    with the vocab's `keep` already (ASRData has them: it built the vocabulary from them).

    Reading every header costs ~0.15 ms per MP3 with a warm page cache, so a few minutes for the
    ~960k clips of Bengali.AI, and much more on a cold network disk. Above `header_limit` clips
    only the file sizes are read (one stat each) and lengths are estimated from bytes per second
    measured on the headers of the first 32 files of each format: exact for constant-bitrate MP3,
    close for the rest. Such a manifest can still hold unreadable files; those come back from
    __getitem__ with `bad` set, and `collate` drops them, so training goes on.

    Even one stat per clip is ~10 s at a million clips on a network disk, so the outcome of the
    check (kept items, lengths, report) is what ASRData keeps in its manifest cache for later
    parts, which build the dataset with `AudioDataset.checked` and touch no file.

    cache=True decodes every clip once here and keeps it in memory (the embedded sample is 47 MB
    decoded); lengths are then exact and an undecodable file is counted as unreadable up front.
    """

    def __init__(self, utterances, vocab=None, max_seconds=None, cache=False, header_limit=HEADER_LIMIT, texts=None):
        is_columns = isinstance(utterances, Utterances)
        paths = utterances.paths() if is_columns else [u.path for u in utterances]
        if vocab is not None and texts is None:
            sentences = utterances.column("sentence") if is_columns else [u.sentence for u in utterances]
            texts = [normalize_text(s or "", vocab.keep) for s in sentences]
        estimated = len(paths) > header_limit and not cache
        counts = {"missing files": 0, "unreadable": 0, "empty sentences": 0}
        sizes = _file_sizes(paths, texts if vocab is not None else None, counts)
        kept, lengths, audio, too_long = _clip_lengths(paths, sizes, max_seconds, cache, estimated, counts)
        items = utterances.subset(kept) if is_columns else list(itertools.compress(utterances, kept))
        parts = [f"{n} {what}" for what, n in counts.items()]
        if max_seconds is not None:
            parts.append(f"{too_long} longer than {max_seconds:g} s")
        hours = sum(lengths) / SAMPLE_RATE / 3600
        report = (f"kept {len(items)} of {len(paths)} clips ({hours:.2f} h"
                  f"{', lengths estimated from file sizes' if estimated else ''}): {', '.join(parts)}")
        self._adopt(items, lengths, report, vocab, max_seconds, estimated, audio)

    @classmethod
    def checked(cls, items, lengths, report, vocab=None, max_seconds=None, estimated=False, audio=None):
        """A dataset of clips checked before (by an earlier part: ASRData's manifest cache), taken as they are."""
        dataset = cls.__new__(cls)
        dataset._adopt(items, list(lengths), report, vocab, max_seconds, estimated, audio)
        return dataset

    def _adopt(self, items, lengths, report, vocab, max_seconds, estimated, audio):
        self.items, self.lengths, self.report = items, lengths, report
        self.vocab, self.max_seconds, self.estimated = vocab, max_seconds, estimated
        self._audio = audio  # decoded clips, parallel to self.items (cache=True), else None

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        u = self.items[i]
        item = {"audio": None, "labels": None, "id": u.id, "bad": None}
        if self._audio is not None:
            audio = self._audio[i]
        else:
            try:
                audio = load_audio(u.path)
            except DataError:  # a file that went bad after the check: flag it, collate drops it
                item["bad"] = "unreadable"
                return item
            if self.max_seconds is not None and len(audio) > self.max_seconds * SAMPLE_RATE:
                item["bad"] = "too long"  # only when an estimate (or a header) was wrong
                return item
        item["audio"] = audio
        if self.vocab is not None:
            item["labels"] = torch.tensor(self.vocab.encode(u.sentence), dtype=torch.long)
        return item


def _file_sizes(paths, texts, counts):
    """Each clip's file size, or -1 where it is dropped: its normalised sentence (`texts`, when
    given) is empty, or its file is missing. One stat per clip gives both existence and size."""
    sizes = [-1] * len(paths)
    for i, path in enumerate(paths):
        if texts is not None and not texts[i]:
            counts["empty sentences"] += 1
            continue
        try:
            st = os.stat(path)
        except OSError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode):
            counts["missing files"] += 1
            continue
        sizes[i] = st.st_size
    return sizes


def _clip_lengths(paths, sizes, max_seconds, decode, estimated, counts):
    """(kept mask, lengths in samples, decoded clips or None, clips too long) of the clips with a
    file (sizes >= 0): decoded (`decode`), estimated from sizes (`estimated`), or from headers."""
    candidates = [i for i, size in enumerate(sizes) if size >= 0]
    suffixes = [_suffix(path) if size >= 0 else "" for path, size in zip(paths, sizes)] if estimated else None
    bytes_per_second = _bytes_per_second(candidates, paths, sizes, suffixes) if estimated else None
    kept = np.zeros(len(paths), dtype=bool)
    lengths, audio, too_long = [], [] if decode else None, 0
    for i in candidates:
        clip = None
        try:
            if decode:
                clip = load_audio(paths[i])
                length = len(clip)
            elif estimated:
                length = round(sizes[i] / bytes_per_second[suffixes[i]] * SAMPLE_RATE)
            else:
                length = round(audio_seconds(paths[i]) * SAMPLE_RATE)
        except DataError:
            length = 0
        if length <= 0:
            counts["unreadable"] += 1
            continue
        if max_seconds is not None and length > max_seconds * SAMPLE_RATE:
            too_long += 1
            continue
        kept[i] = True
        lengths.append(length)
        if decode:
            audio.append(clip)
    return kept, lengths, audio, too_long


def _suffix(path):
    return os.path.splitext(path)[1].lower()


def _bytes_per_second(candidates, paths, sizes, suffixes, probe=32):
    """File bytes per second of audio for each file suffix, from the headers of its first `probe` files."""
    tried, nbytes, seconds = {}, {}, {}
    for i in candidates:
        suffix = suffixes[i]
        if tried.get(suffix, 0) >= probe:
            continue
        tried[suffix] = tried.get(suffix, 0) + 1
        try:
            seconds[suffix] = seconds.get(suffix, 0.0) + audio_seconds(paths[i])
            nbytes[suffix] = nbytes.get(suffix, 0) + sizes[i]
        except DataError:
            continue
    # A format with no readable probe gets a guess: lengths stay ordered by size, which is all
    # length grouping needs.
    return {suffix: nbytes[suffix] / seconds[suffix] if seconds.get(suffix) else 16_000.0 for suffix in tried}


def collate(items):
    """Pads a list of items into a batch; items flagged bad are left out (their ids in "dropped").

    input_values (B, S_max) float32, zero-padded; attention_mask (B, S_max) bool, True on real
    samples; input_lengths (B,). labels (B, L_max) padded with 0 (which is also the blank: the CTC
    loss reads only the first label_lengths[b] of row b); label_lengths (B,). labels and
    label_lengths are None when the items have no labels (inference). B can be 0 if every item
    was bad.
    """
    good = [it for it in items if it["bad"] is None]
    lengths = torch.tensor([len(it["audio"]) for it in good], dtype=torch.long)
    input_values = torch.zeros(len(good), int(lengths.max()) if good else 0)
    for b, it in enumerate(good):
        input_values[b, : len(it["audio"])] = it["audio"]
    attention_mask = torch.arange(input_values.shape[1])[None, :] < lengths[:, None]  # (B, S_max)
    batch = {"input_values": input_values, "attention_mask": attention_mask, "input_lengths": lengths,
             "labels": None, "label_lengths": None, "ids": [it["id"] for it in good],
             "dropped": [it["id"] for it in items if it["bad"] is not None]}
    if good and all(it["labels"] is not None for it in good):
        label_lengths = torch.tensor([len(it["labels"]) for it in good], dtype=torch.long)
        labels = torch.zeros(len(good), int(label_lengths.max()), dtype=torch.long)
        for b, it in enumerate(good):
            labels[b, : len(it["labels"])] = it["labels"]
        batch["labels"], batch["label_lengths"] = labels, label_lengths
    return batch


class ASRData:
    """The asr task's data: a manifest split into training clips (decoded by DataLoader workers, or
    kept decoded in memory when the set is small) and a fixed validation subset of at most
    `eval_max_clips`; the validation CTC loss with greedy WER and CER.

    The split is the manifest's `split` column, or a hash of each id (`val_fraction`). The
    vocabulary is the checkpoint's when resuming (label ids keep their meaning), else built from
    the training transcripts.

    What it is built from is a `ManifestCheck`: the usable training clips with their lengths, the
    validation subset, the vocabulary and the fingerprint. Making one reads the whole CSV and
    stats every file (~10 s or far more at Bengali.AI's ~960k clips), and it depends only on the
    CSV and a few settings, so a run keeps it beside its checkpoints (see `manifest_check`) and a
    later part loads it in a fraction of a second. Either way the same check gives the same data
    object: the same items, lengths and therefore the same batches."""

    best_metric = "wer"  # picks best_model.safetensors (lower is better)

    def __init__(self, check, cfg, device, rank=0, world=1):
        self.vocab = check.vocab
        self.train = AudioDataset.checked(check.train, check.lengths, check.report, self.vocab,
                                          max_seconds=cfg.max_seconds, estimated=check.estimated, audio=check.audio)
        self.val = AudioDataset(check.val, self.vocab, cache=True)  # <= eval_max_clips clips: cheap to check again
        self.device, self.batch_size, self.num_workers = device, cfg.batch_size, cfg.num_workers
        # This rank's share of the validation clips, in batches of similar length (they pad less).
        self.val_by_length = sorted(range(len(self.val)), key=lambda i: self.val.lengths[i])[rank::world]
        self.references = [normalize_text(item.sentence) for item in self.val.items]
        self.fingerprint = check.fingerprint
        self.sampler = EpochSampler(len(self.train), cfg.batch_size, cfg.seed, shuffle=True,
                                    lengths=np.asarray(self.train.lengths), rank=rank, world_size=world)
        self.meta = {"vocab": self.vocab.to_dict()}

    def batches(self, index_batches, epoch):
        # The loader gets its own generator: creating an iterator otherwise draws a seed from the
        # global torch RNG, and a resumed run creates one more iterator than an uninterrupted one.
        loader = torch.utils.data.DataLoader(self.train, batch_sampler=index_batches, num_workers=self.num_workers,
                                             collate_fn=collate, pin_memory=self.device.type == "cuda",
                                             generator=torch.Generator())
        for batch in loader:
            count = int(batch["label_lengths"].sum()) if batch["label_lengths"] is not None else 0
            yield self.model_inputs(batch), count  # count 0: every clip of this micro-batch was unreadable

    def model_inputs(self, batch):
        """What Wav2Vec2ForCTC's forward takes from a collated batch, on the device."""
        return {k: batch[k].to(self.device, non_blocking=True) if batch[k] is not None else None
                for k in ("input_values", "attention_mask", "labels", "label_lengths")}

    @torch.no_grad()
    def evaluate(self, model, keep_going):
        hypotheses, total, labels = {}, 0.0, 0
        for start in range(0, len(self.val_by_length), self.batch_size):
            if not keep_going():
                return None
            rows = self.val_by_length[start:start + self.batch_size]
            batch = collate([self.val[i] for i in rows])
            (logits, frames), loss_sum = model(**self.model_inputs(batch))
            total += loss_sum.item()
            labels += int(batch["label_lengths"].sum())
            hypotheses.update(zip(rows, self.vocab.decode_greedy(logits, frames)))
        for i in sorted(hypotheses)[:2]:
            tqdm.write(f"  ref: {self.references[i]}\n  hyp: {hypotheses[i]}")
        refs, hyps = [self.references[i] for i in hypotheses], [" ".join(h.split()) for h in hypotheses.values()]
        word_errors, words = error_counts(refs, hyps, words=True)
        char_errors, chars = error_counts(refs, hyps, words=False)
        return {"loss": total, "labels": labels, "word_errors": word_errors, "words": words,
                "char_errors": char_errors, "chars": chars}

    @staticmethod
    def summarize(sums):
        return {"val_loss": sums["loss"] / max(sums["labels"], 1),
                "wer": error_rate(sums["word_errors"], sums["words"]),
                "cer": error_rate(sums["char_errors"], sums["chars"])}


@dataclasses.dataclass
class ASRConfig(TrainConfig):
    """The asr task: a wav2vec2 encoder + CTC head on speech, scored by WER and CER.

    `--set preset=NAME` first sets the fields in PRESETS[NAME] (the other --set values win), and
    picks the architecture when no `pretrained` folder is given.
    """
    PRESETS: typing.ClassVar[dict] = {
        # learns from scratch on a CPU: the defaults below
        "tiny": dict(epochs=40, batch_size=8, grad_accum=1, lr=2e-3, warmup_steps=150, freeze_feature_encoder=False,
                     grad_checkpointing=False, num_workers=0, mask_time_prob=0.05, layerdrop=0.0),
        # wav2vec2-base fine-tuning on one GPU
        "base": dict(epochs=30, batch_size=8, grad_accum=2, lr=1e-4, warmup_steps=500, freeze_feature_encoder=True,
                     grad_checkpointing=False, num_workers=2, mask_time_prob=0.05, layerdrop=0.05),
        # wav2vec2-large-xlsr-53 on a 16 GB P100/T4 as in the seeds: batch 1 x accumulation 8,
        # gradient checkpointing, fp16 (the default on those GPUs), frozen feature encoder, 70
        # epochs then 7 at 5e-6. A full checkpoint is ~3.8 GB (weights + AdamW moments), so one
        # rolling file is kept: Kaggle saves at most 20 GB of output.
        "xlsr53": dict(epochs=70, phase2_epochs=7, phase2_lr=5e-6, batch_size=1, grad_accum=8, lr=1e-4,
                       warmup_steps=500, freeze_feature_encoder=True, grad_checkpointing=True, num_workers=2,
                       mask_time_prob=0.05, layerdrop=0.1, keep_last=1, save_every_minutes=60, save_every_steps=0),
    }
    preset: str = "tiny"            # architecture + training defaults: tiny (CPU), base, xlsr53
    pretrained: str = ""            # a Hugging Face wav2vec2 folder (config.json + model.safetensors) to fine-tune
    epochs: int = 40
    batch_size: int = 8
    lr: float = 2e-3
    warmup_steps: int = 150
    eval_every_steps: int = 100
    save_every_steps: int = 200
    max_seconds: float = 15.0       # longer training clips are dropped (and counted)
    val_fraction: float = 0.1       # held out by id when the manifest has no split column
    eval_max_clips: int = 200       # validation clips per evaluation (evenly spread)
    freeze_feature_encoder: bool = False  # keep the pretrained conv stack fixed (saves memory, standard for fine-tuning)
    num_workers: int = 0            # audio decoding processes (0 = in the training process)
    mask_time_prob: float = 0.05    # SpecAugment: share of frames masked in training
    mask_feature_prob: float = 0.0  # SpecAugment: share of channels masked in training
    layerdrop: float = 0.0          # probability of skipping a whole transformer layer in training
    hidden_dropout: float = 0.1     # dropout in the transformer (attention output, feed-forward)

    def __post_init__(self):
        super().__post_init__()
        if self.preset not in self.PRESETS:
            raise ConfigError(f"unknown asr preset {self.preset!r}; choose one of {', '.join(self.PRESETS)}")
        if self.max_seconds <= 0 or self.eval_max_clips < 1 or self.num_workers < 0:
            raise ConfigError("max_seconds and eval_max_clips must be positive, num_workers 0 or more")


def build_asr(cfg, device, rank=0, world=1, saved=None, workdir=None):
    """(model, data) of the asr task; `saved` is the checkpoint a run resumes from, or None;
    `workdir` the run's folder, where the manifest check is kept for later parts (None: not kept)."""
    # On resume, the checkpoint's vocabulary, so label ids keep their meaning.
    vocab = CharVocab.from_dict(saved.meta["task_meta"]["vocab"]) if saved else None
    check = manifest_check(cfg, vocab, workdir, saved, rank)
    data = ASRData(check, cfg, device, rank, world)
    print(f"data: train: {data.train.report}\n      valid: {data.val.report}\n      vocabulary: {len(data.vocab)} symbols")
    if len(data.train) == 0 or len(data.val) == 0:
        raise DataError("no usable clips left after dropping the bad ones (see the counts above)")
    arch = {"tiny": "tiny", "base": "base", "xlsr53": "large"}[cfg.preset]
    model = models.pretrained_or_fresh("asr", cfg.pretrained, saved, Wav2Vec2Config.preset(arch, vocab_size=len(data.vocab)),
                                       {"vocab_size": len(data.vocab)}, mask_time_prob=cfg.mask_time_prob,
                                       mask_feature_prob=cfg.mask_feature_prob, layerdrop=cfg.layerdrop,
                                       hidden_dropout=cfg.hidden_dropout)
    if cfg.freeze_feature_encoder:
        model.freeze_feature_encoder()
    return model, data


# ---------------------------------------------------------------------------------------------
# The manifest check, and its cache
#
# A part of a run reads the manifest, splits it, builds the vocabulary and checks every clip.
# At Bengali.AI's ~960k rows that was most of the 20-35 s before a part's first step, and every
# part did it again for the same answer. The answer depends only on the CSV's bytes and the
# settings below (`_cache_key`), so rank 0 writes it to CACHE_NAME in the run folder, and a later
# part that finds it (in its own folder, or beside the checkpoint it resumes: on Kaggle part 2's
# output folder starts empty and part 1's output is attached read-only elsewhere) loads it
# instead. The audio files are assumed unchanged; one that went bad since is still caught when
# it is loaded (__getitem__ flags it, collate drops it).
#
# The format is NumPy's .npz (a zip of .npy arrays, read with allow_pickle=False, so loading it
# runs no code): the packed string columns of the kept training clips and of the validation
# subset, their lengths, and a JSON header (the key, vocabulary, report, fingerprint). The zip's
# CRC-32s catch a damaged file; a damaged or stale cache is said in one line and made again.
# ---------------------------------------------------------------------------------------------

CACHE_NAME = "manifest_cache.npz"  # not .safetensors/.pt/.pth: checkpoint discovery skips it
CACHE_FORMAT = 1  # raise when what is cached, or how the check decides, changes
IN_MEMORY_CLIPS = 2_000  # manifests up to this size are decoded into memory; no cache (nothing to save)


@dataclass
class ManifestCheck:
    """What checking a manifest found: everything ASRData needs that depends only on the data."""
    vocab: CharVocab
    train: Utterances  # the usable training clips, packed
    lengths: list      # their lengths in samples
    report: str        # what was kept and dropped, as AudioDataset words it
    estimated: bool    # lengths from file sizes
    val: Utterances    # the validation subset, before its own (cheap) check
    fingerprint: str   # of the training ids and sentences, stored in checkpoints
    audio: list = None  # decoded training clips when the manifest is small (never cached)


def check_manifest(csv_path, cfg, vocab=None):
    """The costly path: read the whole manifest, split it, build the vocabulary unless given, check every clip."""
    manifest = _read_columns(csv_path, require_text=True, split=None)
    splits = manifest.column("split")
    if any(splits):
        train_mask = np.array([s in ("", "train") for s in splits], dtype=bool)
        val_mask = np.array([s in ("valid", "validation", "val", "dev") for s in splits], dtype=bool)
    else:
        val_mask = held_out(manifest.column("id"), cfg.val_fraction)
        train_mask = ~val_mask
    if not train_mask.any() or not val_mask.any():
        raise DataError(f"{cfg.data or 'the embedded sample'} gives {int(train_mask.sum())} training and "
                        f"{int(val_mask.sum())} validation clips; both are needed")
    train = manifest.subset(train_mask)
    # Normalised once, for both the vocabulary and the empty-sentence check (a vocabulary built
    # here keeps no punctuation, so both want the same text).
    texts = [normalize_text(s, vocab.keep if vocab else None) for s in train.column("sentence")]
    vocab = vocab or CharVocab.of_texts(texts)
    small = len(manifest) <= IN_MEMORY_CLIPS
    clips = AudioDataset(train, vocab, max_seconds=cfg.max_seconds, cache=small, header_limit=HEADER_LIMIT, texts=texts)
    # A fixed, evenly spread validation subset.
    val_rows = np.flatnonzero(val_mask)
    chosen = np.zeros(len(manifest), dtype=bool)
    chosen[val_rows[::max(1, len(val_rows) // cfg.eval_max_clips)][:cfg.eval_max_clips]] = True
    kept = clips.items
    fingerprint = xxhash.xxh3_64("\n".join(f"{i}\t{s}" for i, s in zip(kept.column("id"), kept.column("sentence")))
                                 .encode()).hexdigest()
    return ManifestCheck(vocab, kept.packed(), clips.lengths, clips.report, clips.estimated,
                         manifest.subset(chosen).packed(), fingerprint, clips._audio)


def training_csv(path):
    """The CSV a training manifest comes from, by read_manifest's rules (other inputs get its errors)."""
    path = path or EMBEDDED
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "train.csv")):
        return os.path.join(path, "train.csv")
    if os.path.isfile(path) and not path.lower().endswith(AUDIO_SUFFIXES):
        return path
    read_manifest(path)  # raises why this is no training manifest
    raise DataError(f"{path} is not a training manifest; give a CSV or a Bengali.AI folder")


def manifest_check(cfg, vocab=None, workdir=None, saved=None, rank=0):
    """The manifest's check: loaded from a cache that fits (in `workdir`, else beside the
    checkpoint `saved`), or made (and cached in `workdir` by rank 0)."""
    csv_path = training_csv(cfg.data)
    if workdir is None:
        return check_manifest(csv_path, cfg, vocab)
    key = _cache_key(csv_path, cfg)
    mine = os.path.join(workdir, CACHE_NAME)
    places = [mine] + ([os.path.join(os.path.dirname(os.path.abspath(saved.path)), CACHE_NAME)]
                       if getattr(saved, "path", None) else [])
    for path in dict.fromkeys(os.path.realpath(p) for p in places if os.path.isfile(p)):
        found, problem = _usable_cache(path, key, vocab, os.path.dirname(os.path.abspath(csv_path)))
        if found is not None:
            print(f"data: the manifest check of an earlier part is reused ({path}): no clip is checked again")
            if rank == 0 and path != os.path.realpath(mine):  # so the next part finds it beside this part's checkpoints
                _write_atomic(mine, lambda f: _copy_into(path, f))
            return found
        print(f"data: {problem} ({path}); it is checked again")
        if rank == 0 and path == os.path.realpath(mine):
            _remove(mine)
    check = check_manifest(csv_path, cfg, vocab)
    if rank == 0 and check.audio is None:
        _write_atomic(mine, lambda f: _save_check(f, check, key))
    return check


def _cache_key(csv_path, cfg):
    """What the check depends on besides the vocabulary: the CSV's bytes and the settings that decide what is kept."""
    digest = xxhash.xxh3_64()
    with open(csv_path, "rb") as f:  # ~0.05 s for Bengali.AI's 100 MB train.csv
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return {"format": CACHE_FORMAT, "manifest": f"{os.path.getsize(csv_path)} bytes, xxh3 {digest.hexdigest()}",
            "max_seconds": cfg.max_seconds, "val_fraction": cfg.val_fraction, "eval_max_clips": cfg.eval_max_clips,
            "header_limit": HEADER_LIMIT, "in_memory_clips": IN_MEMORY_CLIPS}


def _usable_cache(path, key, vocab, folder):
    """(the cached check, None) when the cache at `path` reads and fits; else (None, why not)."""
    try:
        check, cached_key = _load_check(path, folder)
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile, DataError) as e:
        return None, f"the manifest cache is damaged ({type(e).__name__}: {e})"
    if cached_key.get("manifest") != key["manifest"]:
        return None, "the manifest changed since the cache was made"
    changed = [k for k in key if cached_key.get(k) != key[k]]
    if changed:
        return None, f"{', '.join(changed)} changed since the manifest cache was made"
    if vocab is not None and vocab.to_dict() != check.vocab.to_dict():
        return None, "the checkpoint's vocabulary is not the one the manifest cache was made with"
    return check, None


def _save_check(f, check, key):
    header = {"key": key, "vocab": check.vocab.to_dict(), "report": check.report, "estimated": check.estimated,
              "fingerprint": check.fingerprint}
    arrays = {"header": np.frombuffer(json.dumps(header, ensure_ascii=False).encode(), dtype=np.uint8),
              "train.lengths": np.asarray(check.lengths, dtype=np.int64)}
    for part, utterances in (("train", check.train), ("val", check.val)):
        for name in Utterances.COLUMNS:
            strings = utterances.columns[name]
            arrays[f"{part}.{name}.data"], arrays[f"{part}.{name}.offsets"] = strings.data, strings.offsets
    np.savez(f, **arrays)


def _load_check(path, folder):
    """(ManifestCheck, its key) from a cache file; audio paths are relative to `folder`, the CSV's
    folder now (so a copy of the data in another place still fits). Raises ValueError if inconsistent."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {name: z[name] for name in z.files}  # reads every member: a bad CRC-32 raises here
    header = json.loads(arrays["header"].tobytes().decode())
    parts = {}
    for part in ("train", "val"):
        columns = {name: Strings(arrays[f"{part}.{name}.data"], arrays[f"{part}.{name}.offsets"])
                   for name in Utterances.COLUMNS}
        for strings in columns.values():
            offsets = strings.offsets
            if (strings.data.dtype != np.uint8 or offsets.dtype != np.int64 or offsets.ndim != 1 or len(offsets) < 1
                    or offsets[0] != 0 or offsets[-1] != len(strings.data) or (np.diff(offsets) < 0).any()):
                raise ValueError(f"a {part} column is inconsistent")
        if len({len(strings) for strings in columns.values()}) != 1:
            raise ValueError(f"the {part} columns differ in length")
        parts[part] = Utterances(folder, columns)
    lengths = arrays["train.lengths"]
    if lengths.dtype != np.int64 or lengths.shape != (len(parts["train"]),) or (lengths <= 0).any():
        raise ValueError("the clip lengths do not match the clips")
    check = ManifestCheck(CharVocab(header["vocab"]), parts["train"], lengths.tolist(), str(header["report"]),
                          bool(header["estimated"]), parts["val"], str(header["fingerprint"]))
    return check, dict(header["key"])


def _write_atomic(path, write):
    """ckpt.write_atomic, where a failure (read-only or full disk) costs only the cache."""
    try:
        ckpt.write_atomic(path, write)
    except OSError as e:
        print(f"note: the manifest cache could not be written to {path} ({e.strerror or e}); the next part checks "
              f"the manifest again")


def _copy_into(path, f):
    with open(path, "rb") as src:
        shutil.copyfileobj(src, f)


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


def wer(references, hypotheses):
    """Word error rate over the whole set: (substitutions + deletions + insertions) / reference words."""
    return error_rate(*error_counts(references, hypotheses, words=True))


def cer(references, hypotheses):
    """Character error rate over the whole set (spaces count as characters, as in jiwer)."""
    return error_rate(*error_counts(references, hypotheses, words=False))


def error_rate(errors, total):
    """Errors per reference unit; with nothing to recognise, perfect only if nothing was produced.
    Counts add up across shards (several processes), rates do not: reduce counts, then call this."""
    if total == 0:
        return 0.0 if errors == 0 else 1.0
    return errors / total


def _edit_distance(a, b):
    """Levenshtein distance between two sequences: substitutions + deletions + insertions."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def error_counts(references, hypotheses, words):
    """(edit errors, reference units) over the whole set, in words or characters."""
    try:
        import jiwer  # only evaluation needs it
    except ImportError:  # Kaggle does not preinstall jiwer, and its internet is often off
        jiwer = None
        if not getattr(error_counts, "warned", False):
            print("note: jiwer is not installed; WER/CER come from Baton's own edit distance (same numbers)")
            error_counts.warned = True

    references = [references] if isinstance(references, str) else list(references)
    hypotheses = [hypotheses] if isinstance(hypotheses, str) else list(hypotheses)
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    references = [" ".join(r.split()) for r in references]
    hypotheses = [" ".join(h.split()) for h in hypotheses]

    def size(text):
        return len(text.split()) if words else len(text)

    # jiwer (before 4.0) refuses empty references, so those pairs are scored here: every
    # hypothesis token is an insertion.
    errors = sum(size(h) for r, h in zip(references, hypotheses) if not r)
    scored = [(r, h) for r, h in zip(references, hypotheses) if r]
    total = sum(size(r) for r, _ in scored)
    if scored and jiwer is not None:
        process = jiwer.process_words if words else jiwer.process_characters
        out = process([r for r, _ in scored], [h for _, h in scored])
        errors += out.substitutions + out.deletions + out.insertions
    elif scored:
        units = str.split if words else list
        errors += sum(_edit_distance(units(r), units(h)) for r, h in scored)
    return errors, total
