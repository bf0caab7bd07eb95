"""The GPU check: every task and every way a part meets a GPU, checks side by side, each row printed as it ends.

    python bench/gpu_check.py --budget 420    # one GPU, from the repository root: ends by 420 s with a table
    python bench/gpu_check.py                 # no budget: every check runs to its end
    python bench/gpu_check.py --dry           # no GPU: the commands are checked and shown, not run

Each check is a few commands (train_part.py, infer.py, the step benchmarks), run in order, each under
a timeout; one that fails or hangs is marked and the other checks run all the same. The functional
checks run side by side, `--parallel` at once (4 by default; `--parallel 1` runs them one after
another); the two step benchmarks run last, one at a time, with nothing beside them, since they
measure speed. A row is printed (and written to the log) the moment its check ends, so a run cut off
from outside still leaves the rows it finished. After `--budget SECONDS` (or a SIGTERM or Ctrl-C) no
check starts, the running ones are stopped (their processes killed) and marked "stopped at the
budget", the others "not started", and the whole table is printed.

What it covers: each task a few steps in fp16 and in bf16 (where the GPU has it) and its inference,
a SIGTERM in the middle of a part and its resume against an uninterrupted run, a CPU baton resumed on
the GPU and back, gradient checkpointing, torch.compile, and the GPU rows of bench/gpt_step.py and
bench/asr_step.py. The table says for each: ok, FAILED (with the last line it printed), timeout,
skipped, stopped at the budget or not started, and its time. Prints figures; asserts nothing
(tests/test_gpu_check.py runs the plumbing on a CPU).
"""

import argparse
import ctypes
import dataclasses
import math
import os
import queue
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
PARALLEL = 4  # functional checks at once: see main's --parallel
STOPPED, NOT_STARTED = "stopped at the budget", "not started"
STATUSES = ("ok", "FAILED", "timeout", "skipped", "dry", STOPPED, NOT_STARTED)
GRACE = 10  # seconds a stopped check gets to hand back its row before it is marked without one


@dataclasses.dataclass
class Check:
    name: str
    commands: list          # shell-free command lines, run in order; "{w}" is this check's work folder
    needs_bf16: bool = False
    alone: bool = False     # a speed measurement: runs after the others, with nothing beside it


def train(task, out, flags):
    return f"{PY} train_part.py --task {task} --out {{w}}/{out} --device cuda {flags}"


def checks():
    """The functional checks, the longest first (so the pool's last minutes are not one long check
    alone), then the step benchmarks, marked `alone`."""
    found = [
        Check("lm: torch.compile", [train("lm", "compiled", f"--max-steps 30 --set compile=true {TINY_LM}")]),
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
    ]
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
        Check("asr: gradient checkpointing", [
            train("asr", "ckpting", "--max-steps 6 --set grad_checkpointing=true --set eval_every_steps=0")]),
        # GPT-2 small at 16 x 1024, bf16: eager against the full-logits loss and transformers, then compiled
        # (two checks: each stays inside a command's timeout, compiling included).
        Check("bench/gpt_step.py --device cuda, eager (GPT-2 small, MFU)", [
            f"{PY} bench/gpt_step.py --device cuda --sizes gpt2 --rounds 1 --modes bf16 --compiles no"], alone=True),
        Check("bench/gpt_step.py --device cuda, torch.compile (GPT-2 small, MFU)", [
            f"{PY} bench/gpt_step.py --device cuda --sizes gpt2 --rounds 1 --modes bf16 --compiles yes "
            f"--impls ours,full"], alone=True),
        Check("bench/asr_step.py --device cuda --sizes base", [
            f"{PY} bench/asr_step.py --device cuda --sizes base --rounds 1"], alone=True),
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


try:  # Linux: a command dies with this script even when the script is SIGKILLed (see _die_with_parent)
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _prctl = None


def _die_with_parent():
    # Each command runs in its own session (so that a timeout or the budget can kill its whole process
    # group: DataLoader and compile workers too), which also takes it out of the reach of a signal sent
    # to this script's group; PR_SET_PDEATHSIG (1) puts it back within reach of this script's death.
    if _prctl is not None:
        _prctl(1, signal.SIGKILL)


def kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class Budget:
    """The run's end: once `seconds` have passed (or stop() or request_stop() was called) no command
    starts, and the commands running are killed, each with its process group."""

    def __init__(self, seconds=None):
        self.deadline = None if seconds is None else time.monotonic() + seconds
        self.over = False        # set by stop(): commands running then were killed by it
        self.requested = False   # set by request_stop(), which a signal handler may call at any moment
        self._procs = set()
        self._lock = threading.Lock()

    def left(self):
        if self.requested or self.over:
            return 0.0
        return math.inf if self.deadline is None else self.deadline - time.monotonic()

    def request_stop(self):
        self.requested = True  # no lock: the scheduler sees it within its poll and calls stop()

    def popen(self, argv, **kw):
        """The started process, or None once the budget is over."""
        with self._lock:
            if self.over:
                return None
            proc = subprocess.Popen(argv, start_new_session=True, preexec_fn=_die_with_parent, **kw)
            self._procs.add(proc)
            return proc

    def forget(self, proc):
        with self._lock:
            self._procs.discard(proc)

    def stop(self):
        with self._lock:
            self.over = True
            for proc in self._procs:
                kill_group(proc)


