"""The session stage: one command carries a run across Kaggle sessions, part after part.

    python chain.py --task asr --kernel USER/SLUG --parts 5 --accelerator NvidiaTeslaT4 \\
        --data-source competition:bengaliai-speech --data-source dataset:USER/wav2vec2-large-xlsr-53 \\
        --data /kaggle/input/bengaliai-speech --set pretrained=/kaggle/input/wav2vec2-large-xlsr-53 \\
        --set preset=xlsr53 --infer --infer-args "--data /kaggle/input/bengaliai-speech/test_mp3s"
    python chain.py --rehearse --task lm --parts 3 --budget-hours 0.02 --out runs/rehearsal
    python chain.py --dry-run --task lm --kernel USER/SLUG --parts 3

Each part is a version of a Kaggle script kernel: the single file make_kernel.py writes, its STAGE
and ARGS set to the part's command (`train_part.py --task T --part N --budget-hours H`, part 1 with
--data and --set), pushed through Kaggle's official client (kagglesdk, which `pip install kaggle`
brings). The driver waits for the version with a progress line, reads its log and its output, and
pushes the next part with the previous part's output attached, until a part's log says training is
complete or --parts are done; --infer then pushes one more version, `infer.py --ckpt auto`, and
downloads its submission.csv (predictions.csv for reg; the lm's text is in its log).

Two kernels take the parts in turn, USER/SLUG-a (parts 1, 3, 5...) and USER/SLUG-b (2, 4...), each
attaching the other's output: whether a kernel may attach its own earlier output could not be
checked from here, and taking turns works either way. Parts name their number (--part N, not
auto), so a part whose previous output did not attach stops in seconds with train_part.py's
sentence instead of training from scratch for a whole session.

chain.json in --out records each push: stage, part, kernel, version, status and outcome, written
before and after every push. Run the same command again after the driver stopped (a laptop closed)
and it carries on: a version pushed is waited for, never pushed again; a push cut off before Kaggle
answered is looked up (has the kernel's version number moved?) before it is made again. A part that
ends in error, or whose output holds no baton newer than the last, stops the chain with one sentence
and the end of its log (exit 1); --retry pushes it again. Before each push the weekly GPU quota must
hold the part's budget (--wait-for-quota waits for the reset instead).

--rehearse runs the same driver and the same client calls against kaggle_standin.py, a stand-in of
Kaggle's API on 127.0.0.1:7777 (where the client's TEST environment sends them), which runs each
pushed file in a fresh folder laid out as on Kaggle: a chain rehearsed on a laptop in minutes
before it spends GPU hours. --dry-run writes part 1's kernel folder and prints what would be
pushed, with no client and no credentials.
"""

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import re
import shlex
import signal
import sys
import threading
import time

import make_kernel
from kaggle_client import Kaggle, KaggleError

CODE_FILE = "kaggle_kernel.py"
# What `infer.py --task T` writes in the working folder, which --infer downloads (lm prints its text).
PREDICTIONS = {"lm": None, "asr": "submission.csv", "reg": "predictions.csv"}
SOURCE_KINDS = {"competition": "competition_sources", "dataset": "dataset_sources",
                "model": "model_sources", "notebook": "kernel_sources"}
ENDED = {"COMPLETE", "ERROR", "CANCEL_REQUESTED", "CANCEL_ACKNOWLEDGED"}
SAVE_MARGIN_HOURS = 1.0  # of a session, left for the hand-off and Kaggle's saving of the output


class ChainError(Exception):
    """Why the chain stops: one sentence (and, for a part, the end of its log and what to do next)."""


# -----------------------------------------------------------------------------
# The command line

