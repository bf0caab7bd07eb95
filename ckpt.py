"""Checkpoints: the baton that carries a training run from one session to the next.

One `.safetensors` file holds the whole training state: model weights (`model.<name>`),
optimizer, AMP scaler, RNG states, sampler position, counters, history and config. The
state is a nested dict of tensors and JSON values; tensors go into the safetensors payload,
everything else into the header's metadata. Nothing here knows about any model or task.

Guarantees (the checkpoint contract; the README's "The checkpoint format" says the same for users):
- no pickle is ever written, and reading a file can never run code;
- writes are atomic: temp file in the same folder, fsync, rename, fsync the folder;
- files are read by the safetensors library, which validates the header (size, JSON, dtypes,
  every shape against its byte range, byte ranges that cover the payload without overlaps or
  holes) and maps the file; a file it refuses, even one edited on purpose, is one sentence;
- every file carries a checksum of its header and payload, verified on load, so a truncated
  or corrupt upload is one clear error instead of a traceback or silently wrong weights;
- discovery picks the newest valid file by the `global_step` in its header, never by file time;
- pruning only touches rolling files, and never removes the newest one.
Besides reading and writing, this module names, prunes and lists the files of a run folder and
keeps it within its disk (`make_room`); which checkpoint a part continues from is
training/discovery.py's question.
"""

import dataclasses
import datetime
import json
import os
import random
import re
import shutil
import struct
import sys
import threading
import time

import numpy as np
import torch
import xxhash
from safetensors import SafetensorError, safe_open
from tqdm import tqdm

FORMAT = "baton/1"
HASH_NAME = "xxh3_64"
# Fixed-width placeholder: the real digest is written over it once the payload has streamed
# past, so the file is written in one pass and the hash still covers the header.
CHECKSUM_PLACEHOLDER = HASH_NAME + ":" + "0" * 16
RAW_STRING_KEYS = {"format", "task", "kind", "created_at", "checksum"}  # not JSON-encoded
ROLLING_RE = re.compile(r"^ckpt_e(\d+)_s(\d+)_g(\d+)\.safetensors$")
HANDOFF_RE = re.compile(r"^checkpoint_part(\d+)\.safetensors$")
BEST_NAME = "best_model.safetensors"
LATEST_NAME = "latest.txt"
WRITE_CHUNK = 64 << 20  # bytes per write() call; large tensors are written in slices

DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}


class CheckpointError(Exception):
    """A problem with a checkpoint file that the user can fix; the message is one sentence."""


# -----------------------------------------------------------------------------
# Flattening a nested state into tensors + a JSON skeleton

def same_tensor(t):
    """What two names of one tensor share (tied weights: GPT's lm_head is its token embedding);
    empty tensors have no storage to share and never match."""
    if not t.numel():
        return None
    return t.device, t.untyped_storage().data_ptr(), t.storage_offset(), t.dtype, tuple(t.shape), tuple(t.stride())


def flatten_state(tree, prefix=""):
    """Split a nested dict/list of tensors and JSON values into (tensors, skeleton).

    Tensors are named by their path joined with '.', so `{"model": {"wte.weight": t}}`
    stores `t` under `model.wte.weight`. The skeleton is the same tree with each tensor
    replaced by `{"__tensor__": name}`; dicts with integer keys (optimizer state) are
    marked so the keys come back as ints. A tensor that appears twice (tied weights: GPT's
    lm_head is its token embedding) is stored once and both places point to it.
    """
    tensors, seen = {}, {}

    def walk(node, path):
        if isinstance(node, torch.Tensor):
            if path in tensors:
                raise ValueError(f"two tensors flatten to the same name {path!r}")
            view = same_tensor(node)
            if view is not None and view in seen:
                return {"__tensor__": seen[view]}
            seen[view] = path
            tensors[path] = node
            return {"__tensor__": path}
        if isinstance(node, dict):
            int_keys = bool(node) and all(isinstance(k, int) for k in node)
            if not int_keys and not all(isinstance(k, str) for k in node):
                raise TypeError(f"checkpoint dict keys must be all str or all int at {path!r}")
            items = {str(k): walk(v, f"{path}.{k}" if path else str(k)) for k, v in node.items()}
            return {"__int_keys__": items} if int_keys else items
        if isinstance(node, (list, tuple)):
            return [walk(v, f"{path}.{i}" if path else str(i)) for i, v in enumerate(node)]
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if isinstance(node, (np.integer, np.floating)):
            return node.item()
        raise TypeError(f"cannot store {type(node).__name__} at {path!r} in a checkpoint")

    return tensors, walk(tree, prefix)


