"""Speech audio: 16 kHz clips, the dataset that checks and serves them, batches, and the manifest
check that a run makes once and keeps.

`AudioDataset` checks a manifest (data/manifest.py) up front, drops what cannot be used and says
how much in one line, so a bad row in a million never stops a twelve-hour run. Each item is a whole
clip decoded to mono float32 at 16 kHz and normalised per utterance as wav2vec2 expects; `collate`
pads a batch and carries the true lengths with it. Transcripts become CTC labels through
data/transcripts.py's `CharVocab`.

Checking a large manifest (reading it, a stat per clip) costs ~10 s at Bengali.AI's ~960k clips,
the same for every part of a run; `reuse_or_check_manifest` keeps the outcome in the run folder
(manifest_cache.npz) and later parts load it instead, to the same items in the same order
(training/reuse.py says where a part looks for it, and which process writes it).

Nothing here is random: augmentation, if any, belongs to the model, so the data a step sees
depends only on the sampler's order.
"""

import itertools
import json
import os
import shutil
import stat
import zipfile
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
import xxhash

import ckpt
from data import DataError, held_out
from data.manifest import AUDIO_SUFFIXES, EMBEDDED, Strings, Utterances, read_columns, read_manifest
from data.transcripts import BOS, DELIM, EOS, PAD, UNK, CharVocab, Normalizer, normalize_text

SAMPLE_RATE = 16_000  # what every wav2vec2 checkpoint was trained on


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


# ---------------------------------------------------------------------------------------------
# The dataset and its batches
# ---------------------------------------------------------------------------------------------


HEADER_LIMIT = 20_000  # above this many clips, lengths are estimated from file sizes (AudioDataset)


class AudioDataset(torch.utils.data.Dataset):
    """Utterances checked once, then served as {"audio", "labels", "id", "bad"} items.

    At construction every clip is checked (no sentence left after normalisation when a vocab is
    given, file missing, header unreadable, longer than max_seconds); failures are dropped and
    counted in `self.report`. `self.items` are the kept utterances and `self.lengths` their lengths
    in 16 kHz samples (for length-grouped batches). `texts`, if given, are the sentences normalised
    as the vocab does already (the manifest check has them: it built the vocabulary from them).

    Reading every header costs ~0.15 ms per MP3 with a warm page cache, so a few minutes for the
    ~960k clips of Bengali.AI, and much more on a cold network disk. Above `header_limit` clips
    only the file sizes are read (one stat each) and lengths are estimated from bytes per second
    measured on the headers of the first 32 files of each format: exact for constant-bitrate MP3,
    close for the rest. Such a manifest can still hold unreadable files; those come back from
    __getitem__ with `bad` set, and `collate` drops them, so training goes on.

    Even one stat per clip is ~10 s at a million clips on a network disk, so the outcome of the
    check (kept items, lengths, report) is what `reuse_or_check_manifest` keeps in its cache for later
    parts, which build the dataset with `AudioDataset.checked` and touch no file.

    cache=True decodes every clip once here and keeps it in memory (the embedded sample is 47 MB
    decoded); lengths are then exact and an undecodable file is counted as unreadable up front.
    """

    def __init__(self, utterances, vocab=None, max_seconds=None, cache=False, header_limit=HEADER_LIMIT, texts=None):
        is_columns = isinstance(utterances, Utterances)
        paths = utterances.paths() if is_columns else [u.path for u in utterances]
        if vocab is not None and texts is None:
            sentences = utterances.column("sentence") if is_columns else [u.sentence for u in utterances]
            texts = [normalize_text(s or "", vocab.keep, vocab.normalizer) for s in sentences]
        estimated = len(paths) > header_limit and not cache
        counts = {"missing files": 0, "unreadable": 0, "empty sentences": 0}
        first = {}  # the first path of each cause, for a message that shows one
        sizes = _file_sizes(paths, texts if vocab is not None else None, counts, first)
        kept, lengths, audio, too_long = _clip_lengths(paths, sizes, max_seconds, cache, estimated, counts, first)
        items = utterances.subset(kept) if is_columns else list(itertools.compress(utterances, kept))
        parts = [f"{n} {what}" for what, n in counts.items()]
        if max_seconds is not None:
            parts.append(f"{too_long} longer than {max_seconds:g} s")
        hours = sum(lengths) / SAMPLE_RATE / 3600
        report = (f"kept {len(items)} of {len(paths)} clips ({hours:.2f} h"
                  f"{', lengths estimated from file sizes' if estimated else ''}): {', '.join(parts)}")
        self._adopt(items, lengths, report, vocab, max_seconds, estimated, audio)
        if max_seconds is not None:
            counts[f"longer than {max_seconds:g} s"] = too_long
        self.dropped, self.first = {cause: n for cause, n in counts.items() if n}, first

    @classmethod
    def checked(cls, items, lengths, report, vocab=None, max_seconds=None, estimated=False, audio=None):
        """A dataset of clips checked before (by an earlier part: the manifest cache), taken as they are."""
        dataset = cls.__new__(cls)
        dataset._adopt(items, list(lengths), report, vocab, max_seconds, estimated, audio)
        return dataset

    def _adopt(self, items, lengths, report, vocab, max_seconds, estimated, audio):
        self.items, self.lengths, self.report = items, lengths, report
        self.vocab, self.max_seconds, self.estimated = vocab, max_seconds, estimated
        self._audio = audio  # decoded clips, parallel to self.items (cache=True), else None
        self.dropped, self.first = {}, {}  # clips dropped by cause, and the first path of each (when checked here)

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


