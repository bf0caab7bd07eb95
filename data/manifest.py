"""Speech manifests: which clips a run has, with which transcripts and in which split.

A manifest is a list of `Utterance`s (id, audio path, sentence, split) read from a CSV or a folder,
in the layouts `read_manifest` lists (Bengali.AI's, Common Voice's, a folder of audio). A large
CSV is held as `Utterances`: packed string columns (`Strings`), not a million Python objects, so
DataLoader workers forked from the training process do not copy them page by page.

Checking the clips themselves (can they be decoded, how long are they) is data/audio.py's work.
"""

import collections.abc
import csv
import itertools
import os
from dataclasses import dataclass

import numpy as np

from data import DataError

SAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "samples")
EMBEDDED = os.path.join(SAMPLES, "bengali_speech")  # made by data/make_bengali_speech.py
EMBEDDED_TEST = os.path.join(EMBEDDED, "test_mp3s")  # its test clips, transcripts in test_references.csv
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg")


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
    return read_csv(path, require_text, split)


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


def read_csv(path, require_text, split):
    return list(read_columns(path, require_text, split))


def read_rows(path):
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


def read_columns(path, require_text, split):
    """The CSV's utterances as an `Utterances` of plain lists (see read_manifest for the layouts)."""
    folder = os.path.dirname(os.path.abspath(path))
    columns, rows = read_rows(path)
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