def unflatten_state(skeleton, tensors):
    """Inverse of flatten_state."""
    if isinstance(skeleton, dict):
        if set(skeleton) == {"__tensor__"}:
            return tensors[skeleton["__tensor__"]]
        if set(skeleton) == {"__int_keys__"}:
            return {int(k): unflatten_state(v, tensors) for k, v in skeleton["__int_keys__"].items()}
        return {k: unflatten_state(v, tensors) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [unflatten_state(v, tensors) for v in skeleton]
    return skeleton


# -----------------------------------------------------------------------------
# RNG capture: Python, NumPy, torch CPU and every CUDA device

def capture_rng():
    version, mt_state, gauss_next = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    rng = {
        "python": {"version": version, "state": torch.tensor(mt_state, dtype=torch.int64),
                   "gauss_next": gauss_next},
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = list(torch.cuda.get_rng_state_all())
    return rng


def restore_rng(rng):
    py = rng["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss_next"]))
    npr = rng["numpy"]
    np.random.set_state((npr["name"], npr["keys"].numpy().astype(np.uint32), npr["pos"],
                         npr["has_gauss"], npr["cached_gaussian"]))
    torch.set_rng_state(rng["torch"].clone())
    cuda_states = rng.get("cuda") or []
    if cuda_states and torch.cuda.is_available():
        if len(cuda_states) != torch.cuda.device_count():
            print(f"warning: checkpoint has RNG states for {len(cuda_states)} CUDA devices, "
                  f"this machine has {torch.cuda.device_count()}; restoring the ones that match")
        for i, state in enumerate(cuda_states[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(state.clone(), i)


# -----------------------------------------------------------------------------
# Writing

def _tensor_bytes(t):
    """A zero-copy byte view of a tensor's data (a copy only for GPU or non-contiguous tensors)."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous().reshape(-1)
    if t.numel() == 0:
        return memoryview(b"")
    return memoryview(t.view(torch.uint8).numpy())


def _encode_meta(meta):
    out = {}
    for key, value in meta.items():
        out[key] = value if isinstance(value, str) and key in RAW_STRING_KEYS else json.dumps(value)
    return out


def _fsync_dir(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # some filesystems (and Windows) cannot open a folder; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_file(path, state, meta):
    """Atomically write `state` (nested tensors + JSON) with header `meta` to `path`.

    Returns the number of bytes written. The previous file at `path`, if any, stays whole
    until the new one is complete on disk.

    Why not the safetensors library's writer (reading does go through the library): the checksum
    lives in the header, which the library writes first, so with it the digest needs a second pass
    over the whole file; here it is hashed in a second thread while the bytes are written. For
    GPT-2 small + AdamW (1.49 GB, bench/ckpt_io.py, five runs on 2026-12-01): this function took a
    median 1.91 s, save_file + the checksum pass + rename 2.14 s (BENCHMARKS.md).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tensors, skeleton = flatten_state(state)

    # Largest element size first keeps every tensor aligned to its element size (the header
    # is padded to 8 bytes), so loaders can map tensors without copying.
    names = sorted(tensors, key=lambda n: -tensors[n].element_size())
    header, offset = {}, 0
    for name in names:
        t = tensors[name]
        if t.dtype not in DTYPES:
            raise TypeError(f"tensor {name!r} has dtype {t.dtype}, which safetensors cannot store")
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    full_meta = {"format": FORMAT, "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    full_meta.update(meta)
    full_meta["state"] = skeleton
    full_meta["checksum"] = CHECKSUM_PLACEHOLDER
    header["__metadata__"] = _encode_meta(full_meta)
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)
    checksum_at = 8 + header_bytes.index(CHECKSUM_PLACEHOLDER.encode()) + len(HASH_NAME) + 1

    pieces = []
    for name in names:
        data = _tensor_bytes(tensors[name])
        pieces.extend(data[at:at + WRITE_CHUNK] for at in range(0, len(data), WRITE_CHUNK))

    def write(f):
        hasher = xxhash.xxh3_64(header_bytes)
        # The checksum is computed in a second thread while this one writes (xxhash releases the
        # GIL), so it costs no wall time on a machine with two cores.
        hashing = threading.Thread(target=lambda: [hasher.update(piece) for piece in pieces])
        hashing.start()
        try:
            f.write(struct.pack("<Q", len(header_bytes)))
            f.write(header_bytes)
            for piece in pieces:
                f.write(piece)
        finally:
            hashing.join()
        f.seek(checksum_at)
        f.write(hasher.hexdigest().encode())

    try:
        write_atomic(path, write)
    except OSError as e:
        raise CheckpointError(f"could not write {path}: {e.strerror or e}; existing checkpoints are untouched") from None
    return 8 + len(header_bytes) + offset


def temp_path(path, suffix=""):
    """The temporary name a file is written under before its atomic rename: hidden, same folder,
    tagged with the writer's pid (remove_stale_temp_files knows the pattern)."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}.tmp{os.getpid()}{suffix}")


def write_atomic(path, write):
    """Atomically replace `path` with what `write(f)` writes into a binary file: a temp file beside
    it, fsync, rename, fsync the folder. A reader sees the old file or the new one, never half of
    one; on an error the temp file is removed and the error raised."""
    path = os.fspath(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def write_text_atomic(path, text):
    """Atomically replace a small text file (latest.txt, metrics.json)."""
    write_atomic(path, lambda f: f.write(text.encode("utf-8")))


# -----------------------------------------------------------------------------
# Reading

def _open(path):
    """The file, opened by the safetensors library: it checks the header's size and JSON, every dtype,
    every shape against its byte range, and that the ranges cover the payload without overlaps or
    holes, so a damaged or edited file fails here with the library's reason."""
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    size = os.path.getsize(path)
    if size < 8:
        raise CheckpointError(f"{path} is not a checkpoint: it is only {size} bytes long (truncated or empty)")
    try:
        return safe_open(path, framework="pt")
    except SafetensorError as e:
        reason = str(e).removeprefix("Error while deserializing header: ")
        reason = re.sub(r"unknown variant (`[^`]*`), expected one of .*? at", r"unknown dtype \1 at", reason)
        raise CheckpointError(f"{path} is truncated, damaged or not a safetensors file ({reason}); copy or upload "
                              f"it again, or use another checkpoint") from None
    except OSError as e:
        raise CheckpointError(f"could not read {path}: {e.strerror or e}") from None


def _decode_meta(raw_meta, path):
    meta = {}
    for key, value in raw_meta.items():
        try:
            meta[key] = value if key in RAW_STRING_KEYS else json.loads(value)
        except json.JSONDecodeError:
            meta[key] = value
        except RecursionError:  # JSON nested thousands deep: no file Baton writes
            raise CheckpointError(f"{path} is corrupt: its metadata {key!r} is nested too deeply") from None
    return meta


def read_header(path):
    """The metadata of a checkpoint, without reading its payload."""
    with _open(os.fspath(path)) as f:
        return _decode_meta(f.metadata() or {}, path)


def _verify_checksum(path, tensors, expected):
    """xxh3 of the header (with the digest blanked) and the payload, against the digest in the header.
    The payload is hashed through the tensors themselves, in file order: the library has checked that
    their byte ranges cover it without gaps, and the pages it maps are read once, for both."""
    algo, _, digest = expected.partition(":")
    if algo != HASH_NAME or len(digest) != 16:
        raise CheckpointError(f"{path} has no valid checksum in its header ({expected!r})")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))  # the library has checked n against the file
        raw_header = f.read(n)
    index = json.loads(raw_header)  # parses: the library accepted it (and nests far less than json allows)
    hasher = xxhash.xxh3_64(raw_header.replace(expected.encode(), CHECKSUM_PLACEHOLDER.encode(), 1))
    for name in sorted(tensors, key=lambda name: index[name]["data_offsets"][0]):
        hasher.update(_tensor_bytes(tensors[name]))
    if hasher.hexdigest() != digest:
        raise CheckpointError(f"{path} is corrupt: its checksum does not match its contents; copy or upload it again")