def no_usable_clip(source, dataset, what="training", every_path=()):
    """The sentence for a manifest (`source`) of whose `what` clips `dataset` kept none. When no
    file of `every_path` (all the manifest lists) exists, that is what is wrong (another folder, the
    audio not attached), so it says so; else what the check dropped, with the first path of each
    cause (None without a `dataset`: then only missing files are looked for)."""
    missing = [path for path in every_path if not os.path.isfile(path)]  # a stat per clip, on this failure only
    if missing and len(missing) == len(every_path):
        return (f"all {len(missing)} audio files that {source} lists are missing (first: {missing[0]}); put the audio "
                f"where the manifest points (relative paths start at the CSV's folder; Bengali.AI ids name "
                f"train_mp3s/<id>.mp3 there, else <id>.mp3 beside the CSV) or fix its paths")
    if dataset is None:
        return None
    causes = [f"{n} {cause}" + (f" (first: {dataset.first[cause]})" if cause in dataset.first else "")
              for cause, n in dataset.dropped.items()]
    return (f"none of the {sum(dataset.dropped.values())} {what} clips checked in {source} can be used "
            f"({', '.join(causes)}); fix those rows or the files they name")


def _file_sizes(paths, texts, counts, first):
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
            first.setdefault("missing files", path)
            continue
        sizes[i] = st.st_size
    return sizes


def _clip_lengths(paths, sizes, max_seconds, decode, estimated, counts, first):
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
            first.setdefault("unreadable", paths[i])
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


# ---------------------------------------------------------------------------------------------
# The manifest check, and its cache
#
# A part of a run reads the manifest, splits it, builds the vocabulary and checks every clip.
# At Bengali.AI's ~960k rows that was most of the 20-35 s before a part's first step, and every
# part did it again for the same answer. The answer depends only on the CSV's bytes and the
# settings below (`_cache_key`), so one process writes it to CACHE_NAME in the run folder, and a
# later part that finds it (in its own folder, or beside the checkpoint it resumes: on Kaggle part
# 2's output folder starts empty and part 1's output is attached read-only elsewhere; where a part
# looks is training/reuse.py's rule) loads it instead. The audio files are assumed unchanged; one
# that went bad since is still caught when it is loaded (__getitem__ flags it, collate drops it).
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
    """What checking a manifest found: everything the asr task (training/asr.py) needs that depends only on the data."""
    vocab: CharVocab
    train: Utterances  # the usable training clips, packed
    lengths: list      # their lengths in samples
    report: str        # what was kept and dropped, as AudioDataset words it
    estimated: bool    # lengths from file sizes
    val: Utterances    # the validation subset, before its own (cheap) check
    fingerprint: str   # of the training ids and sentences, stored in checkpoints
    audio: list = None  # decoded training clips when the manifest is small (never cached)