def parse_args(argv):
    p = argparse.ArgumentParser(description="Carry a Baton run across Kaggle sessions.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--task", required=True, choices=list(PREDICTIONS), help="the model family, as train_part.py")
    p.add_argument("--kernel", default=None, metavar="USER/SLUG",
                   help="your Kaggle user name and a name for the run; parts go to SLUG-a and SLUG-b in turn")
    p.add_argument("--parts", type=int, default=1, help="sessions to chain at most (fewer if training completes)")
    p.add_argument("--session-hours", type=float, default=12.0,
                   help="Kaggle's session limit, pushed as the version's time limit (9 in many code competitions)")
    p.add_argument("--budget-hours", type=float, default=None,
                   help=f"each part's --budget-hours (default: the session less {SAVE_MARGIN_HOURS:g} h for saving "
                        f"the output; 0.02 when rehearsing)")
    p.add_argument("--accelerator", default="NvidiaTeslaT4",
                   help="Kaggle's machine shape (NvidiaTeslaT4 = T4 x2, NvidiaL4, ...), or 'none' for a CPU session")
    p.add_argument("--data-source", dest="sources", action="append", default=[], metavar="KIND:REF",
                   help=f"attach to every version; KIND is one of {', '.join(SOURCE_KINDS)} (repeatable)")
    p.add_argument("--internet", action="store_true", help="turn the sessions' internet on (off: code competitions)")
    p.add_argument("--data", default=None, help="part 1's --data (later parts read it from the checkpoint)")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="part 1's --set (repeatable; later parts read the settings from the checkpoint)")
    p.add_argument("--infer", action="store_true", help="after the parts, a version running infer.py --ckpt auto")
    p.add_argument("--infer-args", default="", help="more arguments for that infer.py, e.g. \"--data PATH --beam 64\"")
    p.add_argument("--out", default=None, help="the driver's folder: chain.json, kernel folders, logs, predictions "
                                               "(default: runs/chain/<slug>)")
    p.add_argument("--retry", action="store_true", help="push again the part (or inference) that failed last")
    p.add_argument("--wait-for-quota", action="store_true", help="when the GPU quota is short, wait for its reset")
    p.add_argument("--poll-seconds", type=float, default=None,
                   help="first wait between status checks, growing 1.5x to 10 min (default: 30; rehearsing 0.5, "
                        "growing to 5 s)")
    p.add_argument("--dry-run", action="store_true", help="write part 1's kernel folder and print it; push nothing")
    p.add_argument("--rehearse", action="store_true",
                   help="run the chain against a local stand-in of Kaggle (kaggle_standin.py) instead")
    p.add_argument("--quota-hours", type=float, default=30.0, help="rehearsing: the stand-in's weekly GPU quota")
    args = p.parse_args(argv)
    if args.kernel is None and not args.rehearse:
        p.error("--kernel USER/SLUG is required (your Kaggle user name, and a name for this run)")
    args.kernel = args.kernel or f"rehearsal/baton-{args.task}"
    user, _, slug = args.kernel.partition("/")
    if not user or not re.fullmatch(r"[a-z0-9][a-z0-9-]{3,45}", slug):
        p.error(f"--kernel {args.kernel}: USER/SLUG with a slug of 4 to 46 lowercase letters, digits and hyphens")
    if args.budget_hours is None:
        args.budget_hours = 0.02 if args.rehearse else args.session_hours - SAVE_MARGIN_HOURS
    if not 0 < args.budget_hours < args.session_hours:
        p.error(f"--budget-hours {args.budget_hours:g} must be positive and below --session-hours "
                f"{args.session_hours:g}, leaving time to save the output")
    if args.parts < 1:
        p.error("--parts must be at least 1")
    if args.accelerator.lower().startswith("tpu"):
        p.error("Baton trains on a GPU or the CPU: --accelerator NvidiaTeslaT4, NvidiaL4, ... or none")
    for source in args.sources:
        kind, _, ref = source.partition(":")
        if kind not in SOURCE_KINDS or not ref:
            p.error(f"--data-source {source}: KIND:REF with KIND one of {', '.join(SOURCE_KINDS)}")
    args.out = args.out or os.path.join("runs", "chain", slug)
    args.poll_seconds = args.poll_seconds or (0.5 if args.rehearse else 30.0)
    return args


def main(argv=None):
    args = parse_args(argv)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler) if main_thread else None  # as Ctrl-C
    try:
        if args.dry_run:
            dry_run(args)
            return 0
        with rehearsal(args) as standin_root:
            kaggle = Kaggle.connect(args.rehearse)
            chain = Chain.open(args)
            if not chain.pushes:
                print(spending(args))
            drive(kaggle, chain, args)
            report_end(chain, args, standin_root)
        return 0
    except (ChainError, KaggleError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\nstopped: the driver, not the sessions; a version that was running goes on. The same command "
              f"carries on from {os.path.join(args.out, 'chain.json')}.")
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


# -----------------------------------------------------------------------------
# The chain: push, wait, read, and again

