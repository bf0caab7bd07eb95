"""Which checkpoint a part continues from, and which part it is.

`--resume auto` looks in the run folder and under the read-only input roots (data/inputs.py:
/kaggle/input, where an earlier session's output is attached), reads the header of every
checkpoint it finds (never the payload: cheap), and loads the newest by `global_step` that
verifies; file times are never used, since a copy uploaded later is not newer training. Every
file found is listed with what became of it, so the log of a part says which file it continues
from and why the others were passed over. `--resume none` starts fresh; a path resumes that file.
The part rule: part N continues from part N-1, so asking for part N with nothing of part N-1 or
later in reach is an error that says what to attach; `--part auto` takes one more than the
resumed checkpoint's part.
"""

import dataclasses
import os

import ckpt
from data import DataError
from data.inputs import input_roots, walk_inputs
from training.config import ConfigError
from training.distributed import any_rank, decided_on_rank0


@dataclasses.dataclass
class Found:
    path: str
    size: int
    kind: str = "?"        # Baton's "train" (resumable) or "weights" (best model); "other" safetensors
                           # (pretrained weights); "legacy" .pt/.pth; "?" when the header does not read
    task: str = None
    part: int = None
    epoch: int = None
    step_in_epoch: int = None
    global_step: int = -1
    problem: str = None    # why the file cannot be used; None when its header reads


def scan(roots, max_depth=6, big_folder=10_000):
    """Every checkpoint-like file under `roots`, with what its header says.

    Baton `.safetensors` files get their header read (cheap: no payload); other `.safetensors`
    files (pretrained weights) are kind "other"; `.pt/.pth` files are kind "legacy" and are only
    listed, since reading them means unpickling. Folders deeper than `max_depth` or with more
    than `big_folder` entries (a competition's audio folder) are not searched, so the scan stays
    quick on /kaggle/input.
    """
    paths = [os.path.join(folder, name) for root in roots if root and os.path.isdir(root)
             for folder, _, files in walk_inputs(root, max_depth, big_folder) for name in sorted(files)
             if not name.startswith(".") and name.endswith((".safetensors", ".pt", ".pth"))]
    unique = {}  # a file reached twice (a link, an input root inside another) is listed once
    for path in paths:
        unique.setdefault(os.path.realpath(path), path)
    return [describe(path) for path in unique.values()]


def describe(path):
    """A Found for one file: what its header says, or why it does not read."""
    item = Found(path=path, size=os.path.getsize(path))
    if not path.endswith(".safetensors"):
        item.kind = "legacy"
        return item
    try:
        meta = ckpt.read_header(path)
    except (ckpt.CheckpointError, OSError, ValueError) as e:
        item.problem = str(e)
        return item
    if meta.get("format") != ckpt.FORMAT:
        item.kind = "other"
        return item
    item.kind, item.task, item.part = meta.get("kind", "train"), meta.get("task"), meta.get("part")
    item.epoch, item.step_in_epoch = meta.get("epoch"), meta.get("step_in_epoch")
    try:
        item.global_step = int(meta.get("global_step", -1))
    except (TypeError, ValueError) as e:
        item.problem = str(e)
    return item


def newest_valid(found, task=None, kind="train"):
    """Load the newest checkpoint by global step that verifies; also return the ones skipped.

    Hand-off files win ties with rolling files of the same step, and file times are never used:
    a copy uploaded later is not newer training.
    """
    skipped = []
    candidates = [f for f in found if f.problem is None and f.kind == kind and (task is None or f.task == task)]
    candidates.sort(key=lambda f: (f.global_step, ckpt.HANDOFF_RE.match(os.path.basename(f.path)) is not None), reverse=True)
    for item in candidates:
        try:
            return ckpt.load(item.path), skipped
        except ckpt.CheckpointError as e:
            item.problem = str(e)
            skipped.append(item)
    return None, skipped


def find_resume(resume, out, task):
    """(checkpoint to continue from or None, everything found) by the --resume rule: "none", a path,
    or "auto", which prints every checkpoint under the input roots and which one is used and why."""
    if resume == "none":
        print("--resume none: starting fresh")
        return None, []
    if resume != "auto":
        return ckpt.load_any(resume), []
    roots = [out] + input_roots()
    found = scan(roots)
    saved, _ = newest_valid(found, task=task)
    print_discovery(found, saved, roots, task)
    return saved, found