def check_manifest(csv_path, cfg, vocab=None, normalizer=None):
    """The costly path, every clip checked now: read the whole manifest, split it, build the vocabulary
    unless given (`vocab`: token -> id, a resumed run's), check every clip. Transcripts are normalised
    with `normalizer` (a `Normalizer`; None is NFC alone)."""
    manifest = read_columns(csv_path, require_text=True, split=None)
    train_mask, val_mask = split_masks(manifest, csv_path, cfg)
    train = manifest.subset(train_mask)
    vocab = CharVocab(vocab, normalizer) if vocab is not None else None
    # Normalised once, for both the vocabulary and the empty-sentence check (a vocabulary built
    # here keeps no punctuation, so both want the same text).
    texts = [normalize_text(s, vocab.keep if vocab else None, normalizer) for s in train.column("sentence")]
    vocab = vocab or CharVocab.of_texts(texts, normalizer)
    small = len(manifest) <= IN_MEMORY_CLIPS
    clips = AudioDataset(train, vocab, max_seconds=cfg.max_seconds, cache=small, header_limit=HEADER_LIMIT, texts=texts)
    if len(clips) == 0:  # before the sampler, which cannot serve nothing; the partly bad are dropped and counted
        raise DataError(no_usable_clip(csv_path, clips, every_path=manifest.paths()))
    chosen = validation_subset(val_mask, cfg.eval_max_clips)
    kept = clips.items
    fingerprint = xxhash.xxh3_64("\n".join(f"{i}\t{s}" for i, s in zip(kept.column("id"), kept.column("sentence")))
                                 .encode()).hexdigest()
    return ManifestCheck(vocab, kept.packed(), clips.lengths, clips.report, clips.estimated,
                         manifest.subset(chosen).packed(), fingerprint, clips._audio)


def split_masks(manifest, csv_path, cfg):
    """(training mask, validation mask): the manifest's split column, else a hash of each id."""
    splits = manifest.column("split")
    if any(splits):
        train_mask = np.array([s in ("", "train") for s in splits], dtype=bool)
        val_mask = np.array([s in ("valid", "validation", "val", "dev") for s in splits], dtype=bool)
    else:
        val_mask = held_out(manifest.column("id"), cfg.val_fraction)
        train_mask = ~val_mask
    if not train_mask.any() or not val_mask.any():
        # Missing audio is the worse problem, and the one to fix first: say it when no file exists.
        missing = no_usable_clip(csv_path, None, every_path=manifest.paths())
        if missing:
            raise DataError(missing)
        how = ("mark rows 'train' and 'valid' in its split column" if any(splits)
               else f"add rows or change val_fraction ({cfg.val_fraction:g})")
        raise DataError(f"{cfg.data or 'the embedded sample'} gives {int(train_mask.sum())} training and "
                        f"{int(val_mask.sum())} validation clips; both are needed: {how}")
    return train_mask, val_mask


