"""Loading a competition-sized word LM: Baton's ARPA reader (arrays, model/decoding.py's ArpaLM)
against kenlm.Model when kenlm is installed, each in a fresh process: seconds and peak memory.

    python bench/arpa_load.py [--megabytes 550] [--work /tmp/baton-arpa]

The ARPA file is a synthetic 3-gram of 200,000 words (made once, then reused): Zipf-distributed
-like word ids, so its size per n-gram is that of a real one. Prints figures; asserts nothing.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_arpa(path, megabytes, words=200_000, seed=0):
    """A 3-gram ARPA file of about `megabytes` MB (written once, atomically)."""
    if os.path.exists(path):
        return
    rng = np.random.default_rng(seed)
    vocab = [f"w{i:x}" for i in range(words)]
    # bigrams and trigrams share what is left after the unigrams (~30 and ~38 bytes a line; some
    # pairs repeat and are merged)
    n2 = n3 = int((megabytes * 1e6 - words * 20) / 2 / 26)
    zipf = lambda n: (rng.pareto(0.8, n) * 50).astype(np.int64) % words  # noqa: E731  (frequent words first)
    bigrams = np.unique(np.stack([zipf(n2), zipf(n2)], axis=1), axis=0)
    # a trigram's first two words are a listed bigram, and so are its last two, as KenLM requires
    trigrams = np.unique(np.concatenate([bigrams[rng.integers(len(bigrams), size=n3)], zipf(n3)[:, None]], axis=1),
                         axis=0)
    bigrams = np.unique(np.concatenate([bigrams, trigrams[:, 1:]]), axis=0)
    tmp = path + ".partial"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(f"\\data\\\nngram 1={words + 3}\nngram 2={len(bigrams)}\nngram 3={len(trigrams)}\n\n\\1-grams:\n")
        f.write("-99.000000\t<s>\t-0.500000\n-1.000000\t</s>\n-6.000000\t<unk>\n")
        f.writelines(f"{-2 - math.log10(i + 1):.6f}\t{w}\t-0.300000\n" for i, w in enumerate(vocab))
        f.write("\n\\2-grams:\n")
        f.writelines(f"{-1.5 - (a % 7) / 10:.6f}\t{vocab[a]} {vocab[b]}\t-0.200000\n" for a, b in bigrams)
        f.write("\n\\3-grams:\n")
        f.writelines(f"{-1.2 - (c % 5) / 10:.6f}\t{vocab[a]} {vocab[b]} {vocab[c]}\n" for a, b, c in trigrams)
        f.write("\n\\end\\\n")
    os.replace(tmp, path)


LOADERS = {
    "Baton ArpaLM": "from model import decoding; lm = decoding.ArpaLM(PATH); "
                    "p = lm.log10_prob(['w1', 'w2'], 'w3')",
    "kenlm.Model": "import kenlm; lm = kenlm.Model(PATH); p = lm.score('w1 w2 w3', bos=False, eos=False)",
}


def load_in_a_fresh_process(name, path):
    """(seconds, peak RSS in GB) of one loader, from its own process's resource usage."""
    code = (f"import resource, sys, time, json; sys.path.insert(0, {ROOT!r}); PATH = {path!r}; t0 = time.time(); "
            f"{LOADERS[name]}; print(json.dumps([time.time() - t0, "
            f"resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode:
        return done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--megabytes", type=float, default=550)
    p.add_argument("--work", default="/tmp/baton-arpa")
    args = p.parse_args()
    os.makedirs(args.work, exist_ok=True)
    path = os.path.join(args.work, f"synthetic-{args.megabytes:g}mb.arpa")
    t0 = time.time()
    make_arpa(path, args.megabytes)
    print(f"{path}: {os.path.getsize(path) / 1e6:.0f} MB ({time.time() - t0:.0f} s to make or find)")
    print("| loader | seconds | peak memory |\n|---|---|---|")
    for name in LOADERS:
        result = load_in_a_fresh_process(name, path)
        print(f"| {name} | " + (f"{result} | - |" if isinstance(result, str) else f"{result[0]:.1f} | {result[1]:.2f} GB |"))


if __name__ == "__main__":
    main()
