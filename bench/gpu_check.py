"""The GPU check: every task and every way a part meets a GPU, run once, with a table at the end.

    python bench/gpu_check.py                 # one GPU, from the repository root: about 5 minutes
    python bench/gpu_check.py --dry           # no GPU: the commands are checked and shown, not run

Each check is a few commands (train_part.py, infer.py, the step benchmarks) under a timeout; one that
fails or hangs is marked and the next check runs all the same. What it covers: each task a few
steps in fp16 and in bf16 (where the GPU has it) and its inference, a SIGTERM in the middle of a
part and its resume against an uninterrupted run, a CPU baton resumed on the GPU and back, gradient
checkpointing, torch.compile, and the GPU rows of bench/gpt_step.py and bench/asr_step.py. The
table says for each: ok, FAILED (with the last line it printed), timeout or skipped, and its time.
Prints figures; asserts nothing (tests/test_gpu_check.py runs the plumbing on a CPU).
"""

import argparse
import dataclasses
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
PY = sys.executable
TINY_LM = "--set n_layer=2 --set n_embd=64 --set n_head=2 --set eval_every_steps=10 --set save_every_steps=0"
STEPS = {"lm": 30, "asr": 12, "reg": 20}


@dataclasses.dataclass
class Check:
    name: str
    commands: list          # shell-free command lines; "{w}" is this check's work folder
    needs_bf16: bool = False


def train(task, out, flags):
    return f"{PY} train_part.py --task {task} --out {{w}}/{out} --device cuda {flags}"


def checks():
    found = []
    for task in ("lm", "asr", "reg"):
        small = TINY_LM if task == "lm" else "--set eval_every_steps=5 --set save_every_steps=0"
        infer = {"lm": f'{PY} infer.py --task lm --ckpt {{w}}/{{amp}} --device cuda --prompt "It was" --max-new-tokens 40',
                 "asr": f"{PY} infer.py --task asr --ckpt {{w}}/{{amp}} --device cuda --beam 16 --out {{w}}/submission.csv",
                 "reg": f"{PY} infer.py --task reg --ckpt {{w}}/{{amp}} --device cuda --out {{w}}/predictions.csv"}[task]
        for amp in ("fp16", "bf16"):
            found.append(Check(f"{task} {amp}: {STEPS[task]} steps, then infer.py",
                               [train(task, amp, f"--amp {amp} --max-steps {STEPS[task]} {small}"),
                                infer.replace("{amp}", amp)], needs_bf16=amp == "bf16"))
    found += [
        Check("lm: SIGTERM at step ~10, resume to 30, against 30 in one go", [
            train("lm", "straight", f"--max-steps 30 {TINY_LM}"),
            "sigterm " + train("lm", "legs", f"--max-steps 30 {TINY_LM}"),
            train("lm", "legs", f"--part 2 --max-steps 30 {TINY_LM}"),
            # bit-identical on a CPU; on a GPU, kernels that are not deterministic (atomic adds in some
            # backward passes) can move the last bits: the table says which
            "compare {w}/straight/checkpoint_part1.safetensors {w}/legs/checkpoint_part2.safetensors"]),
        Check("lm: a CPU baton on the GPU and back (fused AdamW, fp16 scaler)", [
            train("lm", "moves", f"--max-steps 5 {TINY_LM}").replace("--device cuda", "--device cpu"),
            train("lm", "moves", f"--part 2 --max-steps 10 --amp fp16 {TINY_LM}"),
            train("lm", "moves", f"--part 3 --max-steps 15 {TINY_LM}").replace("--device cuda", "--device cpu")]),
        Check("asr: gradient checkpointing", [
            train("asr", "ckpting", "--max-steps 6 --set grad_checkpointing=true --set eval_every_steps=0")]),
        Check("lm: torch.compile", [train("lm", "compiled", f"--max-steps 30 --set compile=true {TINY_LM}")]),
        Check("bench/gpt_step.py --device cuda (GPT-2 small, MFU)", [
            f"{PY} bench/gpt_step.py --device cuda --sizes gpt2 --rounds 1"]),
        Check("bench/asr_step.py --device cuda --sizes base", [
            f"{PY} bench/asr_step.py --device cuda --sizes base --rounds 1"]),
    ]
    return found