def validation_subset(val_mask, count):
    """The fixed, evenly spread subset of at most `count` validation rows that evaluation scores."""
    val_rows = np.flatnonzero(val_mask)
    chosen = np.zeros(len(val_mask), dtype=bool)
    chosen[val_rows[::max(1, len(val_rows) // count)][:count]] = True
    return chosen


def validation_clips(cfg):
    """The clips a run with settings `cfg` evaluates on (infer.py --lm-tune tunes on them)."""
    csv_path = training_csv(cfg.data)
    manifest = read_columns(csv_path, require_text=True, split=None)
    chosen = validation_subset(split_masks(manifest, csv_path, cfg)[1], cfg.eval_max_clips)
    return AudioDataset(manifest.subset(chosen))


def training_csv(path):
    """The CSV a training manifest comes from, by read_manifest's rules (other inputs get its errors)."""
    path = path or EMBEDDED
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "train.csv")):
        return os.path.join(path, "train.csv")
    if os.path.isfile(path) and not path.lower().endswith(AUDIO_SUFFIXES):
        return path
    read_manifest(path)  # raises why this is no training manifest
    raise DataError(f"{path} is not a training manifest; give a CSV or a Bengali.AI folder")


def reuse_or_check_manifest(cfg, vocab=None, normalizer=None, folders=(), write_into=None):
    """The manifest's check, as check_manifest makes it: loaded from the first cache that fits in
    `folders` (looked in, in order), else made. The check is written to `write_into` (a folder, or
    None: not written): made, copied from another folder, or in place of a damaged one there."""
    csv_path = training_csv(cfg.data)
    normalizer = normalizer or Normalizer()
    key = _cache_key(csv_path, cfg, normalizer)
    mine = os.path.join(write_into, CACHE_NAME) if write_into else None
    places = (os.path.join(folder, CACHE_NAME) for folder in folders if folder is not None)
    for path in dict.fromkeys(os.path.realpath(p) for p in places if os.path.isfile(p)):
        found, problem = _usable_cache(path, key, vocab, normalizer, os.path.dirname(os.path.abspath(csv_path)))
        if found is not None:
            print(f"data: the manifest check of an earlier part is reused ({path}): no clip is checked again")
            if mine and path != os.path.realpath(mine):  # so the next part finds it beside this part's checkpoints
                _write_atomic(mine, lambda f: _copy_into(path, f))
            return found
        print(f"data: {problem} ({path}); it is checked again")
        if mine and path == os.path.realpath(mine):
            _remove(mine)
    check = check_manifest(csv_path, cfg, vocab, normalizer)
    if mine and check.audio is None:
        _write_atomic(mine, lambda f: _save_check(f, check, key))
    return check


def _cache_key(csv_path, cfg, normalizer):
    """What the check depends on besides the vocabulary: the CSV's bytes and the settings that decide what is kept."""
    digest = xxhash.xxh3_64()
    with open(csv_path, "rb") as f:  # ~0.05 s for Bengali.AI's 100 MB train.csv
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return {"format": CACHE_FORMAT, "manifest": f"{os.path.getsize(csv_path)} bytes, xxh3 {digest.hexdigest()}",
            "max_seconds": cfg.max_seconds, "val_fraction": cfg.val_fraction, "eval_max_clips": cfg.eval_max_clips,
            "header_limit": HEADER_LIMIT, "in_memory_clips": IN_MEMORY_CLIPS,
            "normalizer": normalizer.name}


def _usable_cache(path, key, vocab, normalizer, folder):
    """(the cached check, None) when the cache at `path` reads and fits; else (None, why not)."""
    try:
        check, cached_key = _load_check(path, normalizer, folder)
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile, DataError) as e:
        return None, f"the manifest cache is damaged ({type(e).__name__}: {e})"
    if cached_key.get("manifest") != key["manifest"]:
        return None, "the manifest changed since the cache was made"
    changed = [k for k in key if cached_key.get(k) != key[k]]
    if changed:
        return None, f"{', '.join(changed)} changed since the manifest cache was made"
    if vocab is not None and CharVocab(vocab).to_dict() != check.vocab.to_dict():
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


def _load_check(path, normalizer, folder):
    """(ManifestCheck, its key) from a cache file, its vocabulary normalising with `normalizer` (the
    cache's key names it); audio paths are relative to `folder`, the CSV's folder now (so a copy of
    the data in another place still fits). Raises ValueError if inconsistent."""
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
    check = ManifestCheck(CharVocab(header["vocab"], normalizer), parts["train"], lengths.tolist(),
                          str(header["report"]), bool(header["estimated"]), parts["val"], str(header["fingerprint"]))
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
