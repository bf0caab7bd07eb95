"""Greedy against beam search (with and without a word LM) on the embedded Bengali test clips:
WER, CER and decoding time, from one trained asr checkpoint; optionally side by side with
pyctcdecode + KenLM on the same log probabilities and the same LM (issue 24).

    python train_part.py --task asr --part 1 --budget-hours 0.25     # the README's demo model
    python train_part.py --task asr --part 2 --budget-hours 0.25     # if a busy CPU stopped it short
    python bench/asr_decoding.py --ckpt runs/asr [--widths 16,128] [--lm-weight 0.5] [--word-bonus 1.0]
    python bench/asr_decoding.py --ckpt runs/asr --peer-python /work/venvs/peer/bin/python [--grid]

The model runs once over the 20 clips; then each decoder turns the same log probabilities into
text, so the times are decoding alone (per clip and per second of audio, on this CPU; the fastest
of --repeat passes, for both decoders). The LM is
a 3-gram built from the embedded training transcripts only (train.csv, split "train"), written
as an ARPA file with NgramLM.write_arpa and read back with decoding.read_lm, as infer.py --lm does
(through kenlm when the project's Python has it, else the plain reader; they score alike), so
Baton's decoder and pyctcdecode's KenLM score the very same numbers (ARPA keeps 6 decimals).

--peer-python names a Python that has pyctcdecode and kenlm; the project's own environment does
not need them. One that works (kenlm 0.3 compiles from source, about 3 minutes):

    python -m venv /work/venvs/peer
    /work/venvs/peer/bin/pip install "numpy<2" pyctcdecode==0.5.0 kenlm

The log probabilities, the labels and the ARPA file go to a temporary folder; bench/ctc_peer.py
decodes them under that Python (pyctcdecode's default pruning, its decode() entry point) and its
rows join the table: pyctcdecode's alpha is --lm-weight, its beta --word-bonus (both scale the
natural-log LM score and add per word, as Baton's do). --grid adds a small grid of (LM weight,
word bonus) pairs at beam --grid-width and each decoder's best pair. Prints figures; asserts nothing.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import torch  # noqa: E402

from data import audio, manifest, transcripts  # noqa: E402
import infer  # noqa: E402
from model import decoding  # noqa: E402

PEER = os.path.join(ROOT, "bench", "ctc_peer.py")
GRID = [(w, b) for w in (0.3, 0.5, 0.8, 1.2) for b in (0.0, 1.0, 2.0, 3.0)]  # (LM weight, word bonus)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", default=os.path.join("runs", "asr"))
    p.add_argument("--widths", default="16,128")
    p.add_argument("--lm-weight", type=float, default=0.5)
    p.add_argument("--word-bonus", type=float, default=1.0)
    p.add_argument("--peer-python", default=None, help="a Python with pyctcdecode and kenlm (see the docstring)")
    p.add_argument("--grid", action="store_true", help="also a (LM weight, word bonus) grid at --grid-width")
    p.add_argument("--grid-width", type=int, default=64)
    p.add_argument("--repeat", type=int, default=5, help="decode each table row this many times, keep the fastest")
    return p.parse_args()


def model_outputs(ckpt):
    """The checkpoint's vocabulary and metadata, the test references, and per clip the log probs
    (T, V) float32 and its seconds of audio."""
    model, meta = infer.load_model(ckpt, "asr", torch.device("cpu"))
    vocab = transcripts.CharVocab.from_dict(meta["task_meta"]["vocab"])
    utterances = manifest.read_manifest(os.path.join(manifest.EMBEDDED, "test_references.csv"))
    clips = audio.AudioDataset(utterances)
    refs = [transcripts.normalize_text(u.sentence) for u in utterances]
    outputs = []
    with torch.no_grad():
        for i in range(len(clips)):
            batch = audio.collate([clips[i]])
            logits, frames = model(batch["input_values"], batch["attention_mask"])
            outputs.append((torch.log_softmax(logits[0, :int(frames[0])].float(), dim=-1).numpy(),
                            len(clips[i]["audio"]) / audio.SAMPLE_RATE))
    return vocab, meta, refs, outputs


def timed(decode, outputs, repeat=1):
    """The normalised texts of every clip and the seconds the decode calls took (the fastest of
    `repeat` passes: on a busy 2-core machine one pass can be twice another)."""
    elapsed = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        texts = [decode(lp) for lp, _ in outputs]
        elapsed = min(elapsed, time.perf_counter() - t0)
    return [transcripts.normalize_text(t) for t in texts], elapsed


def baton_rows(outputs, vocab, lm, widths, weight, bonus, repeat):
    """{(decoder, beam, with LM): (texts, seconds)} for greedy and Baton's beam search."""
    rows = {("greedy (best path)", 1, False): timed(lambda lp: vocab.decode_ctc(lp.argmax(axis=1)), outputs, repeat)}
    for width in widths:
        rows[("Baton", width, False)] = timed(
            lambda lp: decoding.prefix_beam_search(lp, vocab, beam=width), outputs, repeat)
        rows[("Baton", width, True)] = timed(lambda lp: decoding.prefix_beam_search(
            lp, vocab, beam=width, lm=lm, lm_weight=weight, word_bonus=bonus), outputs, repeat)
    return rows


