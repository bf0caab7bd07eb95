"""train_part.py end to end on the lm task: exact resume, the files and metrics of a run, settings
and bad resumes, GPT-2 weights and export, inference, and stopping by a signal or a kill.

Most runs are in-process (main() returns the exit code) with a tiny model on a tiny text, so a
run takes about a second; the tests about signals use real processes (`spawn`). The time budget is
test_budget.py's, which checkpoint a part resumes test_discovery.py's (both use the helpers here).
"""

import json
import math
import os
import pickle
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

import ckpt
from data import tokenizers
import infer
import train_part
from training import discovery, record
from training.tasks import TASKS
from training.config import apply_settings
from conftest import tiny_lm_args
from training.record import unpack

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 12 optimizer steps per epoch (see tiny_lm_args); dropout of both kinds is on.
TINY = tiny_lm_args(dropout=0.2, attn_dropout=0.1)


def train(out, corpus, *extra, part=1):
    return train_part.main(["--task", "lm", "--part", str(part), "--out", str(out), "--data", corpus]
                           + TINY + list(extra), started=time.time())


def final_state(out, part):
    return ckpt.load(os.path.join(out, ckpt.handoff_name(part)))


def assert_bit_identical(a, b):
    assert a.meta["global_step"] == b.meta["global_step"]
    for section in ("model", "rng"):
        fa, fb = ckpt.flatten_state(a.state[section])[0], ckpt.flatten_state(b.state[section])[0]
        assert fa.keys() == fb.keys()
        for k in fa:
            assert torch.equal(fa[k], fb[k]), f"{section}.{k} differs"
    oa, ob = a.state["optimizer"]["state"], b.state["optimizer"]["state"]
    for i in oa:
        for k in oa[i]:
            assert torch.equal(oa[i][k], ob[i][k]), f"optimizer {i}.{k} differs"
    ha = {k: v for k, v in unpack(a.state["history"]).items() if k != "parts"}
    hb = {k: v for k, v in unpack(b.state["history"]).items() if k != "parts"}
    assert ha == hb  # every logged loss, LR and validation value matches too


# stops: mid-epoch; two interruptions inside one epoch; exactly at the epoch boundary; just before
# the epoch's short final window.
@pytest.mark.parametrize("stops", [(5,), (3, 8), (12,), (11,)])
def test_interrupted_run_is_bit_identical_to_uninterrupted(tmp_path, corpus, stops):
    total = 15  # crosses into the second epoch
    assert train(tmp_path / "straight", corpus, "--max-steps", str(total)) == 0
    parts = list(stops) + [total]
    for part, stop in enumerate(parts, start=1):
        assert train(tmp_path / "legs", corpus, "--max-steps", str(stop), part=part) == 0
    assert_bit_identical(final_state(tmp_path / "straight", 1), final_state(tmp_path / "legs", len(parts)))


def test_epoch_boundary_and_files_of_a_run(tmp_path, corpus):
    out = tmp_path / "run"
    assert train(out, corpus, "--max-steps", "14", "--set", "save_every_steps=3", "--set", "keep_last=2") == 0
    names = sorted(os.listdir(out))
    assert names == sorted(["best_model.safetensors", "checkpoint_part1.safetensors", "latest.txt", "metrics.json",
                            "training_curve.png", "loss_by_epoch.png", ckpt.rolling_name(1, 0, 12),
                            ckpt.rolling_name(0, 9, 9), "tokens"])
    assert len(os.listdir(out / "tokens")) == 1  # the corpus, tokenized once
    handoff = final_state(out, 1)
    assert (handoff.meta["epoch"], handoff.meta["step_in_epoch"], handoff.meta["global_step"]) == (1, 2, 14)
    assert (out / "latest.txt").read_text().strip() == "checkpoint_part1.safetensors"
    best = ckpt.load(out / "best_model.safetensors")
    assert best.meta["kind"] == "weights" and set(best.state) == {"model"}
    assert best.meta["metrics"]["val_loss"] == handoff.state["best"]["value"]


