"""Two checkpoint readers against each other on one file: another version's ckpt.py (say, the one
before reading went through the safetensors library) and this one, loading a GPT-2-small state
with AdamW moments (1.5 GB) cold (page cache dropped, best effort) and hot, taking turns.

    git worktree add /tmp/baton-old <commit>
    python bench/ckpt_load_ab.py --old /tmp/baton-old/ckpt.py [--rounds 6]

Whole runs of bench/ckpt_io.py drift with the disk by more than the difference of two readers;
turns in one process spread the drift over both. Prints figures; asserts nothing.
"""

import argparse
import gc
import importlib.util
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from ckpt_io import build_state, drop_cache  # noqa: E402


def module_from(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--old", required=True, help="path of the other version's ckpt.py")
    p.add_argument("--rounds", type=int, default=6)
    args = p.parse_args()
    readers = {"old": module_from(args.old, "ckpt_old"),
               "this": module_from(os.path.join(os.path.dirname(HERE), "ckpt.py"), "ckpt_this")}
    model, state = build_state(12, 768)
    with tempfile.TemporaryDirectory(dir=HERE) as folder:
        path = os.path.join(folder, "state.safetensors")
        readers["old"].write_file(path, state, {"kind": "train"})

        def load(reader):
            t0 = time.perf_counter()
            saved = reader.load(path)
            model.load_state_dict(saved.state["model"])
            seconds = time.perf_counter() - t0
            del saved
            gc.collect()  # unmap before the next drop of the page cache
            return seconds
        times = {name: {"cold": [], "hot": []} for name in readers}
        names = list(readers)
        for r in range(args.rounds):
            for name in names[r % 2:] + names[:r % 2]:
                drop_cache(path)
                times[name]["cold"].append(load(readers[name]))
                times[name]["hot"].append(load(readers[name]))
    for name, t in times.items():
        print(f"{name:5s} cold {statistics.median(t['cold']):.3f} s  hot {statistics.median(t['hot']):.3f} s  "
              f"(cold runs {', '.join(f'{x:.2f}' for x in t['cold'])})")


if __name__ == "__main__":
    main()
