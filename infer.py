"""The inference stage: a checkpoint in, predictions out.

    python infer.py --task asr --ckpt runs/asr [--data PATH] [--out submission.csv]
    python infer.py --task lm  --ckpt runs/lm --prompt "It was" [--max-new-tokens 200]
    python infer.py --task reg --ckpt runs/reg [--data test.csv] [--out predictions.csv]
    python infer.py --task asr --ckpt runs/asr --export hf_model/   # Hugging Face folder, opens in transformers

`--ckpt` takes a full training checkpoint, a weights-only `best_model.safetensors`, or a run
folder (then its best model, else its newest valid checkpoint); `--ckpt auto` takes the run folder
whose training checkpoint has the highest global step, in ./runs/<task> or under the input roots
(an attached output on Kaggle, as chain.py's last version uses it). The model is rebuilt from the
config stored in the file, so no training flags need repeating.
"""

import argparse
import csv
import json
import math
import os
import sys

import numpy as np
import torch

import ckpt
from data import DataError, audio, manifest, tokenizers, transcripts
from data import table as table_data
import model as models
from model import decoding
from model.hf_weights import WeightsError
from data.inputs import input_roots
from training import discovery
from training.tasks import TASKS
from training.config import resolve_settings


class InferError(Exception):
    """A bad argument or input; the message is one sentence that says what to do."""


def resolve_checkpoint(path):
    """A file path as given, or for a folder: best model, then latest.txt, then newest by global step."""
    if not os.path.isdir(path):
        return path
    best = os.path.join(path, ckpt.BEST_NAME)
    if os.path.exists(best):
        return best
    latest = os.path.join(path, ckpt.LATEST_NAME)
    if os.path.exists(latest):
        with open(latest, encoding="utf-8") as f:
            named = os.path.join(path, f.read().strip())
        if os.path.exists(named):
            return named
    found = [f for f in discovery.scan([path]) if f.problem is None]
    if not found:
        raise InferError(f"no checkpoint in {path}; train first or pass a .safetensors file")
    return max(found, key=lambda f: f.global_step).path


def find_run(task):
    """--ckpt auto: the folder of the newest training checkpoint of `task` (by global step) in
    ./runs/<task> or under the input roots, where a Kaggle session finds an attached output."""
    roots = [os.path.join("runs", task)] + input_roots()
    found = [f for f in discovery.scan(roots) if f.problem is None and f.kind == "train" and f.task == task]
    if not found:
        raise InferError(f"--ckpt auto found no {task} training checkpoint under {', '.join(roots)}; attach the "
                         f"training's output or pass --ckpt PATH")
    newest = max(found, key=lambda f: f.global_step)
    print(f"--ckpt auto: {os.path.dirname(newest.path)} (global step {newest.global_step})", file=sys.stderr)
    return os.path.dirname(newest.path)


def load_hf_folder(folder, task, device):
    """A folder that --export wrote (or any Hugging Face folder of the same kind): the model, and the
    metadata inference needs, rebuilt from vocab.json (asr) or vocab.json + merges.txt (lm)."""
    if task == "asr":
        with open(os.path.join(folder, "vocab.json"), encoding="utf-8") as f:
            task_meta = {"vocab": json.load(f)}
        model = TASKS["asr"].model.from_pretrained(folder, vocab_size=len(task_meta["vocab"]))
    elif task == "lm":
        task_meta = {"tokenizer": tokenizers.GPT2Tokenizer.from_folder(folder).to_dict()}
        model = TASKS["lm"].model.from_pretrained(folder)
    else:
        raise InferError(f"{folder} is a Hugging Face folder; only asr and lm read those back")
    print(f"loaded the Hugging Face folder {folder} (task {task})", file=sys.stderr)
    return model.to(device).eval(), {"task": task, "task_meta": task_meta}