def test_metrics_json_grows_across_parts(tmp_path, corpus):
    out = tmp_path / "run"
    assert train(out, corpus, "--max-steps", "4") == 0
    assert train(out, corpus, "--max-steps", "8", part=2) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    n = len(metrics["steps"])
    assert metrics["steps"] == list(range(1, 9))
    assert all(len(metrics[k]) == n for k in ("epochs", "learning_rate", "train_loss", "val_loss", "perplexity"))
    assert [v is not None for v in metrics["val_loss"]] == [s % 4 == 0 for s in metrics["steps"]]
    parts = metrics["parts"]
    assert [(p["part"], p["start_step"], p["end_step"]) for p in parts] == [(1, 0, 4), (2, 4, 8)]
    for p in parts:  # each part's step rate: of the whole part, and of its training steps alone
        assert p["steps_per_hour"] == pytest.approx(4 / p["seconds"] * 3600, rel=0.01)
        assert p["steps_per_second"] > p["steps_per_hour"] / 3600


def test_the_plan_line_says_how_many_parts_are_left(tmp_path, corpus, capsys):
    out = tmp_path / "run"  # 120 planned steps (10 epochs of 12)
    assert train(out, corpus, "--max-steps", "6", "--budget-hours", "1") == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("plan: ")]
    assert lines[0] == "plan: step 0 of 120 (0.0%); 120 steps left, at a rate this part will measure"
    rate = json.loads((out / "metrics.json").read_text())["parts"][0]["steps_per_hour"]
    hours = 114 / rate
    assert lines[1] == (f"plan: step 6 of 120 (5.0%); at part 1's {rate:,.0f} steps/h (start-up, evaluation and saves "
                        f"included) the 114 steps left take {hours:.1f} h, {math.ceil(hours)} more part(s) of "
                        f"--budget-hours 1")
    assert train(out, corpus, "--max-steps", "9", "--budget-hours", "1", part=2) == 0
    start, end = [line for line in capsys.readouterr().out.splitlines() if line.startswith("plan: ")]
    assert start.startswith("plan: step 6 of 120 (5.0%); at part 1's ")
    assert end.startswith("plan: step 9 of 120 (7.5%); at part 2's ")
    history = {"parts": [{"part": 1, "start_step": 0, "steps_per_hour": 1000.0}]}
    assert record.progress_line(history, 5000, 1000, 2).endswith("the 4,000 steps left take 4.0 h, 2 more part(s) of "
                                                          "--budget-hours 2")
    assert record.progress_line(history, 5000, 5000, 2) == "plan: step 5,000 of 5,000 (100.0%); nothing left to train"


def test_learning_rate_plan():
    cfg = TASKS["lm"].config(epochs=2, lr=1e-3, min_lr_ratio=0.1, warmup_steps=10, phase2_epochs=1, phase2_lr=5e-6)
    lr = [train_part.learning_rate(s, cfg, steps_per_epoch=50) for s in range(150)]
    assert lr[0] == pytest.approx(1e-4) and lr[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lr[9:100], lr[10:100]))  # cosine only goes down
    assert lr[99] == pytest.approx(1e-4, rel=0.01)  # ends phase 1 at lr * min_lr_ratio
    assert lr[100:] == [5e-6] * 50


def test_malicious_pickle_as_resume_is_refused(tmp_path, corpus, capsys):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    for name in ("x.pt", "x.pth"):
        with open(tmp_path / name, "wb") as f:
            pickle.dump({"model_state_dict": {"w": Exploit()}}, f)
        assert train(tmp_path / "run", corpus, "--resume", str(tmp_path / name)) == 2
        assert "refusing" in capsys.readouterr().err
    assert not marker.exists()


