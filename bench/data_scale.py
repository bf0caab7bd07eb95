"""Start-up at competition scale: seconds from process launch to the first training step, and peak
memory, for a part 1 and a resumed part 2 on a Bengali.AI-sized manifest against the same on the
embedded sample.

    python bench/data_scale.py [--task asr|lm|all] [--work /tmp/baton_scale] [--workers 2] [--corpus-mb 1024]

asr: a folder shaped like the Bengali.AI download is built once under --work (and reused): a
train.csv of 963,636 rows (id,sentence,split; ~3% valid, as the competition's ~934k train / ~29k
valid) whose sentences and audio come from the embedded sample, and train_mp3s/{id}.mp3 as hard
links to its clips (no disk used beyond the CSV and the folder's entries). Then, each as a fresh
`train_part.py` process: part 1 (2 steps), part 2 resumed (to step 4), the same part 2 with the
manifest cache removed first (what every resumed part cost before the cache), and the same three
on the embedded sample. The first step is the `plan:` line train_part.py prints just before it.

lm: a text corpus of --corpus-mb MB (default 1 GB) is written once: the embedded Shakespeare over
and over, each copy's lines numbered so it is not one block repeated (BPE's word cache still sees
the same words, as in any real text). For the GPT-2 tokenizer, a GPT-2-format byte-level BPE
(vocab.json + merges.txt) is trained on the embedded corpus with the `tokenizers` library, beside
a small random GPT-2 in Hugging Face's layout (no download here; Baton reads the same files as
from real GPT-2). For each tokenizer: part 1 (tokenizes into the token file, 2 steps), part 2
resumed (to step 4), the same part 2 with the token file removed first (what every part cost
before: tokenizing again), and part 1 and 2 on the embedded corpus.

Memory: the largest process's peak RSS (the kernel's count, from wait4), and the peak of the
process tree's PSS (loader workers included, shared pages counted once; sampled 10 times a
second from /proc). Prints figures; asserts nothing.
"""

import argparse
import csv
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from data import audio, manifest  # noqa: E402
from data import text as text_data  # noqa: E402

BENGALI_ROWS, BENGALI_VALID = 963_636, 28_700


# -----------------------------------------------------------------------------
# Measuring one part


def run_part(cmd, env=None):
    """(seconds from launch to the first training step or None, peak RSS MB of the largest process,
    peak PSS MB of the process tree, return code, output) of one command."""
    env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}  # lines as they happen, not at exit
    launched = time.monotonic()
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    lines, first_step = [], []

    def read(stream):
        for line in stream:
            lines.append(line)
            if line.startswith("plan:") and not first_step:
                first_step.append(time.monotonic() - launched)

    readers = [threading.Thread(target=read, args=(s,), daemon=True) for s in (child.stdout, child.stderr)]
    for r in readers:
        r.start()
    peak_pss = 0
    while not _exited(child):  # not poll(): that would reap it, and wait4 below gives its rusage
        peak_pss = max(peak_pss, _tree_pss_kb(child.pid))
        time.sleep(0.1)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    for r in readers:
        r.join()
    return (first_step[0] if first_step else None, usage.ru_maxrss / 1024, peak_pss / 1024, child.returncode,
            "".join(lines))


