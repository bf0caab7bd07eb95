"""Greedy against beam search (with and without a word LM) on the embedded Bengali test clips:
WER, CER and decoding time, from one trained asr checkpoint.

    python train_part.py --task asr --part 1 --budget-hours 0.25     # the README's demo model
    python bench/asr_decoding.py --ckpt runs/asr [--widths 16,128]

The model runs once over the 20 clips; then each decoder turns the same log probabilities into
text, so the times are decoding alone (per clip and per second of audio, on this CPU). The LM is
a 3-gram built from the embedded training transcripts only (train.csv, split "train"). Prints
figures; asserts nothing.
"""

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import torch  # noqa: E402

from data import audio, manifest, transcripts  # noqa: E402
import infer  # noqa: E402
from model import decoding  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", default=os.path.join("runs", "asr"))
    p.add_argument("--widths", default="16,128")
    p.add_argument("--lm-weight", type=float, default=0.5)
    p.add_argument("--word-bonus", type=float, default=1.0)
    args = p.parse_args()
    model, meta = infer.load_model(args.ckpt, "asr", torch.device("cpu"))
    vocab = transcripts.CharVocab.from_dict(meta["task_meta"]["vocab"])
    utterances = manifest.read_manifest(os.path.join(manifest.EMBEDDED, "test_references.csv"))
    clips = audio.AudioDataset(utterances)
    refs = [transcripts.normalize_text(u.sentence) for u in utterances]
    outputs = []  # (log probs (T, V), seconds of audio) per clip
    with torch.no_grad():
        for i in range(len(clips)):
            batch = audio.collate([clips[i]])
            logits, frames = model(batch["input_values"], batch["attention_mask"])
            outputs.append((torch.log_softmax(logits[0, :int(frames[0])].float(), dim=-1).numpy(),
                            len(clips[i]["audio"]) / audio.SAMPLE_RATE))
    seconds = sum(s for _, s in outputs)
    lm = decoding.read_lm(os.path.join(manifest.EMBEDDED, "train.csv"), transcripts.sentences_of)

    def greedy(lp):
        return vocab.decode_ctc(lp.argmax(axis=1))
    decoders = [("greedy (best path)", greedy)]
    for width in (int(w) for w in args.widths.split(",")):
        decoders.append((f"beam {width}", lambda lp, w=width: decoding.prefix_beam_search(lp, vocab, w)))
        decoders.append((f"beam {width} + 3-gram LM", lambda lp, w=width: decoding.prefix_beam_search(
            lp, vocab, w, lm, args.lm_weight, args.word_bonus)))
    print(f"{len(outputs)} clips, {seconds:.1f} s of audio; checkpoint {args.ckpt} (global step "
          f"{meta.get('global_step')}); LM weight {args.lm_weight}, word bonus {args.word_bonus}")
    print(f"{'decoder':28s} {'WER':>6s} {'CER':>6s} {'ms/clip':>8s} {'ms per s of audio':>18s}")
    results = {}
    for name, decode in decoders:
        t0 = time.perf_counter()
        hyps = [transcripts.normalize_text(decode(lp)) for lp, _ in outputs]
        elapsed = time.perf_counter() - t0
        results[name] = (transcripts.wer(refs, hyps), transcripts.cer(refs, hyps), hyps)
        print(f"{name:28s} {results[name][0]:6.3f} {results[name][1]:6.3f} {elapsed / len(outputs) * 1e3:8.1f} "
              f"{elapsed / seconds * 1e3:18.1f}")
    greedy_hyps = results["greedy (best path)"][2]
    for name, (_, _, hyps) in results.items():
        if name.startswith("beam") and "LM" not in name:
            worse = sum(transcripts.wer([r], [h]) > transcripts.wer([r], [g]) for r, h, g in zip(refs, hyps, greedy_hyps))
            print(f"{name} without an LM: worse than greedy on {worse} of {len(refs)} clips (by WER)")


if __name__ == "__main__":
    main()