@dataclasses.dataclass
class Checkpoint:
    path: str
    meta: dict           # header metadata (format, task, part, epoch, global_step, config, ...)
    state: dict          # the nested state as saved, tensors included
    size: int

    @property
    def is_training(self):
        """A whole training state (kind "train"), which a part continues exactly; not a weights-only
        best model or a legacy .pt import."""
        return self.meta.get("kind") == "train"


def load(path, verify=True):
    """Read and verify a Baton checkpoint; tensors are zero-copy, copy-on-write views of the
    library's memory map (training may change them in place; the file never changes)."""
    path = os.fspath(path)
    with _open(path) as f:
        raw_meta = f.metadata() or {}
        if raw_meta.get("format") != FORMAT:
            raise CheckpointError(f"{path} is a safetensors file but not a Baton checkpoint "
                                  f"(format {raw_meta.get('format')!r}, expected {FORMAT!r})")
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    if verify:
        _verify_checksum(path, tensors, raw_meta.get("checksum", ""))
    meta = _decode_meta(raw_meta, path)
    try:
        state = unflatten_state(meta.pop("state"), tensors)
        if not isinstance(state, dict):
            raise TypeError
    except (KeyError, TypeError, AttributeError, RecursionError):
        raise CheckpointError(f"{path} is corrupt: its state index does not match its tensors") from None
    return Checkpoint(path=path, meta=meta, state=state, size=os.path.getsize(path))