def _exited(child):
    """True once the child is a zombie (finished, not yet reaped: wait4 then gives its rusage)."""
    try:
        with open(f"/proc/{child.pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def _tree_pss_kb(pid):
    """Proportional set size of a process and its descendants, in kB (0 where /proc cannot tell)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except (OSError, StopIteration, ValueError):
            continue
    return total


# -----------------------------------------------------------------------------
# asr


def build_bengali_folder(folder, rows=BENGALI_ROWS, valid=BENGALI_VALID):
    """A Bengali.AI-shaped folder of `rows` clips (built once: train.csv is written last, atomically)."""
    if os.path.isfile(os.path.join(folder, "train.csv")):
        return
    with open(os.path.join(manifest.EMBEDDED, "train.csv"), newline="", encoding="utf-8") as f:
        sample = list(csv.DictReader(f))
    pools = {split: [r for r in sample if r["split"] == split] for split in ("train", "valid")}
    rng = np.random.default_rng(13)
    ids = set()
    while len(ids) < rows:  # unique 12-hex-digit ids, as the competition's
        ids.update(f"{v:012x}" for v in rng.integers(0, 2 ** 48, rows - len(ids)))
    is_valid = np.zeros(rows, dtype=bool)
    is_valid[rng.choice(rows, valid, replace=False)] = True
    mp3s = os.path.join(folder, "train_mp3s")
    shutil.rmtree(mp3s, ignore_errors=True)  # a build that was cut short
    os.makedirs(mp3s)
    started = time.monotonic()
    tmp = os.path.join(folder, ".train.csv.partial")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "sentence", "split"])
        for id_, v in zip(sorted(ids), is_valid):
            split = "valid" if v else "train"
            source = pools[split][int(rng.integers(len(pools[split])))]
            os.link(os.path.join(manifest.EMBEDDED, "train_mp3s", source["id"] + ".mp3"), os.path.join(mp3s, id_ + ".mp3"))
            w.writerow([id_, source["sentence"], split])
    os.replace(tmp, os.path.join(folder, "train.csv"))
    print(f"built {folder}: {rows:,} rows ({valid:,} valid) in {time.monotonic() - started:.0f} s")


def bench_asr(work, workers):
    folder = os.path.join(work, "bengali")
    os.makedirs(folder, exist_ok=True)
    build_bengali_folder(folder)
    size = os.path.getsize(os.path.join(folder, "train.csv"))
    print(f"asr: {folder}/train.csv {size / 1e6:.0f} MB; num_workers={workers}; {os.cpu_count()} CPUs")
    results = []
    for label, data in ((f"{BENGALI_ROWS // 1000}k clips", folder), ("embedded", None)):
        out = os.path.join(work, "runs", "asr_" + ("embedded" if data is None else "bengali"))
        shutil.rmtree(out, ignore_errors=True)
        base = [sys.executable, os.path.join(ROOT, "train_part.py"), "--task", "asr", "--budget-hours", "1",
                "--out", out, "--set", f"num_workers={workers}"] + ([] if data is None else ["--data", data])
        for part, steps, note in ((1, 2, "fresh"), (2, 4, "resumed"), (2, 4, "resumed, cache removed")):
            if note == "resumed, cache removed":
                cache = os.path.join(out, audio.CACHE_NAME)
                if os.path.exists(cache):
                    os.remove(cache)
                else:
                    note = "resumed (no cache: small set)"
                for name in os.listdir(out):  # resume from part 1 again
                    if name == "checkpoint_part2.safetensors":
                        os.remove(os.path.join(out, name))
            first, rss, pss, rc, output = run_part(base + ["--part", str(part), "--max-steps", str(steps)])
            reused = "is reused" in output
            results.append((label, part, note, first, rss, pss, rc, reused))
            if rc != 0:
                print(f"  {label} part {part} exited {rc}:\n" + output[-2000:])
    return results, [(f"{BENGALI_ROWS // 1000}k clips", "embedded")]


# -----------------------------------------------------------------------------
# lm


def make_corpus(path, megabytes):
    """A text corpus of at least `megabytes` MB (built once, written atomically)."""
    if os.path.exists(path) and os.path.getsize(path) >= megabytes * 1e6:
        return path
    lines = text_data.read_corpus().splitlines()
    tmp = path + ".partial"
    with open(tmp, "w", encoding="utf-8") as f:
        copy = 0
        while f.tell() < megabytes * 1e6:
            f.write("".join(f"{copy}.{i} {line}\n" for i, line in enumerate(lines)))
            copy += 1
    os.replace(tmp, path)
    return path


def make_gpt2_folder(folder):
    """A Hugging Face GPT-2 folder: a byte-level BPE of 50,257 entries at most, trained on the
    embedded corpus, and a small random model of that vocabulary (built once)."""
    if os.path.exists(os.path.join(folder, "model.safetensors")):
        return folder
    from tokenizers import ByteLevelBPETokenizer
    from model.gpt import GPT, GPTConfig
    os.makedirs(folder, exist_ok=True)
    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train([text_data.DEFAULT_CORPUS], vocab_size=50_257, min_frequency=2, special_tokens=["<|endoftext|>"])
    bpe.save_model(folder)
    vocab_size = bpe.get_vocab_size()
    GPT(GPTConfig(vocab_size=vocab_size, block_size=64, n_layer=4, n_head=4, n_embd=128)).save_pretrained(folder)
    return folder


def bench_lm(work, megabytes):
    corpus = make_corpus(os.path.join(work, "corpus.txt"), megabytes)
    gpt2 = make_gpt2_folder(os.path.join(work, "gpt2"))
    size = os.path.getsize(corpus)
    print(f"lm: {corpus} {size / 1e6:,.0f} MB; {os.cpu_count()} CPUs")
    results, amount = [], f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.0f} MB"
    for tokenizer in ("byte", "gpt2"):
        settings = [] if tokenizer == "byte" else ["--set", "tokenizer=gpt2", "--set", f"pretrained={gpt2}"]
        for label, data in ((f"{amount} {tokenizer}", corpus), (f"embedded {tokenizer}", None)):
            out = os.path.join(work, "runs", f"lm_{tokenizer}_{'embedded' if data is None else 'big'}")
            shutil.rmtree(out, ignore_errors=True)
            base = [sys.executable, os.path.join(ROOT, "train_part.py"), "--task", "lm", "--budget-hours", "2",
                    "--out", out] + settings + ([] if data is None else ["--data", data])
            for part, steps, note in ((1, 2, "fresh"), (2, 4, "resumed"), (2, 4, "resumed, token file removed")):
                if note == "resumed, token file removed":
                    shutil.rmtree(os.path.join(out, "tokens"), ignore_errors=True)
                    os.remove(os.path.join(out, "checkpoint_part2.safetensors"))  # resume from part 1 again
                first, rss, pss, rc, output = run_part(base + ["--part", str(part), "--max-steps", str(steps)])
                results.append((label, part, note, first, rss, pss, rc, "data: tokens from" in output))
                built = [line for line in output.splitlines() if line.startswith("data: tokenized")]
                if built:
                    print("  " + built[0])
                if rc != 0:
                    print(f"  {label} part {part} exited {rc}:\n" + output[-2000:])
    return results, [(f"{amount} {tokenizer}", f"embedded {tokenizer}") for tokenizer in ("byte", "gpt2")]


def print_table(results, pairs):
    print(f"\n{'input':<14s} {'part':>4s}  {'':<36s} {'to first step':>13s} {'peak RSS':>9s} {'tree PSS':>9s}  rc")
    for label, part, note, first, rss, pss, rc, reused in results:
        seconds = "-" if first is None else f"{first:.1f} s"
        print(f"{label:<14s} {part:>4d}  {note + (' (reused)' if reused else ''):<36s} {seconds:>13s} "
              f"{rss:>6.0f} MB {pss:>6.0f} MB  {rc}")
    by = {(label, note): first for label, _, note, first, *_ in results}
    for big, small in pairs:  # each large input against the embedded data
        for note in [n for (label, n) in by if label == big and n.startswith("resumed")]:
            if by.get((big, note)) and by.get((small, "resumed")):
                print(f"{note} part 2, {big} / {small}: {by[(big, note)] / by[(small, 'resumed')]:.2f}x")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=["asr", "lm", "all"], default="all")
    p.add_argument("--work", default="/tmp/baton_scale", help="built data is kept here and reused")
    p.add_argument("--workers", type=int, default=2, help="asr loader workers (the issue measured 2)")
    p.add_argument("--corpus-mb", type=int, default=1024, help="lm corpus size in MB")
    args = p.parse_args()
    os.makedirs(args.work, exist_ok=True)
    if args.task in ("asr", "all"):
        print_table(*bench_asr(args.work, args.workers))
    if args.task in ("lm", "all"):
        print_table(*bench_lm(args.work, args.corpus_mb))


if __name__ == "__main__":
    main()