def drive(kaggle, chain, args):
    """Until nothing is left to push: settle a push that was cut off, wait for the version running,
    read how it ended, push what comes next. Each step is saved in chain.json before the next."""
    retry = args.retry
    while True:
        last = chain.pushes[-1] if chain.pushes else None
        if last is not None and last.status == "pushing":
            settle_push(kaggle, chain, last)
        elif last is not None and last.outcome is None:
            wait(kaggle, chain, last, args)
            read_outcome(kaggle, chain, last, args)
        else:
            step = next_step(chain, args, retry)
            if step is None:
                break
            retry = False  # --retry pushes the failed one again once
            push(kaggle, chain, args, *step)


def next_step(chain, args, retry):
    """(stage, part) to push next, or None when the chain is done."""
    last = chain.pushes[-1] if chain.pushes else None
    if last is not None and last.outcome != "ok":
        if not retry:
            raise ChainError(f"{last.outcome} Its log: {chain.log_path(last)}. Fix the cause, then run the same "
                             f"command with --retry to push {label(last, args)} again")
        return last.stage, last.part
    trained = chain.trained()
    done = trained[-1].part if trained else 0
    if not (trained and trained[-1].finished) and done < args.parts:
        return "train", done + 1
    if args.infer and not any(p.stage == "infer" and p.outcome == "ok" for p in chain.pushes):
        return "infer", done
    return None


def push(kaggle, chain, args, stage, part):
    """Write the version's kernel folder, check the quota, record the push as under way, push it."""
    trained = chain.trained()
    kernel = kernel_for(args, part if stage == "train" else part + 1)
    attach = trained[-1].kernel if trained else None
    entry = Push(stage=stage, part=part, kernel=kernel)
    folder = chain.folder(entry)
    kernel_args = part_args(args, part) if stage == "train" else infer_args(args)
    write_kernel(folder, kernel, stage, kernel_args, attach, args)
    if stage == "infer" and not (trained and trained[-1].finished):
        print(f"note: training is not complete after {part} part(s); inference uses the best model so far")
    if args.accelerator != "none":
        check_quota(kaggle, args.budget_hours if stage == "train" else 0.0, args)
    entry.previous_version = kaggle.current_version(kernel)
    chain.pushes.append(entry)
    chain.save()  # "pushing": if the driver stops before Kaggle answers, the next run looks it up
    version, invalid = kaggle.push(folder, int(args.session_hours * 3600))
    if version is None:  # cut off: settled on the next round
        return
    entry.version, entry.status, entry.pushed_at = version, "QUEUED", time.time()
    chain.save()
    attached = f", attaching {attach}'s output" if attach else ""
    print(f"{label(entry, args)}: pushed {kernel} version {version}{attached}: {stage}: {kernel_args}")
    if invalid:
        print(f"note: Kaggle did not attach {', '.join(invalid)} (not found, or not yours to use)")


def settle_push(kaggle, chain, entry):
    """A push recorded as under way but not answered: if the kernel's version moved past the one before
    the push, that version is this push; else the push never arrived and is forgotten (made again)."""
    current = kaggle.current_version(entry.kernel)
    if current is not None and current > (entry.previous_version or 0):
        entry.version, entry.status, entry.pushed_at = current, "QUEUED", time.time()
        print(f"the push of {entry.kernel} that was cut off went through: version {current}; waiting for it")
    else:
        chain.pushes.pop()
        print(f"the push of {entry.kernel} that was cut off never arrived; pushing it now")
    chain.save()


def wait(kaggle, chain, entry, args):
    """Poll the version's status, waiting 1.5x longer each time up to 10 minutes, with a progress line."""
    delay, shown = args.poll_seconds, Progress()
    while True:
        status, message = kaggle.status(entry.kernel, entry.version)
        if status != entry.status:
            entry.status = status
            chain.save()
        shown.update(f"{label(entry, args)} on {entry.kernel} v{entry.version}: {status}, "
                     f"{duration(time.time() - entry.pushed_at)} since the push")
        if status in ENDED:
            shown.close()
            entry.message, entry.ended_at = message, time.time()
            return
        time.sleep(delay)
        delay = min(delay * 1.5, 5.0 if args.rehearse else 600.0)