def test_settings_errors_and_changes_on_resume(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    assert train(out, corpus, "--set", "no_such_key=1") == 2
    err = capsys.readouterr().err
    assert "unknown setting 'no_such_key'" in err and "batch_size" in err
    assert train(out, corpus, "--set", "batch_size=four") == 2
    assert "expected int" in capsys.readouterr().err
    assert train(out, corpus, "--data", str(tmp_path / "missing.txt")) == 2
    assert "does not exist" in capsys.readouterr().err

    assert train(out, corpus, "--max-steps", "2") == 0
    capsys.readouterr()
    assert train(out, corpus, "--max-steps", "4", "--set", "lr=0.0005", part=2) == 0
    assert "lr changed from 0.001 to 0.0005" in capsys.readouterr().out
    assert final_state(out, 2).meta["config"]["lr"] == 0.0005
    assert train(out, corpus, "--max-steps", "6", "--set", "n_embd=64", part=3) == 2
    assert "different model" in capsys.readouterr().err


def test_run_started_from_gpt2_weights_resumes_with_their_shape(tmp_path, corpus):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_cfg = transformers.GPT2Config(vocab_size=256, n_positions=32, n_embd=24, n_layer=1, n_head=3)
    transformers.GPT2LMHeadModel(hf_cfg).save_pretrained(tmp_path / "gpt2")
    out = tmp_path / "run"
    assert train(out, corpus, "--max-steps", "2", "--set", f"pretrained={tmp_path / 'gpt2'}") == 0
    first = final_state(out, 1)
    assert first.meta["model_config"]["n_embd"] == 24 and first.meta["model_config"]["n_layer"] == 1
    assert train(out, corpus, "--max-steps", "4", part=2) == 0  # rebuilt from the checkpoint, not from n_embd=32
    assert final_state(out, 2).meta["global_step"] == 4


def test_a_gpt2_bpe_export_opens_with_the_auto_classes_and_generates_the_same_tokens(tmp_path, corpus, capsys):
    transformers = pytest.importorskip("transformers")
    import json
    folder = tmp_path / "gpt2"  # GPT-2's layout with a small real-format BPE: 256 byte characters + merges
    chars = list(tokenizers.bytes_to_unicode().values())
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("Ġ", "a"), ("a", "n"), ("o", "r"), ("i", "n"), ("Ġ", "s")]
    vocab = {c: i for i, c in enumerate(chars)}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=len(vocab), n_positions=32, n_embd=24, n_layer=1,
                                                         n_head=3)).save_pretrained(folder)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    out = tmp_path / "run"
    assert train(out, corpus, "--max-steps", "3", "--set", f"pretrained={folder}", "--set", "tokenizer=gpt2") == 0
    hf = tmp_path / "hf"
    assert infer.main(["--task", "lm", "--ckpt", str(out), "--export", str(hf)]) == 0
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf).eval()
    prompt = "the son"  # prompt and new tokens within the 16 positions (HF does not crop the context)
    ours = tokenizers.tokenizer_from_dict(ckpt.load(out / "checkpoint_part1.safetensors").meta["task_meta"]["tokenizer"])
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    assert ids[0].tolist() == ours.encode(prompt)
    theirs = model.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)[0].tolist()
    assert len(theirs) <= 16
    capsys.readouterr()
    assert infer.main(["--task", "lm", "--ckpt", str(out), "--prompt", prompt, "--temperature", "0",
                       "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out.rstrip("\n") == ours.decode(theirs)  # the same greedy tokens, as text
    capsys.readouterr()
    assert infer.main(["--task", "lm", "--ckpt", str(hf), "--prompt", prompt, "--temperature", "0",
                       "--max-new-tokens", "8"]) == 0  # and infer.py reads the folder back
    assert capsys.readouterr().out.rstrip("\n") == ours.decode(theirs)


def test_presets_start_from_the_class_defaults():
    for cls in (task.config for task in TASKS.values()):
        presets = getattr(cls, "PRESETS", {})
        if presets:
            default = cls()
            assert apply_settings(default, [f"preset={default.preset}"]) == default


def test_infer_generates_from_folder_best_and_full_checkpoint(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    assert train(out, corpus, "--max-steps", "8") == 0
    for target in (out, out / "best_model.safetensors", out / "checkpoint_part1.safetensors"):
        capsys.readouterr()
        assert infer.main(["--task", "lm", "--ckpt", str(target), "--prompt", "KING", "--max-new-tokens", "20"]) == 0
        text = capsys.readouterr().out
        assert text.startswith("KING") and len(text.rstrip("\n")) >= 20
    legacy = tmp_path / "old.pt"
    torch.save({"model_state_dict": {"w": torch.zeros(1)}}, legacy)
    assert infer.main(["--task", "lm", "--ckpt", str(legacy)]) == 2
    assert "legacy" in capsys.readouterr().err


# ----------------------------------------------------------------------------- real processes

def spawn(out, corpus, *extra):
    cmd = [sys.executable, "-u", os.path.join(ROOT, "train_part.py"), "--task", "lm", "--out", str(out),
           "--data", corpus, *TINY, *extra]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_line(proc, needle, timeout=60):
    deadline = time.time() + timeout
    for line in proc.stdout:
        if needle in line or time.time() > deadline:
            return line
    return ""


def test_sigterm_saves_at_the_next_step_and_the_next_part_resumes(tmp_path, corpus):
    out = tmp_path / "run"
    proc = spawn(out, corpus, "--set", "epochs=1000")
    assert "model:" in wait_for_line(proc, "model:")
    time.sleep(1.5)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "stopped: signal SIGTERM" in stdout and "Traceback" not in stderr
    step = final_state(out, 1).meta["global_step"]
    assert step > 0
    proc = spawn(out, corpus, "--part", "2", "--max-steps", str(step + 2))
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert f"global step {step}" in stdout and final_state(out, 2).meta["global_step"] == step + 2


def test_sigterm_while_still_importing_exits_cleanly(tmp_path, corpus):
    out = tmp_path / "run"
    proc = spawn(out, corpus)
    time.sleep(0.3)  # inside `import torch`
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    # Acted on as set-up begins: no step ran, so there is nothing to hand off and nothing is left behind.
    assert "stopped: SIGTERM while setting up, before this part's first step" in stdout
    assert not out.exists() or not [name for name in os.listdir(out) if name.endswith(".safetensors") or ".tmp" in name]


def test_sigkill_at_random_moments_never_leaves_a_broken_checkpoint(tmp_path, corpus):
    out = tmp_path / "run"
    rng = random.Random(0)
    for attempt in range(4):
        proc = spawn(out, corpus, "--set", "save_every_steps=1", "--set", "keep_last=2", "--set", "epochs=1000",
                     "--part", "auto")
        wait_for_line(proc, "model:")
        deadline = time.time() + 60  # under load the first step can be slow: let one save land first
        while time.time() < deadline and not any(n.endswith(".safetensors") for n in os.listdir(out)):
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))  # then kill at a random moment: mid-step, mid-save, mid-prune
        proc.kill()
        proc.communicate()
        files = [n for n in os.listdir(out) if n.endswith(".safetensors")]
        for name in files:
            ckpt.load(out / name)  # raises if any file is half-written
    found = discovery.scan([str(out)])
    newest = max(f.global_step for f in found if f.kind == "train")
    proc = spawn(out, corpus, "--part", "auto", "--max-steps", str(newest + 1))
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert f"global step {newest}" in stdout
    assert not [n for n in os.listdir(out) if ".tmp" in n]  # stale temp files were cleaned up


def test_compiled_training_saves_the_plain_modules_weights(tmp_path, corpus):
    out = tmp_path / "run"
    assert train(out, corpus, "--max-steps", "2", "--set", "compile=true", "--set", "n_layer=1") == 0
    saved = ckpt.load(out / "checkpoint_part1.safetensors")
    assert not [k for k in saved.state["model"] if "_orig_mod" in k]
    # the same weights continue without compiling (compile is not part of the model's shape)
    assert train(out, corpus, "--max-steps", "3", "--set", "n_layer=1", "--set", "compile=false", part=2) == 0
