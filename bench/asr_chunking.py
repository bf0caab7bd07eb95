"""Long clips whole against chunked (infer.py --chunk-seconds / --stride-seconds) with a trained
asr model: whether the chunked text is the whole clip's text, and what each costs in time and
peak memory as the clip grows.

    python train_part.py --task asr --part 1 --budget-hours 0.25     # the README's demo model
    python bench/asr_chunking.py --ckpt runs/asr [--minutes 0.5,2,5] [--chunks 30:5,10:2]

A long clip is the 20 embedded test clips one after another (0.25 s of silence between them),
repeated to the length asked for; its reference is their sentences in the same order. Each
measurement runs in a fresh process (peak memory is the process's, ru_maxrss): the model's log
probabilities of the clip, whole or in windows of chunk seconds overlapping by stride seconds on
each side, then greedy and beam-16 texts. Prints, for each length and setting, the seconds, peak
memory, WER against the reference, and the words where the chunked text differs from the whole
clip's (WER of chunked against whole). Prints figures; asserts nothing.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import torch  # noqa: E402

from data import audio, manifest, transcripts  # noqa: E402
import infer  # noqa: E402
from model import decoding  # noqa: E402

GAP_SECONDS = 0.25


def long_clip(minutes):
    """(samples (S,), reference text) of the test clips end to end, repeated to `minutes`."""
    utterances = manifest.read_manifest(os.path.join(manifest.EMBEDDED, "test_references.csv"))
    gap = torch.zeros(round(GAP_SECONDS * audio.SAMPLE_RATE))
    pieces, words, total = [], [], 0
    while total < minutes * 60 * audio.SAMPLE_RATE:
        for u in utterances:
            pieces += [audio.load_audio(u.path), gap]
            words.append(transcripts.normalize_text(u.sentence))
            total += len(pieces[-2]) + len(gap)
    return torch.cat(pieces), " ".join(words)


def measure(ckpt, minutes, chunk, stride):
    """One measurement (in this process): the texts, seconds of the model pass, and peak memory."""
    torch.set_num_threads(1)  # one core, as a decoding worker would have; the same for every setting
    samples, reference = long_clip(minutes)
    model, meta = infer.load_model(ckpt, "asr", torch.device("cpu"))
    vocab = transcripts.CharVocab.from_dict(meta["task_meta"]["vocab"])
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with torch.no_grad():
        if chunk:
            settings = types.SimpleNamespace(chunk_seconds=chunk, stride_seconds=stride)
            log_probs = infer.chunked_log_probs(model, samples, settings, torch.device("cpu"))
        else:
            logits, frames = model(samples[None], torch.ones(1, len(samples), dtype=torch.bool))
            log_probs = torch.log_softmax(logits[0, :int(frames[0])].float(), dim=-1)
    seconds = time.perf_counter() - t0
    lp = log_probs.numpy()
    return {"greedy": transcripts.normalize_text(vocab.decode_ctc(lp.argmax(axis=1))),
            "beam": transcripts.normalize_text(decoding.prefix_beam_search(lp, vocab, beam=16)),
            "reference": reference, "seconds": seconds, "audio_seconds": len(samples) / audio.SAMPLE_RATE,
            "frames": len(lp), "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_before_mb": rss_before / 1024}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", default=os.path.join("runs", "asr"))
    p.add_argument("--minutes", default="0.5,2,5")
    p.add_argument("--chunks", default="30:5,10:2", help="chunk:stride seconds pairs, beside the whole clip")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # minutes:chunk:stride, run in a child
    args = p.parse_args()
    if args.one:
        minutes, chunk, stride = (float(x) for x in args.one.split(":"))
        print(json.dumps(measure(args.ckpt, minutes, chunk, stride), ensure_ascii=False))
        return
    settings = [(0.0, 0.0)] + [tuple(float(x) for x in pair.split(":")) for pair in args.chunks.split(",")]
    print("WER / CER against the reference; 'vs whole': the chunked text's WER / CER against the whole clip's")
    print(f"{'clip':>7s} {'frames':>7s} {'setting':>12s} {'model s':>8s} {'peak MB':>8s} "
          f"{'greedy WER':>10s} {'CER':>6s} {'beam16 WER':>10s} {'CER':>6s} {'vs whole: greedy':>17s} {'beam16':>13s}")
    for minutes in (float(m) for m in args.minutes.split(",")):
        whole = None
        for chunk, stride in settings:
            done = subprocess.run([sys.executable, __file__, "--ckpt", args.ckpt, "--one", f"{minutes}:{chunk}:{stride}"],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{minutes:5.1f} m  {'whole' if not chunk else f'{chunk:g} s / {stride:g} s':>12s}: failed "
                      f"(exit {done.returncode}) {done.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            whole = r if not chunk else whole
            label = "whole" if not chunk else f"{chunk:g} s / {stride:g} s"
            errors = lambda ref, hyp: f"{transcripts.wer([ref], [hyp]):.3f} / {transcripts.cer([ref], [hyp]):.3f}"  # noqa: E731
            versus = "" if whole is None or not chunk else \
                f"{errors(whole['greedy'], r['greedy']):>17s} {errors(whole['beam'], r['beam']):>13s}"
            print(f"{r['audio_seconds'] / 60:5.1f} m {r['frames']:7d} {label:>12s} {r['seconds']:8.2f} {r['peak_mb']:8.0f} "
                  f"{transcripts.wer([r['reference']], [r['greedy']]):10.3f} {transcripts.cer([r['reference']], [r['greedy']]):6.3f} "
                  f"{transcripts.wer([r['reference']], [r['beam']]):10.3f} {transcripts.cer([r['reference']], [r['beam']]):6.3f} {versus}")

if __name__ == "__main__":
    main()