def read_outcome(kaggle, chain, entry, args):
    """How the version ended, from its status, log and output listing; saved as entry.outcome. A failure
    stops the chain with one sentence and the end of the log."""
    files, log = kaggle.output(entry.kernel, entry.version)
    if entry.status == "COMPLETE" and entry.stage == "train" and not has_baton(files, entry) and not args.rehearse:
        files, log = listing_settled(kaggle, entry, args, files, log)
    os.makedirs(chain.folder(entry), exist_ok=True)
    with open(chain.log_path(entry), "w", encoding="utf-8") as f:
        f.write(log)
    what = f"{label(entry, args)} ({entry.kernel} version {entry.version})"
    if entry.status != "COMPLETE":
        why = f": {entry.message}" if entry.message else ""
        fail(chain, entry, f"{what} ended with status {entry.status}{why}.", log)
    if entry.stage == "infer":
        download_predictions(kaggle, chain, entry, args, files, log)
        return
    steps = [int(s) for s in re.findall(r"^stopped: .* at global step (\d+)", log, re.M)]
    before = chain.trained()[-1].global_step if chain.trained() else 0
    if not has_baton(files, entry) or not steps or steps[-1] <= before:
        fail(chain, entry, f"{what} completed, but its output holds no baton newer than step {before} "
                           f"(no {baton_name(entry)} after a step past it).", log)
    entry.global_step, entry.finished = steps[-1], "training is complete" in log
    entry.outcome = "ok"
    chain.save()
    print(f"{label(entry, args)} done: baton {baton_name(entry)} at global step {entry.global_step} after "
          f"{duration(entry.ended_at - entry.pushed_at)}" + ("; training is complete" if entry.finished else ""))
    plans = re.findall(r"^plan: .*", log, re.M)
    if plans and not entry.finished:
        print(f"  {plans[-1]}")


def fail(chain, entry, sentence, log):
    entry.outcome = sentence
    chain.save()
    tail = "\n".join("  | " + line for line in log_lines(log)[-15:])
    raise ChainError(f"{sentence} Its log ({chain.log_path(entry)}) ends:\n{tail}\nnext: fix what the log says, "
                     f"then run the same command with --retry to push it again")


def report_end(chain, args, standin_root):
    trained = chain.trained()
    if not trained:
        return
    spent = duration(sum((p.ended_at or p.pushed_at) - p.pushed_at for p in chain.pushes if p.pushed_at))
    last = trained[-1]
    if last.finished:
        print(f"training is complete at global step {last.global_step} after {last.part} part(s), {spent} of sessions")
    else:
        print(f"the chain's {last.part} part(s) are done at global step {last.global_step} ({spent} of sessions); "
              f"training is not complete: the same command with --parts {last.part + 1} or more carries on")
    where = f"runs/{args.task}/{baton_name(last)}"
    if standin_root:  # the stand-in keeps each version's output in its working folder
        where = os.path.join(standin_root, *last.kernel.split("/"), f"v{last.version}", "working", where)
    print(f"the last baton, in {last.kernel}'s output (version {last.version}): {where}")


# -----------------------------------------------------------------------------
# What each version is

def kernel_for(args, part):
    """Parts take turns on two kernels, each attaching the other's output (see the module's docstring)."""
    return f"{args.kernel}-{'ab'[(part - 1) % 2]}"


def part_args(args, part):
    """The part's train_part.py command line; the data and settings go to part 1 only (later parts read
    them from the checkpoint, so a part never changes the run behind the user's back)."""
    line = ["--task", args.task, "--part", str(part), "--budget-hours", f"{args.budget_hours:g}"]
    if part == 1:
        line += (["--data", args.data] if args.data else []) + [a for s in args.settings for a in ("--set", s)]
    return shlex.join(line)


def infer_args(args):
    return shlex.join(["--task", args.task, "--ckpt", "auto"] + shlex.split(args.infer_args))


