"""Checkpoint save/load speed: ckpt.py against torch.save/torch.load, a Hugging Face Trainer-style
checkpoint, the safetensors library, and a plain sequential write/read of the same bytes.
Prints figures; asserts nothing.

    python bench/ckpt_io.py [--folder DIR] [--repeat 5] [--n-layer 12 --n-embd 768]

The default model is GPT-2 small (124M parameters) with AdamW state (two moments per
parameter), so a checkpoint holds ~1.5 GB. Every write is fsynced (a checkpoint that is not on
disk is not a checkpoint). The Trainer-style checkpoint is what transformers' Trainer writes:
the model via save_pretrained (safetensors) plus torch.save of the optimizer, the scheduler and
the RNG states, in a folder. "save_file + checksum pass" is what Baton's guarantees would cost with
the library's writer (see ckpt.write_file). Before each timed save, earlier writes are flushed
(os.sync, not timed). Loads are timed twice: "cold" after asking the kernel to drop the
file from the page cache (posix_fadvise DONTNEED; best effort), and "hot" straight after.
"""

import argparse
import os
import shutil
import statistics
import struct
import sys
import tempfile
import time

import torch
import xxhash

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import ckpt  # noqa: E402
from model.gpt import GPT, GPTConfig  # noqa: E402


def build_state(n_layer, n_embd):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50257, block_size=1024, n_layer=n_layer, n_head=12, n_embd=n_embd))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    opt.step()  # creates exp_avg and exp_avg_sq for every parameter
    return model, {"model": model.state_dict(), "optimizer": opt.state_dict(), "rng": ckpt.capture_rng()}


def fsync_path(path):
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


def drop_cache(path):
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)


def interleaved(fns, repeat, settle=False):
    """Median seconds of each function over `repeat` rounds, one call of each per round: this disk's
    speed drifts by 2-3x over minutes, and taking turns spreads the drift over all of them. With
    `settle`, dirty pages of earlier writes are flushed first (not timed), so a save does not pay
    for the previous one's write-back."""
    times = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            if settle:
                os.sync()
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(values) for name, values in times.items()}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", default=None, help="where to write (default: a temp folder on the same disk as the repo)")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--n-layer", type=int, default=12)
    p.add_argument("--n-embd", type=int, default=768)
    return p.parse_args()


# ----------------------------------------------------------------------------- the ways to save

def baton_save(path, state):
    ckpt.write_file(path, state, {"task": "bench", "kind": "train", "global_step": 1})


def torch_save(path, state):
    torch.save(state, path)
    fsync_path(path)


def safetensors_save(path, tensors):
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in tensors.items()}, path)
    fsync_path(path)


def safetensors_save_checksummed(path, tensors):
    """What Baton's guarantees would cost with the library's writer: it writes the header itself, so
    the checksum (which lives in the header) needs a second pass over the file before the digest
    is patched in; then fsync, rename and the folder's fsync."""
    from safetensors.torch import save_file
    meta = ckpt._encode_meta({"format": ckpt.FORMAT, "kind": "train", "checksum": ckpt.CHECKSUM_PLACEHOLDER})
    tmp = ckpt.temp_path(path)
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=meta)
    with open(tmp, "r+b") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = f.read(n)
        hasher = xxhash.xxh3_64(header)
        for chunk in iter(lambda: f.read(64 << 20), b""):
            hasher.update(chunk)
        f.seek(8 + header.index(ckpt.CHECKSUM_PLACEHOLDER.encode()) + len(ckpt.HASH_NAME) + 1)
        f.write(hasher.hexdigest().encode())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    ckpt._fsync_dir(os.path.dirname(path))


def trainer_save(folder, model, state):
    model.save_pretrained(folder)  # the model part, as a Trainer writes it (safetensors)
    torch.save(state["optimizer"], os.path.join(folder, "optimizer.pt"))
    torch.save({"last_epoch": 1, "_last_lr": [1e-4]}, os.path.join(folder, "scheduler.pt"))
    torch.save(state["rng"], os.path.join(folder, "rng_state.pth"))
    for name in os.listdir(folder):
        fsync_path(os.path.join(folder, name))


def plain_write(path, tensors):
    with open(path, "wb") as f:
        for t in tensors.values():
            f.write(memoryview(t.contiguous().reshape(-1).view(torch.uint8).numpy()))
        f.flush()
        os.fsync(f.fileno())


