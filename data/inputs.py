"""Where a session's inputs are attached: the read-only roots (Kaggle's /kaggle/input, where datasets
and earlier sessions' outputs appear) and a walk of them that stays quick.

Token files (data/text.py, by training/reuse.py's rule) and checkpoints (training/discovery.py) are both
looked for here.
"""

import os


def input_roots():
    """The read-only input folders: BATON_INPUT_ROOTS (`:`-separated), by default /kaggle/input."""
    return [r for r in os.environ.get("BATON_INPUT_ROOTS", "/kaggle/input").split(os.pathsep) if r]


def walk_inputs(root, max_depth=6, big_folder=10_000):
    """(folder, depth below root, file names) of every folder under `root`, in sorted order, not
    below `max_depth` or below a folder of more than `big_folder` entries (a competition's audio),
    so a walk of /kaggle/input stays quick. Lazy: a caller that has found what it wants stops it."""
    base_depth = root.rstrip(os.sep).count(os.sep)
    for folder, dirs, files in os.walk(root):
        depth = folder.count(os.sep) - base_depth
        if depth >= max_depth or len(dirs) + len(files) > big_folder:
            dirs[:] = []
        dirs.sort()
        yield folder, depth, files