def run_command(line, timeout, log, budget=None, env=None):
    """(status, last line, note): runs one command line of a check, under `timeout` seconds; its status
    is STOPPED when the budget ended it."""
    budget = budget or Budget()
    if line.startswith("compare "):
        _, a, b = line.split()
        return "ok", "", compare(a, b)
    sigterm = line.startswith("sigterm ")
    argv = shlex.split(line[len("sigterm "):] if sigterm else line)
    proc = budget.popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                        errors="replace")
    if proc is None:
        return STOPPED, "", ""
    timed_out = threading.Event()

    def cut():  # a silent hang never reaches the loop below; the group, so that no worker keeps the pipe open
        timed_out.set()
        kill_group(proc)
    watchdog = threading.Timer(timeout, cut)
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
        budget.forget(proc)
    last = next((x for x in reversed(lines) if x.strip()), "")
    if timed_out.is_set():
        return "timeout", last, ""
    if budget.over and proc.returncode == -signal.SIGKILL:
        return STOPPED, last, ""
    return ("ok" if proc.returncode == 0 else "FAILED"), last, ""


def run_check(check, folder, timeout, budget, dry=False, has_bf16=True, env=None):
    """One check's commands in order, stopping at the first that is not ok: its row. The commands'
    output goes to `folder`/log.txt."""
    t0, status, note = time.monotonic(), "ok", ""
    if check.needs_bf16 and not has_bf16:
        return {"check": check.name, "status": "skipped", "seconds": 0.0, "note": "this GPU has no native bf16"}
    lines = [c.replace("{w}", folder) for c in check.commands]
    with open(os.path.join(folder, "log.txt"), "w") as log:
        for i, line in enumerate(lines):
            if dry:
                log.write(f"$ {line}\n")
                verify_command(line)
                status = "dry"
                continue
            if budget.over:
                status, note = STOPPED, f"after {i} of {len(lines)} commands"
                break
            log.write(f"\n$ {line}\n")
            log.flush()
            try:
                status, last, note = run_command(line, timeout, log, budget, env)
            except Exception as e:  # a comparison that failed, a file that was not written
                status, last = "FAILED", f"{type(e).__name__}: {e}"
            if status == STOPPED:
                note = f"in command {i + 1} of {len(lines)}"
                break
            if status != "ok":
                note = last[-160:]
                break
    return {"check": check.name, "status": status, "seconds": time.monotonic() - t0, "note": note}


def child_env(parallel):
    """Side by side, each command's torch gets its share of the cores (OpenMP threads that spin-wait
    on busy cores make a CPU step ~10x slower: BENCHMARKS.md, "Other findings"), unless set already."""
    env = dict(os.environ)
    if parallel > 1:
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // parallel)))
    return env


def row_line(row, ended=None):
    seconds = "-" if row["status"] == NOT_STARTED else f"{row['seconds']:.0f}"
    cells = [row["check"], row["status"], seconds, row["note"].replace("|", "/").replace("\n", " ")]
    return "| " + " | ".join(([f"{ended:.0f}"] if ended is not None else []) + cells) + " |"