def time_saves(model, state, tensors, paths, repeat, mb):
    """Every way to save, `repeat` rounds taking turns; prints each one's median and speed."""
    saves = [("plain write of the same bytes", lambda: plain_write(paths["plain"], tensors)),
             ("ckpt.write_file (atomic, checksummed)", lambda: baton_save(paths["baton"], state)),
             ("torch.save", lambda: torch_save(paths["torch"], state)),
             ("Trainer-style folder", lambda: trainer_save(paths["trainer"], model, state)),
             ("safetensors.save_file", lambda: safetensors_save(paths["st"], tensors)),
             ("save_file + checksum pass + rename", lambda: safetensors_save_checksummed(paths["st_sum"], tensors))]
    print(f"\nsave ({repeat} rounds, median, fsync included)")
    results = interleaved(dict(saves), repeat, settle=True)
    plain = results[saves[0][0]]
    for name, _ in saves:
        s = results[name]
        print(f"  {name:40s} {s:6.2f} s  {mb / s:7.0f} MB/s  {plain / s:5.0%} of plain-write speed")


# ----------------------------------------------------------------------------- the ways to load

def plain_read(path):
    with open(path, "rb") as f:
        f.read()


def baton_load(path, model):
    saved = ckpt.load(path)  # verifies the checksum: every byte is read
    model.load_state_dict(saved.state["model"])


def torch_load(path, model):
    obj = torch.load(path, weights_only=True)
    model.load_state_dict(obj["model"])


def torch_load_mmap(path, model):
    obj = torch.load(path, weights_only=True, mmap=True)
    model.load_state_dict(obj["model"])


def safetensors_load(path, model):
    from safetensors.torch import load_file
    sd = load_file(path)
    model.load_state_dict({k[len("model."):]: v for k, v in sd.items() if k.startswith("model.")}, strict=False)


def cold(fn, path):
    """`fn` after asking the kernel to drop `path` from the page cache."""
    def run():
        drop_cache(path)
        fn()
    return run


def time_loads(model, paths, repeat, mb):
    """Every way to load, cold then hot, `repeat` rounds taking turns; prints each one's medians."""
    loads = [("plain read of the same bytes", lambda: plain_read(paths["plain"]), "plain"),
             ("ckpt.load (mmap, checksum verified)", lambda: baton_load(paths["baton"], model), "baton"),
             ("torch.load(weights_only=True)", lambda: torch_load(paths["torch"], model), "torch"),
             ("torch.load(weights_only=True, mmap=True)", lambda: torch_load_mmap(paths["torch"], model), "torch"),
             ("safetensors.load_file", lambda: safetensors_load(paths["st"], model), "st")]
    print("\nload (state into memory, model weights copied into the model)")
    print(f"  {'':40s} {'cold':>8s} {'hot':>8s}")
    colds = interleaved({name: cold(fn, paths[key]) for name, fn, key in loads}, repeat)
    hots = interleaved({name: fn for name, fn, _ in loads}, repeat)
    for name, _, _ in loads:
        c, h = colds[name], hots[name]
        print(f"  {name:40s} {c:6.2f} s {h:6.2f} s   ({mb / c:5.0f} / {mb / h:5.0f} MB/s)")


def size(path):
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(path, n)) for n in os.listdir(path))
    return os.path.getsize(path)


def main():
    args = parse_args()
    folder = args.folder or tempfile.mkdtemp(prefix="baton-bench-", dir=os.path.dirname(os.path.abspath(__file__)))
    os.makedirs(folder, exist_ok=True)

    model, state = build_state(args.n_layer, args.n_embd)
    tensors, _ = ckpt.flatten_state(state)
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    mb = nbytes / 1e6
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters; state {mb:,.0f} MB "
          f"in {len(tensors)} tensors; folder {folder}; torch {torch.__version__}, {os.cpu_count()} CPUs")
    paths = {k: os.path.join(folder, f"bench.{k}") for k in ("baton", "torch", "st", "plain", "trainer", "st_sum")}

    time_saves(model, state, tensors, paths, args.repeat, mb)
    time_loads(model, paths, args.repeat, mb)

    print("\nsizes: " + ", ".join(f"{k} {size(v) / 1e6:,.0f} MB" for k, v in paths.items()))
    for path in paths.values():
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    if args.folder is None:
        os.rmdir(folder)


if __name__ == "__main__":
    main()