def compare(a, b):
    """The largest difference between two checkpoints' weights, as a line for the table."""
    import torch

    import ckpt
    x, y = ckpt.load(a), ckpt.load(b)
    if x.state["progress"] != y.state["progress"]:
        raise AssertionError(f"positions differ: {x.state['progress']} vs {y.state['progress']}")
    worst = max((t.double() - y.state["model"][k].double()).abs().max().item() for k, t in x.state["model"].items())
    exact = all(torch.equal(t, y.state["model"][k]) for k, t in x.state["model"].items())
    return "bit-identical" if exact else f"max weight difference {worst:.1e}"


def run_command(line, timeout, log):
    """(status, last line, note): runs one command line of a check, under `timeout` seconds."""
    if line.startswith("compare "):
        _, a, b = line.split()
        return "ok", "", compare(a, b)
    sigterm = line.startswith("sigterm ")
    argv = shlex.split(line[len("sigterm "):] if sigterm else line)
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watchdog = threading.Timer(timeout, proc.kill)  # a silent hang never reaches the loop below
    watchdog.start()
    lines = []
    try:
        for text in proc.stdout:
            lines.append(text.rstrip("\n"))
            log.write(text)
            # a SIGTERM once step 10 is evaluated ("step 10: val_loss ..."): the part must save and exit 0
            if sigterm and text.startswith("step 10:") and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                sigterm = False
        proc.wait()
    finally:
        watchdog.cancel()
    last = next((x for x in reversed(lines) if x.strip()), "")
    if proc.returncode == -signal.SIGKILL:
        return "timeout", last, ""
    return ("ok" if proc.returncode == 0 else "FAILED"), last, ""


def run_checks(found, work, timeout, dry=False, has_bf16=True, log=sys.stdout):
    """Every check in turn, whatever became of the one before: a row for each."""
    rows = []
    for i, check in enumerate(found):
        folder = os.path.join(work, f"check{i:02d}")
        os.makedirs(folder, exist_ok=True)
        lines = [c.replace("{w}", folder) for c in check.commands]
        t0, status, note = time.monotonic(), "ok", ""
        if check.needs_bf16 and not has_bf16:
            status, note = "skipped", "this GPU has no native bf16"
        for line in ([] if status == "skipped" else lines):
            if dry:
                verify_command(line)
                status = "dry"
                continue
            log.write(f"\n$ {line}\n")
            log.flush()
            try:
                status, last, note = run_command(line, timeout, log)
            except Exception as e:  # a comparison that failed, a file that was not written
                status, last = "FAILED", f"{type(e).__name__}: {e}"
            if status != "ok":
                note = last[-160:]
                break
        rows.append({"check": check.name, "status": status, "seconds": time.monotonic() - t0, "note": note})
    return rows


def verify_command(line):
    """Dry mode: the command's flags must be ones the stage accepts today (the list cannot rot)."""
    argv = shlex.split(line.removeprefix("sigterm "))
    if line.startswith("compare ") or len(argv) < 2:
        return
    script = os.path.basename(argv[1])
    if script == "train_part.py":
        import train_part
        train_part.parse_args(argv[2:])
    elif script == "infer.py":
        import infer
        infer.parse_args(argv[2:])
    elif not os.path.isfile(os.path.join(ROOT, argv[1])):
        raise FileNotFoundError(argv[1])


def print_table(rows, title):
    print(f"\n{title}\n")
    print("| check | result | seconds | note |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['check']} | {r['status']} | {r['seconds']:.0f} | {r['note'].replace('|', '/')} |")
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "FAILED", "timeout", "skipped", "dry")}
    print("\n" + ", ".join(f"{n} {s}" for s, n in counts.items() if n))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry", action="store_true", help="check and list the commands without running them (no GPU)")
    p.add_argument("--timeout", type=float, default=180, help="seconds per command")
    p.add_argument("--work", default=None, help="folder for the runs (default: a new temp folder)")
    args = p.parse_args(argv)
    import torch
    if not args.dry and not torch.cuda.is_available():
        print("no CUDA GPU is visible; run with --dry to check the commands without one", file=sys.stderr)
        return 2
    work = args.work or tempfile.mkdtemp(prefix="baton-gpu-check-")
    os.makedirs(work, exist_ok=True)
    gpu = "dry run, no GPU" if args.dry else torch.cuda.get_device_name(0)
    has_bf16 = args.dry or torch.cuda.get_device_capability(0) >= (8, 0)
    with open(os.path.join(work, "log.txt"), "w") as log:
        rows = run_checks(checks(), work, args.timeout, dry=args.dry, has_bf16=has_bf16, log=log)
    print_table(rows, f"GPU check on {gpu}, PyTorch {torch.__version__} (log: {os.path.join(work, 'log.txt')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