def run_peer(python, folder, outputs, vocab, arpa, args, pairs):
    """bench/ctc_peer.py under `python` on the same log probs, labels and ARPA file; its JSON."""
    npz, labels = os.path.join(folder, "log_probs.npz"), os.path.join(folder, "labels.json")
    np.savez(npz, *[lp.astype(np.float32) for lp, _ in outputs])
    with open(labels, "w", encoding="utf-8") as f:
        json.dump({"labels": [vocab.id_to_token[i] for i in range(len(vocab))], "blank": vocab.pad_id,
                   "delimiter": vocab.token_to_id[transcripts.DELIM], "specials": sorted(vocab.special_ids)},
                  f, ensure_ascii=False)
    command = [python, PEER, "--npz", npz, "--labels", labels, "--lm", arpa, "--widths", args.widths,
               "--alpha", str(args.lm_weight), "--beta", str(args.word_bonus), "--grid-width", str(args.grid_width),
               "--repeat", str(args.repeat),
               "--pairs", ",".join(f"{w}:{b}" for w, b in pairs)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{PEER} failed under {python} (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def peer_rows(peer, grid_width):
    """{(decoder, beam, with LM): (texts, seconds)} of the main table, and {(weight, bonus): texts} of
    the grid, from ctc_peer.py's runs (a grid pair equal to the main one at the same width is both)."""
    rows, grid = {}, {}
    for run in peer["runs"]:
        texts = [transcripts.normalize_text(t) for t in run["texts"]]
        if run["lm"] and run["beam"] == grid_width and (run["alpha"], run["beta"]) not in grid:
            grid[(run["alpha"], run["beta"])] = texts
        rows.setdefault(("pyctcdecode", run["beam"], run["lm"]), (texts, run["seconds"]))
    return rows, grid


def print_table(rows, refs, outputs, widths):
    seconds = sum(s for _, s in outputs)
    print(f"{'decoder':28s} {'beam':>5s} {'WER':>6s} {'CER':>6s} {'ms/clip':>8s} {'ms per s of audio':>18s}")
    order = [("greedy (best path)", 1, False)]
    order += [(name, w, lm) for w in widths for lm in (False, True) for name in ("Baton", "pyctcdecode")]
    for key in order:
        if key not in rows:
            continue
        (name, width, lm), (hyps, elapsed) = key, rows[key]
        label = name + (" + LM" if lm and name == "Baton" else " + kenlm" if lm else "")
        print(f"{label:28s} {width if width > 1 else '-':>5} {transcripts.wer(refs, hyps):6.3f} "
              f"{transcripts.cer(refs, hyps):6.3f} {elapsed / len(outputs) * 1e3:8.1f} {elapsed / seconds * 1e3:18.1f}")
    greedy = rows[order[0]][0]
    for (name, width, lm), (hyps, _) in rows.items():
        if width > 1 and not lm:
            worse = sum(transcripts.wer([r], [h]) > transcripts.wer([r], [g]) for r, h, g in zip(refs, hyps, greedy))
            print(f"{name} beam {width} without an LM: worse than greedy on {worse} of {len(refs)} clips (by WER)")


def print_grid(baton, peer, refs, width):
    """Each pair's WER / CER for both decoders, then each one's best pair (lowest WER, then CER)."""
    print(f"\ngrid at beam {width}: LM weight (alpha) x word bonus (beta)")
    print(f"{'weight':>6s} {'bonus':>5s}  {'Baton WER':>9s} {'CER':>6s}  {'pyctcdecode WER':>15s} {'CER':>6s}")
    scores = {name: {} for name in ("Baton", "pyctcdecode")}
    for pair in GRID:
        cells = ""
        for name, texts in (("Baton", baton), ("pyctcdecode", peer)):
            if pair in texts:
                scores[name][pair] = (transcripts.wer(refs, texts[pair]), transcripts.cer(refs, texts[pair]))
                cells += f"  {scores[name][pair][0]:{9 if name == 'Baton' else 15}.3f} {scores[name][pair][1]:6.3f}"
        print(f"{pair[0]:6.1f} {pair[1]:5.1f}{cells}")
    for name, by_pair in scores.items():
        if by_pair:
            pair = min(by_pair, key=lambda p: by_pair[p])
            print(f"best {name}: weight {pair[0]}, bonus {pair[1]}: WER {by_pair[pair][0]:.3f}, CER {by_pair[pair][1]:.3f}")


def main():
    args = parse_args()
    widths = [int(w) for w in args.widths.split(",")]
    vocab, meta, refs, outputs = model_outputs(args.ckpt)
    built = decoding.read_lm(os.path.join(manifest.EMBEDDED, "train.csv"), transcripts.sentences_of)
    pairs = GRID if args.grid else []
    with tempfile.TemporaryDirectory() as folder:
        arpa = os.path.join(folder, "train_3gram.arpa")
        built.write_arpa(arpa)
        lm = decoding.read_lm(arpa, transcripts.sentences_of)  # what KenLM reads, to the same 6 decimals
        rows = baton_rows(outputs, vocab, lm, widths, args.lm_weight, args.word_bonus, args.repeat)
        baton_grid = {pair: timed(lambda lp: decoding.prefix_beam_search(
            lp, vocab, beam=args.grid_width, lm=lm, lm_weight=pair[0], word_bonus=pair[1]), outputs)[0]
            for pair in pairs}
        peer = run_peer(args.peer_python, folder, outputs, vocab, arpa, args, pairs) if args.peer_python else None
    print(f"{len(outputs)} clips, {sum(s for _, s in outputs):.1f} s of audio; checkpoint {args.ckpt} (global step "
          f"{meta.get('global_step')}); LM weight {args.lm_weight}, word bonus {args.word_bonus}; "
          f"Baton reads the ARPA file with {type(lm).__name__}")
    peer_grid = {}
    if peer:
        more, peer_grid = peer_rows(peer, args.grid_width)
        rows.update(more)
        print(f"pyctcdecode {peer['versions']['pyctcdecode']}, kenlm {peer['versions']['kenlm']}: KenLM load "
              f"{peer['lm_load_s']:.2f} s (not in the times); {json.dumps(peer['settings'])}; frames that would "
              f"let <unk>/<s>/</s> into a beam: {peer['special_frames']}")
    print_table(rows, refs, outputs, widths)
    if pairs:
        print_grid(baton_grid, peer_grid, refs, args.grid_width)


if __name__ == "__main__":
    main()