def load_model(path, task, device):
    """The model of a checkpoint, in eval mode, plus the checkpoint's metadata."""
    hf = os.path.join(path, "config.json")
    if os.path.isdir(path) and os.path.isfile(hf) and os.path.isfile(os.path.join(path, "model.safetensors")):
        return load_hf_folder(path, task, device)
    saved = ckpt.load_any(resolve_checkpoint(path))
    if saved.meta.get("kind") == "legacy":
        raise InferError(f"{saved.path} is a legacy file without a config; continue training from it with "
                         f"train_part.py --resume {saved.path} to get a Baton checkpoint")
    if saved.meta.get("task") != task:
        raise InferError(f"{saved.path} is a checkpoint of task {saved.meta.get('task')!r}, not {task!r}; "
                         f"pass --task {saved.meta.get('task')}")
    if not isinstance(saved.meta.get("model_config"), dict):
        raise InferError(f"{saved.path} has no model_config in its header; it cannot be rebuilt")
    model = models.rebuild(TASKS[task].model, saved.meta["model_config"])
    ckpt.check_compatible(saved, model.state_dict())  # one sentence, not load_state_dict's traceback
    model.load_state_dict(saved.state["model"])
    print(f"loaded {saved.path} (task {task}, global step {saved.meta.get('global_step')})", file=sys.stderr)
    return model.to(device).eval(), saved.meta


def infer_lm(args, device):
    model, meta = load_model(args.ckpt, "lm", device)
    tokenizer = tokenizers.tokenizer_from_dict(meta["task_meta"]["tokenizer"])
    prompt = args.prompt if args.prompt else "\n"
    ids = torch.tensor([tokenizer.encode(prompt)], dtype=torch.long, device=device)  # (1, T)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    for i in range(args.num_samples):
        out = model.generate(ids, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                             generator=generator)
        if args.num_samples > 1:
            print(f"--- sample {i + 1}")
        print(tokenizer.decode(out[0].tolist()))


def infer_asr(args, device):
    """Every clip of a folder or CSV -> submission.csv (id,sentence), one row per clip in input order."""
    model, meta = load_model(args.ckpt, "asr", device)
    normalizer = use_training_normalizer(meta)
    vocab = transcripts.CharVocab.from_dict(meta["task_meta"]["vocab"], normalizer)
    utterances = manifest.read_manifest(args.data or manifest.EMBEDDED_TEST, require_text=False)
    if not utterances:
        raise InferError(f"no audio clips found in {args.data}")
    clips = audio.AudioDataset(utterances)
    if len(clips) == 0:  # a submission of empty sentences only would look like a result
        raise InferError(audio.no_usable_clip(args.data or manifest.EMBEDDED_TEST, clips, "test",
                                              every_path=[u.path for u in utterances]))
    print(f"clips: {clips.report}", file=sys.stderr)
    lm = lm_for_args(args, meta)
    if lm is not None and not args.beam:
        raise InferError("--lm needs a beam search: add --beam N (e.g. 32)")
    if args.lm_tune:
        tune_lm(args, model, vocab, lm, meta, device)
    predicted = {}
    for i, log_probs in model_outputs(model, clips, args, device):  # (T, V) of each clip
        predicted[i] = decoding.prefix_beam_search(log_probs, vocab, args.beam, lm, args.lm_weight, args.word_bonus) \
            if args.beam else vocab.decode_ctc(log_probs.argmax(dim=-1).tolist())
    missing = [u.id for u in utterances if u.id not in predicted]
    if missing:
        print(f"warning: {len(missing)} clips could not be read and get an empty sentence "
              f"(first: {', '.join(missing[:3])})", file=sys.stderr)
    out_path = args.out or "submission.csv"
    with open(out_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "sentence"])
        for u in utterances:
            text = predicted.get(u.id, "")
            writer.writerow([u.id, transcripts.postprocess_bengali(text, normalizer) if args.postprocess else text])
    print(f"wrote {out_path}: {len(utterances)} rows", file=sys.stderr)
    references = [u for u in utterances if u.sentence]
    if references:  # a labelled set: say how good the predictions are
        refs = [transcripts.normalize_text(u.sentence, normalizer=normalizer) for u in references]
        hyps = [transcripts.normalize_text(predicted.get(u.id, ""), normalizer=normalizer) for u in references]
        print(f"on {len(refs)} labelled clips: WER {transcripts.wer(refs, hyps):.3f}, CER {transcripts.cer(refs, hyps):.3f}",
              file=sys.stderr)


def use_training_normalizer(meta):
    """The Normalizer (data/transcripts.py) the model's training targets went through, for references,
    submissions and a language model's sentences alike."""
    name = (meta.get("config") or {}).get("normalizer", "nfc")  # older files, and exported folders: NFC
    if name == "bnunicodenormalizer" and not transcripts.bnunicodenormalizer_installed():
        raise InferError("this model's transcripts were normalised with bnunicodenormalizer, which is not installed: "
                         "pip install bnunicodenormalizer")
    return transcripts.Normalizer(name)


