"""No fault ends a session with more lost than the step that failed: an exception in a step (the
hand-off of the last finished step, then the traceback), a signal while setting up (exit 0 within
seconds, nothing broken). Out of memory, trained in pieces, is test_memory.py's.

Real train_part.py processes (tests/poisoned_part.py raises the faults on purpose), so that exit
codes, signals and what is left on disk are the real ones; `run` starts one for test_memory.py too."""

import csv
import math
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import ckpt
from conftest import assert_same_tensors, tiny_lm_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POISONED = os.path.join(ROOT, "tests", "poisoned_part.py")


def run(out, corpus, *extra, settings=(), env=None, part=1):
    """One part of the tiny lm run in its own process; returns (exit code, stdout, stderr)."""
    argv = [sys.executable, POISONED, "--task", "lm", "--part", str(part), "--out", str(out), "--data", corpus,
            *tiny_lm_args(**dict(settings)), *extra]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})
    return done.returncode, done.stdout, done.stderr


def handoff(out, part=1):
    return ckpt.load(os.path.join(out, ckpt.handoff_name(part)))


def test_an_exception_in_step_k_leaves_the_hand_off_of_step_k_minus_1_that_resumes_exactly(tmp_path, corpus):
    assert run(tmp_path / "whole", corpus, "--max-steps", "9")[0] == 0
    code, said, err = run(tmp_path / "failed", corpus, "--max-steps", "9", env={"BATON_FAIL_AT": "6"})
    assert code == 1
    assert "Traceback" in err and "RuntimeError: poisoned: step 6 fails" in err
    assert "stopped: RuntimeError in step 6; the hand-off" in said and "holds step 5, the last one finished" in said
    assert f"next: python train_part.py --task lm --part 2 --out {tmp_path / 'failed'}" in said
    assert handoff(tmp_path / "failed").meta["global_step"] == 5
    assert run(tmp_path / "failed", corpus, "--max-steps", "9", part=2)[0] == 0
    assert_same_tensors(handoff(tmp_path / "failed", 2), handoff(tmp_path / "whole"))


def stop_while(argv, started, what):
    """Start a part, SIGTERM it once `started(output so far)` is true; returns (exit code, seconds from
    the signal to the exit, output)."""
    child = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(child.stdout), daemon=True)
    reader.start()
    try:
        end = time.monotonic() + 120
        while not started("".join(lines)) and child.poll() is None:
            assert time.monotonic() < end, f"gave up waiting for {what}"
            time.sleep(0.05)
        assert child.poll() is None, f"the part ended before {what}: {''.join(lines)}"
        t0 = time.monotonic()
        child.send_signal(signal.SIGTERM)
        code = child.wait(timeout=60)
        seconds = time.monotonic() - t0
        reader.join(timeout=10)
        return code, seconds, "".join(lines)
    finally:
        child.kill()


@pytest.fixture
def big_corpus(tmp_path):
    """~12 MB of text: GPT-2's BPE takes longer over it than a test waits for a signal."""
    from data import text as text_data
    path = tmp_path / "big.txt"
    lines = text_data.read_corpus().splitlines()
    with open(path, "w", encoding="utf-8") as f:
        for copy in range(12 * 10 ** 6 // len(text_data.read_corpus())):
            f.write("".join(f"{copy}.{i} {line}\n" for i, line in enumerate(lines)))
    return str(path)


def test_sigterm_while_tokenizing_exits_0_within_seconds_and_leaves_nothing_broken(tmp_path, big_corpus):
    from test_tokens import gpt2_folder
    from model.gpt import GPT, GPTConfig
    bpe, out = gpt2_folder(tmp_path / "gpt2"), tmp_path / "run"
    GPT(GPTConfig(vocab_size=300, block_size=16, n_layer=1, n_head=2, n_embd=16)).save_pretrained(bpe)
    argv = [sys.executable, os.path.join(ROOT, "train_part.py"), "--task", "lm", "--out", str(out), "--data",
            big_corpus, *tiny_lm_args(tokenizer="gpt2", pretrained=bpe), "--max-steps", "2"]
    tokens = out / "tokens"

    def writing(_):  # the token file's temporary name appears as its first bytes are written
        return tokens.is_dir() and any(".tmp" in name for name in os.listdir(tokens))
    code, seconds, said = stop_while(argv, writing, "the token file")
    assert code == 0 and seconds < 5, said
    assert "stopped: SIGTERM while setting up, before this part's first step" in said
    assert not os.listdir(tokens)  # neither a temporary file nor a token file cut short
    assert not list(out.glob("*.safetensors"))
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)  # the next session
    assert done.returncode == 0, done.stderr
    assert "data: tokenized" in done.stdout and len(os.listdir(tokens)) == 1


def test_sigterm_during_the_manifest_check_exits_0_within_seconds_and_the_next_part_goes_on(tmp_path):
    from data import manifest
    with open(os.path.join(manifest.EMBEDDED, "train.csv"), newline="", encoding="utf-8") as f:
        sample = list(csv.DictReader(f))
    data = tmp_path / "train.csv"
    with open(data, "w", newline="", encoding="utf-8") as f:  # 600k rows naming the sample's clips: ~9 s to check
        w = csv.writer(f)
        w.writerow(["id", "path", "sentence", "split"])
        folder = os.path.join(manifest.EMBEDDED, "train_mp3s")
        for n in range(600_000):
            row = sample[n % len(sample)]
            w.writerow([f"c{n}", os.path.join(folder, row["id"] + ".mp3"), row["sentence"], row["split"]])
    out = tmp_path / "run"
    argv = [sys.executable, os.path.join(ROOT, "train_part.py"), "--task", "asr", "--out", str(out), "--data",
            str(data), "--max-steps", "1", "--set", "eval_max_clips=4"]
    checking = {}

    def started(said):  # the config is printed just before the task's data is built: the check begins
        if "config (ASRConfig)" in said:
            checking.setdefault("since", time.monotonic())
        return time.monotonic() - checking.get("since", math.inf) > 1.5
    code, seconds, said = stop_while(argv, started, "the manifest check")
    assert code == 0 and seconds < 5, said
    assert "stopped: SIGTERM while setting up, before this part's first step" in said
    assert not [name for name in os.listdir(out) if ".tmp" in name or name.endswith((".safetensors", ".npz"))]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)  # the next session
    assert done.returncode == 0, done.stderr
    assert "data: train: kept" in done.stdout and "stopped: max steps 1 at global step 1" in done.stdout
    assert (out / "manifest_cache.npz").is_file() and (out / ckpt.handoff_name(1)).is_file()
