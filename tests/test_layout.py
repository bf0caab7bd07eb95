"""The code stays readable as teaching material: train_part.py reads top to bottom with its loop
early, functions fit on a screen, and nothing sends a reader to a document the repository lacks."""

import ast
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def block_depth(node, depth=0):
    """How deeply loops, conditions, with and try blocks nest inside a function (0 = flat)."""
    deepest = depth
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        inner = depth + 1 if isinstance(child, (ast.For, ast.While, ast.If, ast.With, ast.Try)) else depth
        deepest = max(deepest, block_depth(child, inner))
    return deepest


def functions(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    return {node.name: node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}


def test_train_part_reads_as_a_story():
    with open(os.path.join(ROOT, "train_part.py"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert len(lines) <= 900
    loop_starts = next(i for i, line in enumerate(lines, 1) if "TRAINING SECTION BEGIN" in line)
    assert loop_starts <= 400
    train = functions("train_part.py")["train"]
    assert train.lineno > loop_starts and block_depth(train) <= 4


def test_no_function_is_longer_than_a_screen():
    for path in ("train_part.py", "infer.py"):
        long = {name: node.end_lineno - node.lineno + 1 for name, node in functions(path).items()
                if node.end_lineno - node.lineno + 1 > 80}
        assert not long, (path, long)


def test_every_document_named_is_in_the_repository():
    named = re.compile(r"\b([A-Z][A-Z_]+\.md)\b")
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("runs", "__pycache__")]
        for name in files:
            if not name.endswith((".py", ".md")):
                continue
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                for doc in named.findall(f.read()):
                    assert os.path.exists(os.path.join(ROOT, doc)), f"{name} refers to {doc}, which is not in the repository"
