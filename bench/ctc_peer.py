"""pyctcdecode's CTC beam search (with and without a KenLM model) on log probabilities that
bench/asr_decoding.py wrote, for a side-by-side comparison with Baton's decoder (issue 24).

Runs under a separate Python that has pyctcdecode 0.5 and kenlm, never the project's: it imports
only NumPy, pyctcdecode, kenlm and the standard library (see bench/asr_decoding.py for the venv).

    /work/venvs/peer/bin/python bench/ctc_peer.py --npz LOGPROBS.npz --labels LABELS.json \
        [--lm LM.arpa] [--alpha 0.5] [--beta 1.0] [--widths 16,128] [--repeat 5] [--grid-width 64 --pairs 0.3:0,0.5:1]

--npz holds one float32 (T, V) array of log-softmax outputs per clip (np.savez order: arr_0,
arr_1, ...). --labels is {"labels": [...], "blank": id, "delimiter": id, "specials": [ids]}: the
model's vocabulary and the roles of its tokens. Prints one JSON object on stdout: for each width,
without and with the LM, and for each (alpha, beta) pair of the grid, the decoded texts and the
seconds the decode calls took (building the decoder, which loads the LM, is timed apart).

Labels: pyctcdecode reads "" as the CTC blank and " " as the word boundary, so the blank becomes ""
and the delimiter " ". The other special tokens (<unk>, <s>, </s>) become private-use characters
that no transcript holds; they stay ordinary labels to pyctcdecode (its own <unk> substitute "⁇" has
no special scoring in a character alphabet either), so the output reports how many frames would let
one into a beam, and strips any from the texts. Pruning is pyctcdecode's default unless told.
"""

import argparse
import json
import sys
import time
from importlib import metadata

import numpy as np
import pyctcdecode
from pyctcdecode import constants

PRIVATE_USE = 0xE000  # first code point of Unicode's private use area: never in a transcript


def peer_labels(vocab):
    """Baton's labels in pyctcdecode's convention, and the stand-ins for the other special tokens."""
    labels = list(vocab["labels"])
    stand_ins = {}
    for n, i in enumerate(sorted(vocab["specials"])):
        if i != vocab["blank"]:
            stand_ins[i] = labels[i] = chr(PRIVATE_USE + n)
    labels[vocab["blank"]] = ""
    labels[vocab["delimiter"]] = " "
    return labels, stand_ins


def special_frames(clips, ids, token_min_logp):
    """How many frames would let a special token into a beam (pyctcdecode tries a frame's labels at or
    above token_min_logp, and its likeliest always); 0 means the stand-ins cannot change a result."""
    if not ids:
        return 0
    ids = np.asarray(sorted(ids))
    return int(sum(((lp[:, ids] >= token_min_logp).any(axis=1) | np.isin(lp.argmax(axis=1), ids)).sum()
                   for lp in clips))


def arpa_unigrams(path):
    """Every word of an ARPA file's 1-gram section. pyctcdecode's own reader keeps only the lines
    with a backoff weight (three tab-separated fields), which can drop words; a binary has none."""
    if not path.endswith(".arpa"):
        return None
    words, inside = [], False
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line.startswith("\\"):
                if inside:
                    break
                inside = line == "\\1-grams:"
            elif inside and line:
                words.append(line.split("\t")[1])
    return words


def decode_all(decoder, clips, width, args, repeat=1):
    """The texts of all clips and the seconds the decode calls took (the fastest of `repeat` passes)."""
    elapsed = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        if args.no_prune_history:  # decode_beams: prune_history=False, what Hugging Face's processor calls
            texts = [decoder.decode_beams(lp, beam_width=width, beam_prune_logp=args.beam_prune_logp,
                                          token_min_logp=args.token_min_logp)[0][0] for lp in clips]
        else:  # decode(): the documented entry point, prune_history=True
            texts = [decoder.decode(lp, beam_width=width, beam_prune_logp=args.beam_prune_logp,
                                    token_min_logp=args.token_min_logp) for lp in clips]
        elapsed = min(elapsed, time.perf_counter() - t0)
    return texts, elapsed


def run_all(clips, labels, strip, args):
    """Every decoding asked for, as a list of {beam, lm, alpha, beta, texts, seconds}."""
    def clean(texts):
        return [" ".join(t.translate(strip).split()) for t in texts]
    widths = [int(w) for w in args.widths.split(",") if w]
    runs = []
    plain = pyctcdecode.build_ctcdecoder(labels)
    for width in widths:
        texts, seconds = decode_all(plain, clips, width, args, args.repeat)
        runs.append({"beam": width, "lm": False, "texts": clean(texts), "seconds": seconds})
    if not args.lm:
        return runs, None
    t0 = time.perf_counter()
    decoder = pyctcdecode.build_ctcdecoder(labels, args.lm, unigrams=arpa_unigrams(args.lm), alpha=args.alpha,
                                           beta=args.beta, unk_score_offset=args.unk_score_offset)
    load_s = time.perf_counter() - t0
    pairs = [(width, args.alpha, args.beta) for width in widths]
    pairs += [(args.grid_width, float(a), float(b)) for a, b in (p.split(":") for p in args.pairs.split(",") if p)]
    for n, (width, alpha, beta) in enumerate(pairs):
        decoder.reset_params(alpha=alpha, beta=beta)  # the same loaded LM, new weights
        texts, seconds = decode_all(decoder, clips, width, args, args.repeat if n < len(widths) else 1)
        runs.append({"beam": width, "lm": True, "alpha": alpha, "beta": beta, "texts": clean(texts),
                     "seconds": seconds})
    return runs, load_s


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--npz", required=True)
    p.add_argument("--labels", required=True)
    p.add_argument("--lm", default=None, help="an ARPA file or a KenLM binary")
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--beta", type=float, default=1.0)
    p.add_argument("--widths", default="16,128")
    p.add_argument("--grid-width", type=int, default=64)
    p.add_argument("--repeat", type=int, default=1, help="decode each of --widths this many times, keep the fastest")
    p.add_argument("--pairs", default="", help="alpha:beta,... decoded with the LM at --grid-width")
    p.add_argument("--beam-prune-logp", type=float, default=constants.DEFAULT_PRUNE_LOGP)
    p.add_argument("--token-min-logp", type=float, default=constants.DEFAULT_MIN_TOKEN_LOGP)
    p.add_argument("--unk-score-offset", type=float, default=constants.DEFAULT_UNK_LOGP_OFFSET)
    p.add_argument("--no-prune-history", action="store_true")
    args = p.parse_args()
    with np.load(args.npz) as f:
        clips = [f[f"arr_{i}"].astype(np.float32) for i in range(len(f.files))]
    with open(args.labels, encoding="utf-8") as f:
        vocab = json.load(f)
    labels, stand_ins = peer_labels(vocab)
    runs, load_s = run_all(clips, labels, {ord(c): None for c in stand_ins.values()}, args)
    json.dump({"versions": {name: metadata.version(name) for name in ("pyctcdecode", "kenlm", "numpy")},
               "settings": {"beam_prune_logp": args.beam_prune_logp, "token_min_logp": args.token_min_logp,
                            "unk_score_offset": args.unk_score_offset, "lm_score_boundary": True,
                            "prune_history": not args.no_prune_history},
               "special_frames": special_frames(clips, list(stand_ins), args.token_min_logp),
               "lm_load_s": load_s, "runs": runs}, sys.stdout, ensure_ascii=False)
    print()


if __name__ == "__main__":
    main()