def write_kernel(folder, kernel, stage, kernel_args, attach, args):
    """The folder `kaggle kernels push -p FOLDER` reads: the one-file kernel and kernel-metadata.json."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, CODE_FILE), "w", encoding="utf-8") as f:
        f.write(make_kernel.build(stage, kernel_args))
    metadata = {"id": kernel, "title": kernel.split("/")[1].replace("-", " "), "code_file": CODE_FILE,
                "language": "python", "kernel_type": "script", "is_private": True,
                "enable_gpu": args.accelerator != "none", "enable_tpu": False, "enable_internet": args.internet,
                **{key: [] for key in SOURCE_KINDS.values()}}
    if args.accelerator != "none":
        metadata["machine_shape"] = args.accelerator
    for source in args.sources:
        kind, _, ref = source.partition(":")
        metadata[SOURCE_KINDS[kind]].append(ref)
    if attach:
        metadata["kernel_sources"].append(attach)
    with open(os.path.join(folder, "kernel-metadata.json"), "w", encoding="utf-8") as f:
        json.dump(metadata, f, indent=2)
    return metadata


def dry_run(args):
    folder = os.path.join(args.out, "part1")
    metadata = write_kernel(folder, kernel_for(args, 1), "train", part_args(args, 1), None, args)
    size = os.path.getsize(os.path.join(folder, CODE_FILE)) / 1e6
    limit = int(args.session_hours * 3600)
    print(f"dry run: nothing is pushed and no credentials are read. Part 1 would be pushed from {folder}, as\n"
          f"  kaggle kernels push -p {folder} -t {limit}\n"
          f"{folder}/kernel-metadata.json:\n{json.dumps(metadata, indent=2)}\n"
          f"{folder}/{CODE_FILE} ({size:.2f} MB) runs train_part.py {part_args(args, 1)}")
    if args.parts > 1:
        print(f"part 2 would go to {kernel_for(args, 2)} attaching {kernel_for(args, 1)}'s output and run "
              f"train_part.py {part_args(args, 2)}; and so on in turn, up to part {args.parts}")
    if args.infer:
        print(f"then infer.py {infer_args(args)} on the kernel after the last part's")
    print(spending(args))


def spending(args):
    """What the chain may cost: Kaggle counts each GPU session's wall time against a weekly quota."""
    if args.accelerator == "none":
        return f"chain: up to {args.parts} part(s) of --budget-hours {args.budget_hours:g} in CPU sessions (no GPU quota)"
    return (f"chain: up to {args.parts} part(s) of --budget-hours {args.budget_hours:g} on {args.accelerator}: up to "
            f"~{args.parts * args.budget_hours:g} h of the weekly GPU quota (about 30 h), a few minutes more a part "
            f"for start-up and saving")


def has_baton(files, entry):
    return any(name.split("/")[-1] == baton_name(entry) for name, _ in files)


def baton_name(entry):
    return f"checkpoint_part{entry.part}.safetensors"


def listing_settled(kaggle, entry, args, files, log, tries=3):
    """Kaggle may list a version's output a little after it says COMPLETE: look again a few times."""
    for _ in range(tries):
        if has_baton(files, entry):
            break
        time.sleep(args.poll_seconds * 4)
        files, log = kaggle.output(entry.kernel, entry.version)
    return files, log


def download_predictions(kaggle, chain, entry, args, files, log):
    name = PREDICTIONS[args.task]
    if name is None:  # lm prints its text
        print(f"inference done; its text is in {chain.log_path(entry)}")
    else:
        urls = [url for file_name, url in files if file_name.split("/")[-1] == name]
        if not urls:
            fail(chain, entry, f"{label(entry, args)} completed, but its output holds no {name}.", log)
        target = os.path.join(args.out, name)
        kaggle.download(urls[0], target)
        print(f"inference done: {target}")
    entry.outcome = "ok"
    chain.save()


def label(entry, args):
    return f"part {entry.part}/{args.parts}" if entry.stage == "train" else "inference"


def duration(seconds):
    return str(datetime.timedelta(seconds=round(seconds)))  # 0:01:12, 11:02:40


def log_lines(log):
    """The log as lines, a progress bar's carriage-return updates reduced to their last state."""
    last_states = (line.rstrip("\r").split("\r")[-1] for line in log.split("\n"))  # not splitlines: it splits at \r
    return [line for line in last_states if line.strip()]


class Progress:
    """One line that follows a version: rewritten in place on a terminal; else printed when the
    status changes and every half hour."""

    def __init__(self):
        self.tty, self.last, self.at, self.width = sys.stdout.isatty(), None, 0.0, 0

    def update(self, line):
        if self.tty:
            print("\r" + line.ljust(self.width), end="", flush=True)
            self.width = len(line)
        elif line.split(",")[0] != (self.last or "").split(",")[0] or time.time() - self.at > 1800:
            print(line, flush=True)
            self.at = time.time()
        self.last = line

    def close(self):
        if self.tty:
            print()


