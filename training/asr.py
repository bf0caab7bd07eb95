"""The asr task: a wav2vec2 encoder with a CTC head (model/wav2vec2.py) learns to transcribe speech,
scored by WER and CER.

`ASRConfig` is its settings (with the presets tiny, base and xlsr53), `ASRTask` what it trains on
and how it is scored (the task interface of training/__init__.py), and `build` makes both with the
model. Manifests, audio, the dataset and its cache are in data/ (manifest.py, audio.py; where the
cache is looked for, training/reuse.py), and the transcripts' normalisation, vocabulary and error
rates in data/transcripts.py.
"""

import dataclasses
import typing

import numpy as np
import torch
from tqdm import tqdm

from data import DataError
from data.audio import SAMPLE_RATE, AudioDataset, collate, no_usable_clip, training_csv
from data.sampler import EpochSampler
from data.transcripts import (NORMALIZERS, Normalizer, bnunicodenormalizer_installed, error_counts, error_rate,
                              normalize_text)
import model as models
from model.wav2vec2 import Wav2Vec2Config, Wav2Vec2ForCTC
from training import reuse
from training.config import ConfigError, TrainConfig


class ASRTask:
    """The asr task's data: a manifest split into training clips (decoded by DataLoader workers, or
    kept decoded in memory when the set is small) and a fixed validation subset of at most
    `eval_max_clips`; the validation CTC loss with greedy WER and CER.

    The split is the manifest's `split` column, or a hash of each id (`val_fraction`). The
    vocabulary is the checkpoint's when resuming (label ids keep their meaning), else built from
    the training transcripts; it carries the run's transcript normaliser, which the validation
    references go through too.

    What it is built from is a `ManifestCheck`: the usable training clips with their lengths, the
    validation subset, the vocabulary and the fingerprint. Making one reads the whole CSV and
    stats every file (~10 s or far more at Bengali.AI's ~960k clips), and it depends only on the
    CSV and a few settings, so a run keeps it beside its checkpoints (see `reuse_or_check_manifest`)
    and a later part loads it in a fraction of a second. Either way the same check gives the same data
    object: the same items, lengths and therefore the same batches."""

    best_metric = "wer"  # picks best_model.safetensors (lower is better)
    work_unit = "s of audio"
    flops_per_work = None  # MFU is the lm task's

    def __init__(self, check, cfg, device, rank=0, world=1):
        self.vocab = check.vocab
        self.train = AudioDataset.checked(check.train, check.lengths, check.report, self.vocab,
                                          max_seconds=cfg.max_seconds, estimated=check.estimated, audio=check.audio)
        self.val = AudioDataset(check.val, self.vocab, cache=True)  # <= eval_max_clips clips: cheap to check again
        self.device, self.batch_size, self.num_workers = device, cfg.batch_size, cfg.num_workers
        # This rank's share of the validation clips, in batches of similar length (they pad less).
        self.val_by_length = sorted(range(len(self.val)), key=lambda i: self.val.lengths[i])[rank::world]
        self.references = [normalize_text(u.sentence, normalizer=self.vocab.normalizer) for u in self.val.items]
        self.fingerprint = check.fingerprint
        self.sampler = EpochSampler(len(self.train), cfg.batch_size, cfg.seed, shuffle=True,
                                    lengths=np.asarray(self.train.lengths))
        self.meta = {"vocab": self.vocab.to_dict()}

    def work(self, indices):
        """Seconds of audio in a micro-batch of these clips (unreadable ones included: they are rare)."""
        return sum(self.train.lengths[i] for i in indices) / SAMPLE_RATE

    def batches(self, index_batches, epoch):
        # The loader gets its own generator: creating an iterator otherwise draws a seed from the
        # global torch RNG, and a resumed run creates one more iterator than an uninterrupted one.
        loader = torch.utils.data.DataLoader(self.train, batch_sampler=index_batches, num_workers=self.num_workers,
                                             collate_fn=collate, pin_memory=self.device.type == "cuda",
                                             generator=torch.Generator())
        for batch in loader:
            count = int(batch["label_lengths"].sum()) if batch["label_lengths"] is not None else 0
            yield (self.model_inputs(batch) if count else None), count  # None: every clip of it was unreadable

    def model_inputs(self, batch):
        """What Wav2Vec2ForCTC's forward takes from a collated batch, on the device."""
        inputs = {k: batch[k] for k in ("input_values", "attention_mask", "labels", "label_lengths")}
        if bool((batch["input_lengths"] == batch["input_values"].shape[1]).all()):
            inputs["attention_mask"] = None  # unpadded: as without a mask, decided here on the host
        return {k: v.to(self.device, non_blocking=True) if v is not None else None for k, v in inputs.items()}

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
                     grad_checkpointing=False, num_workers=2, mask_time_prob=0.05, layerdrop=0.05, probe_memory=True),
        # wav2vec2-large-xlsr-53 on a 16 GB T4 as in the seeds (their P100 no longer runs current PyTorch):
        # batch 1 x accumulation 8, gradient checkpointing, fp16 (the T4's default), frozen feature encoder, 70
        # epochs then 7 at 5e-6. A full checkpoint is ~3.8 GB (weights + AdamW moments), so one
        # rolling file is kept: Kaggle saves at most 20 GB of output.
        "xlsr53": dict(epochs=70, phase2_epochs=7, phase2_lr=5e-6, batch_size=1, grad_accum=8, lr=1e-4,
                       warmup_steps=500, freeze_feature_encoder=True, grad_checkpointing=True, num_workers=2,
                       mask_time_prob=0.05, layerdrop=0.1, keep_last=1, save_every_minutes=60, save_every_steps=0,
                       probe_memory=True),
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
    normalizer: str = "auto"        # of transcripts after NFC: "bnunicodenormalizer" (Bengali.AI's), "nfc" (none
                                    # more), or "auto": the first if installed; a resumed run keeps its own
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

    def resolved(self, resumed):
        """The normaliser settled ("auto" and a resumed run's rule, `choose_normalizer`), so the printed
        config is the one the run uses."""
        return dataclasses.replace(super().resolved(resumed), normalizer=choose_normalizer(self, resumed))