def load_legacy(path):
    """Import an old `.pt/.pth` checkpoint ({'model_state_dict': ..., 'epoch': ...}).

    Only `torch.load(weights_only=True)` is used: it unpickles plain tensors and containers and
    refuses anything that would construct other objects or run code.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # the unpickler raises several types; all mean "not a plain state"
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights_only" in str(e) or "Unsupported" in str(e) or "global" in str(e).lower():
            reason = "it contains pickled objects or code, not only tensors"
        raise CheckpointError(f"refusing to load {path}: {reason} (Baton reads .pt/.pth files only with "
                              f"torch.load(weights_only=True))") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} is not a checkpoint dict (found {type(obj).__name__})")
    if "model_state_dict" in obj:
        model = obj["model_state_dict"]
    elif "state_dict" in obj:
        model = obj["state_dict"]
    elif obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        model = obj  # a bare state_dict
    else:
        raise CheckpointError(f"{path} has no 'model_state_dict' (keys: {', '.join(map(str, list(obj)[:8]))})")
    # Weights saved from DataParallel/DDP or torch.compile carry a wrapper prefix.
    model = {re.sub(r"^(module\.|_orig_mod\.)+", "", k): v for k, v in model.items()}
    state = {"model": model}
    for ours, theirs in (("optimizer", "optimizer_state_dict"), ("scaler", "scaler_state_dict"),
                         ("scheduler", "scheduler_state_dict")):
        if isinstance(obj.get(theirs), dict):
            state[ours] = obj[theirs]
    meta = {"format": "legacy", "kind": "legacy", "task": obj.get("task"),
            "epoch": int(obj.get("epoch", 0) or 0), "step_in_epoch": int(obj.get("step", 0) or 0),
            "global_step": int(obj.get("global_step", obj.get("step", 0)) or 0),
            "legacy_keys": sorted(map(str, obj))}
    return Checkpoint(path=path, meta=meta, state=state, size=os.path.getsize(path))


def load_any(path):
    """A Baton `.safetensors` checkpoint (verified) or a legacy `.pt/.pth` file."""
    if os.fspath(path).endswith((".pt", ".pth", ".bin")):
        return load_legacy(path)
    return load(path)


# -----------------------------------------------------------------------------
# The files of a run folder: compatibility, names, pruning, the disk guard


def fill_tied(theirs, ours):
    """Weights tied to another (GPT-2's lm_head is its token embedding) may be left out of a file,
    as Hugging Face saves them: take them from the tensor they are tied to, as from_pretrained does.
    `ours` is the model's state_dict, where tied names share one tensor."""
    tied = {}
    for name, t in ours.items():
        key = same_tensor(t)
        if key is not None:
            tied.setdefault(key, []).append(name)
    for names in tied.values():
        present = [n for n in names if n in theirs]
        if present:
            for name in names:
                theirs.setdefault(name, theirs[present[0]])


def check_compatible(saved, state_dict):
    """Refuse a checkpoint that cannot continue this run: no weights, or another model shape."""
    if not isinstance(saved.state.get("model"), dict):
        raise CheckpointError(f"{saved.path} holds no model weights")
    fill_tied(saved.state["model"], state_dict)
    ours, theirs = state_dict, saved.state["model"]
    missing, unexpected = sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours))
    wrong = [f"{k} {tuple(theirs[k].shape)} vs {tuple(ours[k].shape)}"
             for k in sorted(set(ours) & set(theirs)) if theirs[k].shape != ours[k].shape]
    if missing or unexpected or wrong:
        details = "; ".join(x for x in (
            f"missing {', '.join(missing[:4])}" if missing else "",
            f"unexpected {', '.join(unexpected[:4])}" if unexpected else "",
            f"shapes {', '.join(wrong[:4])}" if wrong else "") if x)
        raise CheckpointError(f"{saved.path} holds a different model than this run's config builds ({details}); "
                              f"a resumed run cannot change the model's shape")