def print_discovery(found, saved, roots, task):
    listed = sorted((f for f in found if f.kind != "other"), key=lambda f: f.global_step, reverse=True)
    if not listed:
        print(f"no checkpoints under {', '.join(roots)}; starting fresh")
        return
    print(f"checkpoints under {', '.join(roots)} (highest global step first):")
    print(f"  {'part':>4} {'epoch':>5} {'step':>6} {'global':>7} {'size':>9}  status / path")
    for f in listed:
        cells = [f.part, f.epoch, f.step_in_epoch, f.global_step if f.global_step >= 0 else None]
        print("  " + " ".join(f"{'-' if c is None else c:>{w}}" for c, w in zip(cells, (4, 5, 6, 7)))
              + f" {ckpt.file_size_text(f.size):>9}  {status(f, saved, task)}\n{'':36s}{f.path}")
    if saved is None:
        print(f"no valid checkpoint of task {task!r} among them; starting fresh")


def status(f, saved, task):
    """What became of a file found, as discovery's listing says it."""
    if saved is not None and f.path == saved.path:
        return "USING: the highest global step that verifies"
    if f.problem:
        return f"broken, skipped: {f.problem}"
    if f.kind == "legacy":
        return "legacy .pt/.pth: not read automatically; import with --resume PATH"
    if f.task != task:
        return f"task {f.task}, not {task}"
    if f.kind == "weights":
        return "weights only (best model): not a training state"
    if saved is not None and f.global_step > saved.meta["global_step"]:
        return "broken, skipped"
    return "ok (header read; older)"


def resolve_part(part, resume, task, saved, found):
    """The part number: "auto" = one more than the resumed checkpoint's part. Part N continues from
    part N-1, so with --resume auto a checkpoint of part N-1 or later must be in reach."""
    if part == "auto":
        part = (saved.meta.get("part") or 0) + 1 if saved is not None and saved.is_training else 1
        print(f"--part auto: this is part {part}")
        return part
    previous = part - 1
    if resume == "auto" and previous >= 1 and (saved is None or (saved.meta.get("part") or 0) < previous):
        usable = [f for f in found if f.kind == "train" and f.task == task and not f.problem]
        have = "; ".join(f"part {f.part} at global step {f.global_step} in {f.path}" for f in usable[:5]) or "nothing usable"
        raise ckpt.CheckpointError(
            f"part {part} continues from part {previous}, but no checkpoint of part {previous} or later is in "
            f"reach (found: {have}); attach checkpoint_part{previous}.safetensors (on Kaggle: Add Data, then the "
            f"previous session's output), or use --part auto to continue from what was found, or --resume none to "
            f"start over")
    return part


def choose_checkpoint(args, ranks):
    """(checkpoint or None, part number): rank 0 looks and decides, every rank loads what it chose,
    and a file that fails on any rank fails on all (no rank is left waiting for another)."""
    loaded = {}  # rank 0's checkpoint, read while deciding: only its path goes to the other ranks

    def decide():
        saved, found = find_resume(args.resume, args.out, args.task)
        if saved is not None and saved.meta.get("task") not in (None, args.task):
            raise ConfigError(f"{saved.path} was trained for task {saved.meta['task']!r}, not {args.task!r}; "
                              f"pass --task {saved.meta['task']} or another checkpoint")
        loaded["saved"] = saved
        return saved.path if saved else None, resolve_part(args.part, args.resume, args.task, saved, found)

    path, part = decided_on_rank0(ranks, decide, (ConfigError, DataError, ckpt.CheckpointError))
    saved, problem = loaded.get("saved"), None
    if not ranks.main:
        try:
            saved = ckpt.load_any(path) if path is not None else None
        except ckpt.CheckpointError as e:
            problem = str(e)
    if any_rank(ranks, problem is not None):
        raise ConfigError(problem or f"another process could not read {path}")
    return saved, part