def model_outputs(model, clips, args, device):
    """(id, log probabilities (T, V) on the CPU) of each clip: batched by length (similar lengths pad
    less), and a clip longer than --chunk-seconds in overlapping windows (chunked_log_probs)."""
    chunk = round(args.chunk_seconds * audio.SAMPLE_RATE) if args.chunk_seconds else math.inf
    by_length = sorted(range(len(clips)), key=lambda i: clips.lengths[i])
    with torch.no_grad():
        for start in range(0, len(by_length), args.batch_size):
            items = [clips[i] for i in by_length[start:start + args.batch_size]]
            for item in items:
                if item["bad"] is None and len(item["audio"]) > chunk:  # (S,) samples
                    yield item["id"], chunked_log_probs(model, item["audio"], args, device)
            batch = audio.collate([item for item in items if item["bad"] is not None or len(item["audio"]) <= chunk])
            if batch["ids"]:
                logits, frames = model(batch["input_values"].to(device), batch["attention_mask"].to(device))
                log_probs = torch.log_softmax(logits.float(), dim=-1).cpu()  # (B, T, V)
                yield from ((i, log_probs[row, :int(frames[row])]) for row, i in enumerate(batch["ids"]))


def chunked_log_probs(model, samples, args, device):
    """(T, V) log probabilities of a long clip from windows of --chunk-seconds that overlap by
    --stride-seconds on each side, as the Hugging Face pipeline does for CTC: each window's frames in
    its overlaps are dropped (they lack context on one side), except at the clip's two ends, so that
    the kept frames tile the clip. Memory is that of one window, whatever the clip's length."""
    hop = math.prod(model.config.conv_stride)  # samples per output frame (320: 20 ms)
    chunk = max(hop, round(args.chunk_seconds * audio.SAMPLE_RATE / hop) * hop)
    stride = min(round(args.stride_seconds * audio.SAMPLE_RATE / hop) * hop, (chunk // 2 // hop - 1) * hop)
    pieces, start = [], 0
    while True:
        window = samples[start:start + chunk][None].to(device)  # (1, S)
        logits, frames = model(window, torch.ones_like(window, dtype=torch.bool))
        log_probs = torch.log_softmax(logits[0, :int(frames[0])].float(), dim=-1).cpu()  # (T_window, V)
        last = start + chunk >= len(samples)
        pieces.append(log_probs[(stride // hop if start else 0):(None if last else (chunk - stride) // hop)])
        if last:
            return torch.cat(pieces)
        start += chunk - 2 * stride


LM_TUNE_WEIGHTS, LM_TUNE_BONUSES = (0.3, 0.5, 0.8, 1.2), (0.0, 1.0, 2.0, 3.0)


def tune_lm(args, model, vocab, lm, meta, device):
    """--lm-tune: the LM weight and word bonus of the grid that give the lowest WER on the run's
    validation clips (the ones training scored; one model pass, every pair decodes the same log
    probabilities); the table is printed and the pair used from here (and stored by --export).
    `vocab` carries the training normaliser, which the references go through."""
    if lm is None or not args.beam:
        raise InferError("--lm-tune needs --lm and --beam N")
    if not isinstance(meta.get("config"), dict):
        raise InferError("--lm-tune needs a Baton checkpoint, whose settings name its validation clips")
    cfg = resolve_settings(TASKS["asr"].config, [], meta["config"])  # the run's settings, as a resumed part reads them
    clips = audio.validation_clips(cfg)
    references = dict(zip(clips.items.column("id"), clips.items.column("sentence")))
    outputs = list(model_outputs(model, clips, args, device))
    refs = [transcripts.normalize_text(references[i], vocab.keep, vocab.normalizer) for i, _ in outputs]
    scores = {}
    for weight in LM_TUNE_WEIGHTS:
        for bonus in LM_TUNE_BONUSES:
            texts = [decoding.prefix_beam_search(lp, vocab, args.beam, lm, weight, bonus) for _, lp in outputs]
            scores[weight, bonus] = transcripts.wer(refs, texts)
    best = min(scores, key=lambda pair: (scores[pair], pair))
    print(f"--lm-tune: WER of {len(outputs)} validation clips at beam {args.beam} (rows: LM weight, columns: "
          f"word bonus)\n        " + "".join(f"{b:>7g}" for b in LM_TUNE_BONUSES) + "".join(
              f"\n  {w:>5g} " + "".join(f"{scores[w, b]:7.3f}" for b in LM_TUNE_BONUSES) for w in LM_TUNE_WEIGHTS) +
          f"\nchosen: LM weight {best[0]:g}, word bonus {best[1]:g} (WER {scores[best]:.3f})", file=sys.stderr)
    args.lm_weight, args.word_bonus = best
    return best, scores


def lm_for_args(args, meta):
    """The --lm model, or None; one built from sentences normalises them as the model's (`meta`'s)
    targets were. The LM weight and word bonus default to a language_model folder's alpha and beta,
    else 0.5 and 1.0."""
    def sentences_of(path):  # only an LM built from text needs the normaliser (and its library)
        return transcripts.sentences_of(path, use_training_normalizer(meta))

    lm = None
    if args.lm:
        try:
            lm = decoding.read_lm(args.lm, sentences_of)
        except (OSError, ValueError) as e:
            raise InferError(f"--lm {args.lm}: {e}") from None
    attrs = getattr(lm, "attrs", {})
    args.lm_weight = args.lm_weight if args.lm_weight is not None else attrs.get("alpha", 0.5)
    args.word_bonus = args.word_bonus if args.word_bonus is not None else attrs.get("beta", 1.0)
    return lm


def infer_reg(args, device):
    """Every row of a CSV -> predictions.csv (id, predicted target), in input order. A CSV without
    the id column (or a model trained without one) gets row numbers in a column named `row`."""
    model, meta = load_model(args.ckpt, "reg", device)
    info = meta["task_meta"]
    columns = info["columns"]
    path = args.data or table_data.DEFAULT_TEST
    table = table_data.read_table(path, columns["id"], columns["text"], columns["numeric"], columns["target"],
                                  for_training=False, ids_optional=True)
    if columns["id"] and not table.id_column:
        print(f"note: {path} has no {columns['id']!r} column, so the predictions name each row by its number in a "
              f"'row' column (1 = the first row after the header)", file=sys.stderr)
    bad = int(np.isnan(table.numeric).any(axis=1).sum()) if table.numeric is not None else 0
    if bad:
        print(f"warning: {bad} rows have a missing or non-numeric feature; the training mean is used there",
              file=sys.stderr)
    tokenizer = tokenizers.tokenizer_from_dict(info["tokenizer"]) if info["tokenizer"] else None
    standardize = table_data.Standardizer.from_dict(info["standardizer"]) if info["standardizer"] else None
    rows = table_data.RegRows(table, tokenizer, info["block_size"], standardize)  # as in training
    predictions = []
    with torch.no_grad():
        for start in range(0, len(table.ids), args.batch_size):
            out = model(**rows.batch(range(start, min(start + args.batch_size, len(table.ids))), device))  # (B,)
            predictions.append(table_data.decode_target(out, *info["target_range"]).cpu())
    predicted = torch.cat(predictions).numpy()
    out_path = args.out or "predictions.csv"
    with open(out_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow([table.id_column or "row", columns["target"]])
        writer.writerows(zip(table.ids, (f"{v:.6g}" for v in predicted)))
    print(f"wrote {out_path}: {len(predicted)} rows ({table.report})", file=sys.stderr)
    try:  # a labelled file: say how good the predictions are
        labelled = table_data.read_table(path, table.id_column, "", [], columns["target"])
        if len(labelled.ids) == len(table.ids):
            print(f"SMAPE {table_data.smape(predicted, labelled.target):.2f}, "
                  f"MAE {table_data.mae(predicted, labelled.target):.2f}", file=sys.stderr)
    except DataError:
        pass


def export(args, device):
    """Write the checkpoint's model as a Hugging Face folder: config.json and model.safetensors, and
    for asr the vocabulary, feature extractor and tokenizer that `transformers.pipeline` needs (and
    with --lm its language_model/ folder, alpha and beta the --lm-weight and --word-bonus); for lm
    with GPT-2's BPE, the tokenizer files AutoTokenizer reads."""
    if args.task == "reg":
        raise InferError("a reg model has no Hugging Face counterpart to export; its checkpoint is the model "
                         "(infer.py --task reg --ckpt reads it)")
    model, meta = load_model(args.ckpt, args.task, device)
    if args.task == "asr":
        model.save_pretrained(args.export, vocab=meta["task_meta"]["vocab"])
        audio.write_hf_processor(args.export, layer_norm_features=model.config.feat_extract_norm == "layer")
        lm = lm_for_args(args, meta)
        if lm is not None and args.lm_tune:
            vocab = transcripts.CharVocab.from_dict(meta["task_meta"]["vocab"], use_training_normalizer(meta))
            tune_lm(args, model, vocab, lm, meta, device)
        if lm is not None:  # Wav2Vec2ProcessorWithLM (with pyctcdecode and kenlm installed) decodes with it
            folder = decoding.write_lm_folder(args.export, lm, args.lm_weight, args.word_bonus)
            print(f"language model: {folder} (alpha {args.lm_weight:g}, beta {args.word_bonus:g})", file=sys.stderr)
    else:
        model.save_pretrained(args.export)
    tokenizer = meta["task_meta"].get("tokenizer") or {}
    if args.task == "lm" and tokenizer.get("kind") == "gpt2":
        tokenizers.tokenizer_from_dict(tokenizer).save_pretrained(args.export, max_length=model.config.block_size)
    elif args.task == "lm":
        print(f"note: the {tokenizer.get('kind')} tokenizer has no transformers equivalent: the folder opens with "
              f"AutoModelForCausalLM, and text is encoded as in data/tokenizers.py", file=sys.stderr)
    print(f"exported to {args.export}", file=sys.stderr)


def parse_args(argv):
    p = argparse.ArgumentParser(description="Predict with a Baton checkpoint.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--task", required=True, choices=list(TASKS))
    p.add_argument("--ckpt", required=True,
                   help="checkpoint file, best_model.safetensors, a run folder, or 'auto' (the newest run in "
                        "runs/<task> or the input roots)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available")
    p.add_argument("--export", default=None, metavar="DIR", help="write a Hugging Face model folder instead of predicting")
    p.add_argument("--data", default=None, help="asr: a folder of clips or a CSV; reg: a CSV (default: the embedded test set)")
    p.add_argument("--out", default=None, help="output CSV (default: submission.csv for asr, predictions.csv for reg)")
    p.add_argument("--batch-size", type=int, default=32)
    g = p.add_argument_group("asr")
    g.add_argument("--no-postprocess", dest="postprocess", action="store_false",
                   help="skip the Bengali post-processing (NFC, spaces, closing danda)")
    g.add_argument("--beam", type=int, default=0, help="CTC prefix beam search of this width; 0 = greedy")
    g.add_argument("--lm", default=None, metavar="PATH",
                   help="word n-gram LM for the beam: an ARPA or KenLM binary file (kenlm when installed), a "
                        "Hugging Face language_model folder, or a text file / CSV (sentence column) to build a "
                        "3-gram from (model/decoding.py); with --export it is written beside the model")
    g.add_argument("--lm-weight", type=float, default=None,
                   help="weight of the LM's log probability (default: a language_model folder's alpha, else 0.5)")
    g.add_argument("--chunk-seconds", type=float, default=30.0,
                   help="a longer clip goes through the model in windows of this length (0 = always whole)")
    g.add_argument("--stride-seconds", type=float, default=5.0,
                   help="the windows' overlap on each side, dropped from each window's output")
    g.add_argument("--lm-tune", action="store_true",
                   help="choose --lm-weight and --word-bonus on the run's validation clips (a 4 x 4 grid, printed); "
                        "with --export they are stored in its language_model/attrs.json")
    g.add_argument("--word-bonus", type=float, default=None,
                   help="added per word, against the LM's short bias (default: the folder's beta, else 1.0)")
    g = p.add_argument_group("lm")
    g.add_argument("--prompt", default="", help="text to continue")
    g.add_argument("--max-new-tokens", type=int, default=300)
    g.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    g.add_argument("--top-k", type=int, default=40, help="sample among the k likeliest tokens; 0 = all")
    g.add_argument("--num-samples", type=int, default=1)
    g.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        if args.ckpt == "auto":
            args.ckpt = find_run(args.task)
        if args.export:
            export(args, device)
        elif args.task == "asr":
            infer_asr(args, device)
        elif args.task == "reg":
            infer_reg(args, device)
        else:
            infer_lm(args, device)
    except (InferError, DataError, ckpt.CheckpointError, WeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