def state_bytes(state):
    """Payload bytes of a state (tied tensors once), as write_file would store it."""
    return sum(t.numel() * t.element_size() for t in flatten_state(state)[0].values())


def make_room(folder, need, keep_last):
    """Make sure `need` bytes fit in `folder` with room to spare, pruning old rolling checkpoints early
    if that helps; the newest checkpoint is never removed before a new one exists. Raises a
    CheckpointError that says why, with every existing checkpoint kept, when they still do not fit."""
    spare = int(need * 1.05) + (32 << 20)
    if shutil.disk_usage(folder).free >= spare:
        return
    removed = prune(folder, max(keep_last - 1, 1))
    if removed:
        tqdm.write(f"low disk space: pruned {', '.join(removed)} before saving")  # above a live progress bar
    free = shutil.disk_usage(folder).free
    if free < spare:
        raise CheckpointError(f"not enough disk space in {folder} for a {file_size_text(need)} checkpoint "
                              f"({file_size_text(free)} free after pruning); every existing checkpoint was kept")


def estimate_write_seconds(folder, nbytes):
    """Seconds to write a checkpoint of `nbytes`, from one real write of up to 64 MB in `folder`."""
    probe = min(nbytes, 64 << 20)
    path = os.path.join(folder, ".write_probe.safetensors")
    t0 = time.monotonic()
    write_file(path, {"probe": torch.zeros(probe // 4, dtype=torch.float32)}, {"kind": "probe"})
    seconds = time.monotonic() - t0
    os.remove(path)
    return seconds * nbytes / max(probe, 1) + 0.05


def rolling_name(epoch, step_in_epoch, global_step):
    return f"ckpt_e{epoch}_s{step_in_epoch}_g{global_step}.safetensors"


def handoff_name(part):
    return f"checkpoint_part{part}.safetensors"


def prune(folder, keep_last):
    """Delete all but the newest `keep_last` rolling checkpoints in `folder`; returns what went.

    Only files named like rolling checkpoints are touched; hand-offs and the best model never are.
    The newest is always kept, keep_last 0 included: it is what a diverging run rolls back to.
    """
    if keep_last is None or keep_last < 0:
        return []
    keep_last = max(keep_last, 1)
    rolling = []
    for name in os.listdir(folder):
        m = ROLLING_RE.match(name)
        if m:
            rolling.append((int(m.group(3)), name))
    rolling.sort(reverse=True)
    removed = []
    for _, name in rolling[keep_last:]:
        try:
            os.remove(os.path.join(folder, name))
            removed.append(name)
        except FileNotFoundError:
            pass
    return removed


TEMP_RE = re.compile(r"^\..+\.tmp\d+(\.\w+)?$")


def remove_stale_temp_files(folder):
    """Temp files left by a process killed mid-write are garbage: the rename never happened."""
    if not os.path.isdir(folder):
        return
    for name in os.listdir(folder):
        if TEMP_RE.match(name):
            try:
                os.remove(os.path.join(folder, name))
            except OSError:
                pass


def file_size_text(nbytes):
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1024 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024


if __name__ == "__main__":  # `python ckpt.py FILE...`: verify files and print their headers
    status = 0
    for p in sys.argv[1:]:
        try:
            ck = load_any(p)
            keys = ("task", "kind", "part", "epoch", "step_in_epoch", "global_step", "created_at")
            print(f"OK   {p} ({file_size_text(ck.size)}): " + ", ".join(f"{k}={ck.meta.get(k)}" for k in keys))
        except CheckpointError as e:
            print(f"BAD  {e}")
            status = 1
    sys.exit(status)