def choose_normalizer(cfg, resumed):
    """The transcripts' normaliser (data/transcripts.py): a resumed run keeps the one it trained with
    (a file from before the setting was stored trained with NFC alone); "auto" is bnunicodenormalizer
    where it is installed."""
    if resumed is not None and "normalizer" not in (resumed.meta.get("config") or {}):
        return "nfc"
    name = cfg.normalizer
    if name == "auto":
        name = "bnunicodenormalizer" if bnunicodenormalizer_installed() else "nfc"
    if name not in NORMALIZERS:
        raise ConfigError(f"normalizer must be auto, {' or '.join(NORMALIZERS)} (got {name!r})")
    if name == "bnunicodenormalizer" and not bnunicodenormalizer_installed():
        raise ConfigError("this run's transcripts are normalised with bnunicodenormalizer, which is not installed: "
                          "pip install bnunicodenormalizer (or --set normalizer=nfc, which changes what the model learns)")
    return name


def build(cfg, device, rank=0, world=1, resumed=None, run_folder=None):
    """(model, task object) of the asr task; `resumed` is the checkpoint a run resumes from, or None;
    `run_folder` the run's folder, where the manifest check is kept for later parts (None: not kept)."""
    # cfg.resolved(resumed) settled the normaliser; choosing again gives the same name, and settles it
    # for a cfg that was not resolved (a test's) without changing cfg. Made before any transcript is
    # read: targets and references agree.
    normalizer = Normalizer(choose_normalizer(cfg, resumed))
    # On resume, the checkpoint's vocabulary, so label ids keep their meaning.
    vocab = resumed.meta["task_meta"]["vocab"] if resumed else None
    check = reuse.asr_manifest_check(cfg, vocab, normalizer, resumed, run_folder, rank)
    task = ASRTask(check, cfg, device, rank, world)
    print(f"data: train: {task.train.report}\n      valid: {task.val.report}\n      vocabulary: {len(task.vocab)} symbols")
    if len(task.val) == 0:  # (a manifest check with no training clip is an error already)
        raise DataError(no_usable_clip(training_csv(cfg.data), task.val, "validation"))
    arch = {"tiny": "tiny", "base": "base", "xlsr53": "large"}[cfg.preset]
    fresh = Wav2Vec2Config.preset(arch, vocab_size=len(task.vocab))
    saved_config = resumed.meta["model_config"] if resumed else None
    model = models.pretrained_or_fresh(Wav2Vec2ForCTC, cfg.pretrained, saved_config, fresh,
                                       {"vocab_size": len(task.vocab)}, mask_time_prob=cfg.mask_time_prob,
                                       mask_feature_prob=cfg.mask_feature_prob, layerdrop=cfg.layerdrop,
                                       hidden_dropout=cfg.hidden_dropout)
    if cfg.freeze_feature_encoder:
        model.freeze_feature_encoder()
    return model, task