def check_quota(kaggle, hours, args):
    """The weekly GPU quota must hold the part's budget; else one sentence, or a wait for the reset."""
    while True:
        left, reset = kaggle.gpu_quota()
        if left is None or left >= hours:
            if left is not None:
                print(f"GPU quota: {left:.1f} h left this week")
            return
        until = (reset - datetime.datetime.now(datetime.timezone.utc)).total_seconds() / 3600 if reset else 1.0
        when = f"it resets at {reset:%Y-%m-%d %H:%M} UTC, in {until:.1f} h" if reset else "Kaggle gives no reset time"
        short = (f"the weekly GPU quota has {left:.1f} h left, less than the part's --budget-hours {hours:g}; "
                 f"{when}")
        if not args.wait_for_quota:
            raise ChainError(f"{short}: run the same command then, add --wait-for-quota to wait for it, or give a "
                             f"smaller --budget-hours")
        print(f"{short}; waiting for it (--wait-for-quota)", flush=True)
        time.sleep(max(60.0, until * 3600 + 60))


# -----------------------------------------------------------------------------
# The driver's record: chain.json

@dataclasses.dataclass
class Push:
    stage: str                   # "train" (a part) or "infer" (the version after the parts)
    part: int                    # the part's number; for "infer", the last part's
    kernel: str                  # USER/SLUG-a or -b
    previous_version: int = None  # the kernel's version before the push: tells whether a cut-off push arrived
    version: int = None          # Kaggle's version number, once the push is known to have arrived
    status: str = "pushing"      # then Kaggle's: QUEUED, RUNNING, COMPLETE, ERROR, CANCEL_...
    pushed_at: float = None
    ended_at: float = None
    message: str = ""            # Kaggle's failure message
    outcome: str = None          # once read: "ok", or the sentence that says what went wrong
    global_step: int = None      # the part's baton, from its log
    finished: bool = False       # the part's log said training is complete


@dataclasses.dataclass
class Chain:
    path: str
    task: str
    kernel: str
    pushes: list

    @classmethod
    def open(cls, args):
        path = os.path.join(args.out, "chain.json")
        if not os.path.exists(path):
            os.makedirs(args.out, exist_ok=True)
            return cls(path, args.task, args.kernel, [])
        try:
            with open(path, encoding="utf-8") as f:
                saved = json.load(f)
            chain = cls(path, saved["task"], saved["kernel"], [Push(**p) for p in saved["pushes"]])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ChainError(f"{path} cannot be read ({e}); move it away to start a new chain")
        if (chain.task, chain.kernel) != (args.task, args.kernel):
            raise ChainError(f"{path} belongs to the chain of --task {chain.task} --kernel {chain.kernel}; give "
                             f"those, or another --out for a new chain")
        if chain.pushes:
            print(f"carrying on from {path}: " + "; ".join(
                f"{label(p, args)} {p.kernel} v{p.version} {p.status.lower()}" for p in chain.pushes))
        return chain

    def save(self):
        """Atomically: a driver stopped mid-write leaves the old record or the new one."""
        temporary = self.path + ".tmp"
        with open(temporary, "w", encoding="utf-8") as f:
            json.dump({"format": "baton-chain/1", "task": self.task, "kernel": self.kernel,
                       "pushes": [dataclasses.asdict(p) for p in self.pushes]}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, self.path)

    def trained(self):
        """The parts that ended with a newer baton, in order."""
        return [p for p in self.pushes if p.stage == "train" and p.outcome == "ok"]

    def folder(self, entry):
        return os.path.join(os.path.dirname(self.path), f"part{entry.part}" if entry.stage == "train" else "infer")

    def log_path(self, entry):
        return os.path.join(self.folder(entry), "log.txt")


@contextlib.contextmanager
def rehearsal(args):
    """--rehearse: the stand-in serves on 127.0.0.1:7777 while the chain runs; the sessions it runs live
    under --out/kaggle, so every baton of the rehearsal stays in --out. Yields that folder (None if not
    rehearsing)."""
    if not args.rehearse:
        yield None
        return
    import kaggle_standin
    for name in ("NO_PROXY", "no_proxy"):  # a proxy set for the internet must not take localhost's requests
        os.environ[name] = ",".join(filter(None, [os.environ.get(name), "localhost", "127.0.0.1"]))
    root = os.path.join(args.out, "kaggle")
    try:
        standin = kaggle_standin.StandIn(root, quota_hours=args.quota_hours)
        standin.__enter__()
    except OSError as e:
        raise ChainError(f"the stand-in cannot serve on {kaggle_standin.HOST}:{kaggle_standin.PORT} ({e}), where "
                         f"Kaggle's client sends a rehearsal's requests; is another rehearsal running?") from None
    try:
        yield root
    finally:
        standin.__exit__(None, None, None)


if __name__ == "__main__":
    sys.exit(main())