def run_checks(found, work, timeout, dry=False, has_bf16=True, log=None, parallel=PARALLEL, budget=None, out=None):
    """Every check whatever became of the others: those not `alone` `parallel` at a time (each one's
    commands in order), then those `alone`, one by one with nothing beside them. Each row is printed
    to `out` (stdout by default) and written to `log` (with the check's output) as its check ends; a
    check's output is also in its own folder's log.txt. `budget` (seconds or a Budget): after it no
    check starts and the running ones are stopped. Returns a row for each check, in the order of `found`."""
    out = out or sys.stdout
    budget = budget if isinstance(budget, Budget) else Budget(budget)
    env = child_env(parallel)
    t0 = time.monotonic()
    rows, started, folders = [None] * len(found), set(), {}
    finished = queue.Queue()

    def note(text):
        if log is not None:
            log.write(f"\n[{time.monotonic() - t0:6.1f} s] {text}\n")
            log.flush()

    def work_on(i):
        try:
            row = run_check(found[i], folders[i], timeout, budget, dry=dry, has_bf16=has_bf16, env=env)
        except BaseException as e:  # a command list that does not parse, a folder that cannot be written
            row = {"check": found[i].name, "status": "FAILED", "seconds": 0.0, "note": f"{type(e).__name__}: {e}"}
        finished.put((i, row))

    def report(i, row):  # the log first: once a row is on the screen, it is in the log too
        rows[i] = row
        line = row_line(row, time.monotonic() - t0)
        note(f"ended: {line}")
        output = os.path.join(folders[i], "log.txt")
        if log is not None and os.path.isfile(output) and os.path.getsize(output):
            with open(output, errors="replace") as f:
                log.write(f.read())
            note(f"end of check{i:02d}'s output")
        out.write(line + "\n")
        out.flush()

    out.write("| ended at s | check | result | seconds | note |\n|---|---|---|---|---|\n")
    out.flush()
    pool = [i for i, c in enumerate(found) if not c.alone]
    alone = [i for i, c in enumerate(found) if c.alone]
    for wave, width in ((pool, 1 if dry else max(1, parallel)), (alone, 1)):
        pending, running, stopped_at = list(wave), 0, None
        while pending or running:
            while pending and running < width and budget.left() > 0:
                i = pending.pop(0)
                folders[i] = os.path.join(work, f"check{i:02d}")
                os.makedirs(folders[i], exist_ok=True)
                note(f"start check{i:02d}: {found[i].name}")
                started.add(i)
                threading.Thread(target=work_on, args=(i,), daemon=True).start()
                running += 1
            if not running:
                break
            try:
                i, row = finished.get(timeout=min(max(budget.left(), 0.0), 0.25))
            except queue.Empty:
                if budget.left() <= 0:
                    if stopped_at is None:
                        stopped_at = time.monotonic()
                        note("the budget is spent: no new check; the running ones are stopped")
                    budget.stop()  # again each poll: a command started just before is caught too
                    if time.monotonic() - stopped_at > GRACE:
                        break  # a check that does not come back (a comparison that hangs): marked below
                continue
            running -= 1
            report(i, row)
    for i, check in enumerate(found):
        if rows[i] is None:
            status = STOPPED if i in started else NOT_STARTED
            rows[i] = {"check": check.name, "status": status, "seconds": 0.0, "note": ""}
            note(f"{status}: {row_line(rows[i])}")
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


def print_table(rows, title, seconds=None):
    print(f"\n{title}\n")
    print("| check | result | seconds | note |")
    print("|---|---|---|---|")
    for r in rows:
        print(row_line(r))
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    tail = f"; {seconds:.0f} s in all" if seconds is not None else ""
    print("\n" + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + tail, flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry", action="store_true", help="check and list the commands without running them (no GPU)")
    p.add_argument("--timeout", type=float, default=180, help="seconds per command")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for the whole run: after it no check starts, the running ones are stopped, "
                        "and the table is printed (default: none)")
    p.add_argument("--parallel", type=int, default=PARALLEL,
                   help=f"functional checks side by side (default {PARALLEL}); the step benchmarks always run alone")
    p.add_argument("--work", default=None, help="folder for the runs (default: a new temp folder)")
    args = p.parse_args(argv)
    t0 = time.monotonic()
    budget = Budget(args.budget)
    import torch
    if not args.dry and not torch.cuda.is_available():
        print("no CUDA GPU is visible; run with --dry to check the commands without one", file=sys.stderr)
        return 2
    work = args.work or tempfile.mkdtemp(prefix="baton-gpu-check-")
    os.makedirs(work, exist_ok=True)
    gpu = "dry run, no GPU" if args.dry else torch.cuda.get_device_name(0)
    has_bf16 = args.dry or torch.cuda.get_device_capability(0) >= (8, 0)
    log_path = os.path.join(work, "log.txt")
    title = f"GPU check on {gpu}, PyTorch {torch.__version__} (log: {log_path})"
    print(f"{title}\n{args.parallel} functional checks side by side, then the benchmarks alone; "
          f"budget {'none' if args.budget is None else f'{args.budget:.0f} s'}; rows as checks end:\n", flush=True)
    is_main_thread = threading.current_thread() is threading.main_thread()
    previous = {}
    if is_main_thread:  # a SIGTERM (a time limit from outside) or Ctrl-C ends the run as the budget does
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda *_: budget.request_stop())
    try:
        with open(log_path, "w") as log:
            rows = run_checks(checks(), work, args.timeout, dry=args.dry, has_bf16=has_bf16, log=log,
                              parallel=args.parallel, budget=budget)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if args.dry:  # what a GPU run would run, each check's commands in order ({w}: the check's folder)
        print("\nThe commands, checked against today's train_part.py and infer.py:")
        for i, check in enumerate(checks()):
            print(f"\ncheck{i:02d}: {check.name}{' (alone, after the others)' if check.alone else ''}")
            for line in check.commands:
                print(f"  $ {line}")
    print_table(rows, f"{title}, in the order of the checks:", time.monotonic() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
