"""The code stays readable as teaching material: the tree shows the architecture (data/ below model/
and training/, no module holding two ideas), train_part.py reads top to bottom with its loop early,
functions fit on a screen and the training stage's nest at most 4 blocks deep, and nothing sends a reader to a file, section or document the repository
lacks."""

import ast
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GENERATED = {"kaggle_kernel.py", "k.py"}  # what make_kernel.py writes (k.py: its --out example), never committed


def block_depth(node, depth=0):
    """How deeply loops, conditions, with and try blocks nest inside a function (0 = flat)."""
    deepest = depth
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        inner = depth + 1 if isinstance(child, (ast.For, ast.While, ast.If, ast.With, ast.Try)) else depth
        deepest = max(deepest, block_depth(child, inner))
    return deepest


def parse(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return ast.parse(f.read())


def functions(path):
    return {node.name: node for node in ast.walk(parse(path)) if isinstance(node, ast.FunctionDef)}


def project_files(suffixes):
    """Every file of the repository with one of `suffixes`, as a path relative to the root."""
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in ("runs", "__pycache__"))
        for name in sorted(files):
            if name.endswith(suffixes):
                yield os.path.relpath(os.path.join(folder, name), ROOT)


def modules():
    """The project's own modules: the stages, ckpt.py and the packages; not tests, bench or the
    scripts that made the embedded samples."""
    return [p for p in project_files((".py",))
            if not p.startswith(("tests" + os.sep, "bench" + os.sep)) and not os.path.basename(p).startswith("make_")
            or p == "make_kernel.py"]


def imported(path):
    """The top-level package of everything `path` imports, function-level imports included."""
    names = set()
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_data_and_model_import_nothing_above_them():
    # data/ holds data only; model/ holds the models and their decoding. Neither knows training/, and
    # model/ knows no checkpoint file (ckpt.py).
    below = {"data": {"model", "training", "train_part", "infer"}, "model": {"data", "training", "train_part", "infer", "ckpt"}}
    for package, forbidden in below.items():
        for path in project_files((".py",)):
            if path.startswith(package + os.sep):
                assert not imported(path) & forbidden, f"{path} imports {sorted(imported(path) & forbidden)}"


def test_no_module_but_the_training_stage_holds_two_ideas():
    sizes = {}
    for path in modules():
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            sizes[path] = len(f.read().splitlines())
    assert sizes["train_part.py"] <= 800
    assert not {p: n for p, n in sizes.items() if n > 600 and p != "train_part.py"}


def test_train_part_reads_as_a_story():
    with open(os.path.join(ROOT, "train_part.py"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    loop_starts = next(i for i, line in enumerate(lines, 1) if "TRAINING SECTION BEGIN" in line)
    loop_ends = next(i for i, line in enumerate(lines, 1) if "TRAINING SECTION END" in line)
    assert loop_starts <= 300
    fns = functions("train_part.py")
    assert fns["train"].lineno > loop_starts
    # The README's "What happens in one training step" walks through these, between the banners.
    for name in ("train", "train_step", "stop_reason", "log_evaluate_save", "check", "recover"):
        assert loop_starts < fns[name].lineno < loop_ends, name


def test_no_function_of_the_training_stage_nests_more_than_4_blocks():
    stage = ["train_part.py"] + [p for p in project_files((".py",)) if p.startswith("training" + os.sep)]
    deep = {f"{path}:{node.lineno} {node.name}": block_depth(node) for path in stage
            for node in ast.walk(parse(path)) if isinstance(node, ast.FunctionDef) and block_depth(node) > 4}
    assert not deep


def test_no_function_is_longer_than_a_screen():
    for path in modules() + [p for p in project_files((".py",)) if p.startswith("bench" + os.sep)]:
        long = {f"{node.lineno} {node.name}": node.end_lineno - node.lineno + 1 for node in ast.walk(parse(path))
                if isinstance(node, ast.FunctionDef) and node.end_lineno - node.lineno + 1 > 80}
        assert not long, (path, long)


def test_every_document_named_is_in_the_repository():
    named = re.compile(r"\b([A-Z][A-Z_]+\.md)\b")
    for path in project_files((".py", ".md")):
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            for doc in named.findall(f.read()):
                assert os.path.exists(os.path.join(ROOT, doc)), f"{path} refers to {doc}, which is not in the repository"


def test_every_python_file_named_is_in_the_repository():
    # A path is looked for from the root and from the naming file's folder; a bare name (asr.py, in
    # training/'s own docstring) must be some file of the tree.
    everywhere = {os.path.basename(p) for p in project_files((".py",))} | GENERATED
    named = re.compile(r"(?<![\w./-])((?:[\w-]+/)*[\w-]+\.py)\b")
    for path in project_files((".py", ".md")):
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            text = f.read()
        for name in set(named.findall(text)):
            if "/" in name:
                here = os.path.join(os.path.dirname(path), name)
                assert os.path.exists(os.path.join(ROOT, name)) or os.path.exists(os.path.join(ROOT, here)), \
                    f"{path} names {name}, which is not in the repository"
            else:
                assert name in everywhere, f"{path} names {name}, which is not in the repository"


def test_every_section_named_is_a_heading():
    # `see "When training diverges"` in a document, or `the README's "The checkpoint format"` in code.
    headings = {}
    for doc in ("README.md", "BENCHMARKS.md"):
        with open(os.path.join(ROOT, doc), encoding="utf-8") as f:
            headings[doc] = [line.lstrip("#").strip() for line in f if line.startswith("#")]
    reference = re.compile(r"(?:\bsee |README's )\"([^\"]+)\"")
    for path in project_files((".py", ".md")):
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            text = f.read()
        for match in reference.finditer(text):
            doc = "README.md" if "README" in match.group(0) or not path.endswith(".md") else path
            assert any(h.startswith(match.group(1)) for h in headings.get(doc, headings["README.md"])), \
                f"{path} refers to the section {match.group(1)!r}, which {doc} does not have"
