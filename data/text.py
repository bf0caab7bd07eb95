"""Text corpora: reading one in bounded memory, tokenizing it once into a token file that every
later part maps, and the fixed-length training windows cut from the tokens.

The tokenizers themselves are in data/tokenizers.py.
"""

import codecs
import collections
import io
import json
import multiprocessing
import os
import signal
import struct
import time
import types

import numpy as np
import torch
import xxhash

import ckpt
from data import DataError
from data.inputs import walk_inputs
from data.tokenizers import ByteTokenizer, CharTokenizer, make_tokenizer, token_dtype, tokenizer_from_dict


SAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "samples")
DEFAULT_CORPUS = os.path.join(SAMPLES, "shakespeare.txt")
TEXT_SUFFIXES = (".txt", ".md", ".text")
READ_BLOCK = 8 << 20  # bytes of corpus read at a time


def corpus_files(path=""):
    """The text files of a corpus: the file itself, or every text file in a folder (sorted by path)."""
    path = path or DEFAULT_CORPUS
    if os.path.isdir(path):
        files = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(path) for f in fs if f.endswith(TEXT_SUFFIXES))
        if not files:
            raise DataError(f"folder {path} has no text files ({', '.join(TEXT_SUFFIXES)})")
        return files
    if os.path.isfile(path):
        return [path]
    raise DataError(f"text data {path} does not exist")


def text_pieces(files, block=None, progress=None):
    """The corpus as a stream of strings whose concatenation is the files' texts joined by a blank
    line, read `block` bytes at a time, so a corpus of any size passes through bounded memory.
    Bytes that are not UTF-8 become U+FFFD and line ends become "\\n", as Python's text files do.
    `progress(n)` is told of every n bytes read."""
    for n, path in enumerate(files):
        if n:
            yield "\n\n"
        lines = io.IncrementalNewlineDecoder(codecs.getincrementaldecoder("utf-8")(errors="replace"), translate=True)
        with open(path, "rb") as f:
            while chunk := f.read(block or READ_BLOCK):
                if progress:
                    progress(len(chunk))
                yield lines.decode(chunk)
        yield lines.decode(b"", final=True)


def read_corpus(path=""):
    """The whole text of a corpus (file, folder, or the embedded one) as one string: for small texts."""
    text = "".join(text_pieces(corpus_files(path)))
    if len(text) < 2:
        raise DataError(f"text data {path} is empty")
    return text


def encode_tokens(tokenizer, text):
    """A text as a 1-D int64 token tensor (small texts; a corpus goes through `token_file`)."""
    return torch.from_numpy(np.concatenate(list(encode_pieces(tokenizer, [text], workers=1))).astype(np.int64))


# ---------------------------------------------------------------------------------------------
# Token files: a corpus is tokenized once, then every part reads it through a memory map
# ---------------------------------------------------------------------------------------------
# A token file is a safetensors file with one 1-D tensor `tokens` (uint8 when the vocabulary has at
# most 256 entries, uint16 up to 65,536, else uint32) and in its header: the tokenizer, the corpus it
# was made from (`corpus_identity`) and the data fingerprint. It is named `<tokenizer>-<key>.tokens`
# (not .safetensors, so checkpoint discovery passes it by), the key hashing the corpus identity and the
# tokenizer, and kept in the run folder's tokens/ beside the checkpoints: on Kaggle that is
# /kaggle/working/runs/lm/tokens, saved with the output, so the next part finds it under /kaggle/input.

TOKENS_FORMAT = "baton-tokens/1"
TOKENS_SUFFIX = ".tokens"
BPE_CHUNK = 1 << 20  # characters per job for the BPE workers


TOKEN_DTYPES = {"U8": np.uint8, "U16": np.uint16, "U32": np.uint32}  # safetensors' names




def corpus_identity(files):
    """What a corpus is, cheap enough to check at every part: each file's name (relative to the
    corpus), size, and a hash of 16 blocks of 64 KB spread over it (of all of it under 1 MB). A part
    reads about 1 MB per file instead of the corpus; an edit that keeps a file's size and falls
    between the blocks goes unnoticed."""
    root = os.path.dirname(files[0]) if len(files) == 1 else os.path.commonpath(files)
    identity = []
    for path in files:
        size, digest = os.path.getsize(path), xxhash.xxh3_64()
        with open(path, "rb") as f:
            if size <= 1 << 20:
                digest.update(f.read())
            for i in range(16 if size > 1 << 20 else 0):
                f.seek(i * (size - (64 << 10)) // 15)
                digest.update(f.read(64 << 10))
        identity.append([os.path.relpath(path, root), size, digest.hexdigest()])
    return identity


def describe_change(old, new):
    """One clause saying how corpus identity `new` differs from `old`."""
    old_files, new_files = {n: (s, h) for n, s, h in old}, {n: (s, h) for n, s, h in new}
    if old_files.keys() != new_files.keys():
        return f"it had {len(old_files)} files and has {len(new_files)}"
    changed = sorted(n for n in new_files if new_files[n] != old_files[n])
    sizes = sum(s for s, _ in old_files.values()), sum(s for s, _ in new_files.values())
    names = ", ".join(changed[:3]) + (" ..." if len(changed) > 3 else "")
    return f"{names} changed ({sizes[0]:,} bytes then, {sizes[1]:,} now)"


def encode_pieces(tokenizer, pieces, workers):
    """Token arrays for a stream of text pieces, in order, whose concatenation is the encoding of the
    pieces' concatenation. BPE runs in `workers` processes on pieces cut where GPT-2's pattern splits
    anyway (`bpe_chunks`), so the result is the same as encoding the whole text at once."""
    if isinstance(tokenizer, ByteTokenizer):
        return (np.frombuffer(piece.encode("utf-8"), dtype=np.uint8) for piece in pieces)
    if isinstance(tokenizer, CharTokenizer):
        return (tokenizer.encode_array(piece) for piece in pieces)
    chunks, dtype = bpe_chunks(pieces), token_dtype(tokenizer.vocab_size)
    if workers <= 1:
        return (np.array(tokenizer.encode(chunk), dtype=dtype) for chunk in chunks)
    return _in_workers(tokenizer, chunks, workers)


def bpe_chunks(pieces, size=None):
    """Regroups text pieces into chunks of about `size` characters, each cut just before a space that
    has a non-space on both sides: GPT-2's pattern never matches across such a cut (the word before
    ends there, " word" starts there, nothing looks behind), so chunks encode as the whole text does."""
    buffer, size = "", size or BPE_CHUNK
    for piece in pieces:
        buffer += piece
        start = 0
        while len(buffer) - start >= size:
            # The last cut point in the next `size` characters, else the last in what has been read.
            last = len(buffer) - 1  # a cut point needs the character after its space
            cut = _cut_point(buffer, start, min(start + size, last)) or _cut_point(buffer, start, last)
            if cut is None and len(buffer) - start < 16 * size:
                break  # no cut point yet (text without spaces): read on
            cut = cut or len(buffer)
            yield buffer[start:cut]
            start = cut
        buffer = buffer[start:]
    if buffer:
        yield buffer


def _cut_point(text, start, end):
    """The last position in (start, end) of a space with a non-space on both sides, or None."""
    cut = text.rfind(" ", start + 1, end)
    while cut > start and (text[cut - 1].isspace() or text[cut + 1].isspace()):
        cut = text.rfind(" ", start + 1, cut)
    return cut if cut > start else None


_worker_tokenizer = None


def _start_worker(tokenizer_dict):
    global _worker_tokenizer
    # A forked worker inherits train_part's handlers, which only note a SIGTERM: it must die of one
    # (Pool.terminate), and leave Ctrl-C to the parent, which stops at the next step.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker_tokenizer = tokenizer_from_dict(tokenizer_dict)


def _encode_in_worker(chunk):
    return np.array(_worker_tokenizer.encode(chunk), dtype=token_dtype(_worker_tokenizer.vocab_size))


def _in_workers(tokenizer, chunks, workers):
    """BPE of `chunks` in a pool of processes, results in order, at most 2 jobs per worker in flight
    (Pool.imap would read the whole corpus into its queue)."""
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with context.Pool(workers, initializer=_start_worker, initargs=(tokenizer.to_dict(),)) as pool:
        pending = collections.deque()
        for chunk in chunks:
            pending.append(pool.apply_async(_encode_in_worker, (chunk,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
        pool.close()  # let the workers finish and exit, rather than be killed mid-task
        pool.join()


class TokenFile:
    """An opened token file: `tokens` is a read-only memory map (no RAM but the pages read),
    `tokenizer`, `corpus` (the identity it was made from) and `fingerprint` come from its header."""

    def __init__(self, path):
        from safetensors import SafetensorError, safe_open  # the library checks every byte range
        try:
            with safe_open(path, framework="numpy") as f:
                meta, names = f.metadata() or {}, list(f.keys())
                tensor = f.get_slice("tokens") if names == ["tokens"] else None
                shape, dtype = (tensor.get_shape(), tensor.get_dtype()) if tensor is not None else (None, None)
            if meta.get("format") != TOKENS_FORMAT or len(shape or []) != 1 or dtype not in TOKEN_DTYPES:
                raise ValueError("not a Baton token file")
            self.tokenizer = tokenizer_from_dict(json.loads(meta["tokenizer"]))
            self.corpus, self.fingerprint = json.loads(meta["corpus"]), meta["fingerprint"]
            with open(path, "rb") as f:
                offset = 8 + struct.unpack("<Q", f.read(8))[0]
        except (SafetensorError, ValueError, KeyError, OSError, DataError) as e:
            raise DataError(f"{path} is truncated, damaged or not a token file ({e}); copy it again, or give --data "
                            f"the corpus to tokenize it anew") from None
        self.path = path
        self.tokens = np.memmap(path, dtype=TOKEN_DTYPES[dtype], mode="r", offset=offset, shape=tuple(shape))

    @staticmethod
    def write(path, tokenizer, corpus, token_arrays):
        """Streams `token_arrays` into `path` atomically (temp file, fsync, rename). The header is
        written last, over room kept for it at the start: the token count is known only at the end."""
        dtype = token_dtype(tokenizer.vocab_size)
        fingerprint = xxhash.xxh3_64()  # of the tokens as int64: the same value an in-memory run had

        def header(count):
            meta = {"format": TOKENS_FORMAT, "tokenizer": json.dumps(tokenizer.to_dict()), "corpus": json.dumps(corpus),
                    "fingerprint": fingerprint.hexdigest()}
            nbytes = count * np.dtype(dtype).itemsize
            name = next(name for name, known in TOKEN_DTYPES.items() if known is dtype)
            return json.dumps({"tokens": {"dtype": name, "shape": [count], "data_offsets": [0, nbytes]},
                               "__metadata__": meta}).encode()

        room = -(-len(header(10 ** 15)) // 8) * 8  # the longest header any count gives, 8-byte aligned
        count = 0

        def fill(f):
            nonlocal count
            f.write(b"\0" * (8 + room))
            for ids in token_arrays:
                f.write(ids.astype(dtype, copy=False).tobytes())
                fingerprint.update(ids.astype(np.int64).tobytes())
                count += len(ids)
            f.seek(0)
            f.write(struct.pack("<Q", room) + header(count).ljust(room))  # safetensors allows space padding

        ckpt.write_atomic(path, fill)
        return count


def token_file(data, tokenizer, folders, build_into=None, may_build=True, kind="byte", pretrained="", workers=None):
    """The tokens of the corpus `data`, built once and reused by every later part.

    `tokenizer` is the tokenizer (as a dict) the run must use: a resumed checkpoint's, so token ids
    keep their meaning; None means a new one of `kind` (GPT-2's BPE from the folder `pretrained`; a
    char vocabulary is made from the text). A token file is looked for in `folders`, in order
    (training/reuse.py says which); it is used when it opens (a truncated or damaged one is said
    and, in `build_into`, rebuilt), was made from a corpus with the same identity, and holds that
    tokenizer. Otherwise the corpus is tokenized into `build_into`, in bounded memory, with BPE on
    every core, when `may_build`; else this process waits for another to build it there. `data` may
    also name a token file itself (a corpus tokenized once, e.g. attached as a Kaggle dataset).
    Returns a TokenFile, or one held in memory when there is no folder to build into (None)."""
    if data.endswith(TOKENS_SUFFIX):
        found = TokenFile(data)
        if tokenizer and found.tokenizer.to_dict() != tokenizer:
            raise DataError(f"{data} was tokenized with another tokenizer than the checkpoint's")
        return found
    files = corpus_files(data)
    corpus = corpus_identity(files)
    wanted = tokenizer_from_dict(tokenizer) if tokenizer else None
    kind = wanted.to_dict()["kind"] if wanted else kind
    if wanted is None and kind != "char":  # a char vocabulary is made from the text, while it is read
        wanted = make_tokenizer(kind, folder=pretrained)
    key = tokenizer_key(wanted) if wanted else None
    spec = kind if kind != "gpt2" else f"gpt2:{key}"
    base = f"{kind}-{xxhash.xxh3_64(json.dumps([corpus, spec]).encode()).hexdigest()}"
    names = [base + TOKENS_SUFFIX] + ([f"{base}-{key[:8]}{TOKENS_SUFFIX}"] if wanted else [])
    found, free = _find_token_file(folders, names, corpus, wanted, build_into)
    while not found and not may_build:
        time.sleep(1)  # another process is tokenizing into build_into; torchrun ends this one if that one fails
        found, _ = _find_token_file([build_into], names, corpus, wanted, build_into)
    if found:
        print(f"data: tokens from {found.path}" + (" (read-only; not copied into this part's output)"
                                                   if not found.path.startswith(build_into or "\0") else ""))
        return found
    return build_token_file(files, corpus, wanted, build_into and os.path.join(build_into, free), workers)


def tokenizer_key(tokenizer):
    return xxhash.xxh3_64(json.dumps(tokenizer.to_dict(), sort_keys=True).encode()).hexdigest()


def input_token_folders(root, max_depth=4):
    """Where the datasets and notebook outputs attached under `root` (/kaggle/input, or the roots
    of BATON_INPUT_ROOTS as for checkpoints) may hold token files: each one's top folder, and tokens/
    folders down to a notebook output's runs/lm/tokens, walked as checkpoint discovery walks."""
    for folder, depth, _ in walk_inputs(root, max_depth):
        if depth == 1 or os.path.basename(folder) == "tokens":
            yield folder


def _find_token_file(folders, names, corpus, wanted, build_into):
    """The first usable token file among `names` in `folders`, and the first name free in `build_into`."""
    free = None if build_into is None else \
        next((n for n in names if not os.path.exists(os.path.join(build_into, n))), names[-1])
    for folder in filter(None, folders):
        for name in names:
            path = os.path.join(folder, name)
            if not os.path.isfile(path):
                continue
            try:
                found = TokenFile(path)
            except DataError as e:
                mine = folder == build_into
                print(f"warning: {e}; " + ("building it again" if mine else "not used"))
                free = name if mine else free
                continue
            if found.corpus == corpus and (wanted is None or found.tokenizer.to_dict() == wanted.to_dict()):
                return found, free
    return None, free


def build_token_file(files, corpus, tokenizer, path, workers=None):
    """Tokenizes the corpus into the token file `path` (kept in memory when path is None), with a
    progress bar for large corpora. `tokenizer` None means a char vocabulary made from the text."""
    from tqdm import tqdm
    if tokenizer is None:  # every character of the text, found in a first pass
        chars = set()
        for piece in text_pieces(files):
            chars.update(piece)
        tokenizer = CharTokenizer(sorted(chars))
    kind, total, started = tokenizer.to_dict()["kind"], sum(size for _, size, _ in corpus), time.monotonic()
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with tqdm(total=total, unit="B", unit_scale=True, desc=f"tokenizing ({kind})", disable=total < 64 << 20,
              mininterval=2) as bar:
        arrays = encode_pieces(tokenizer, text_pieces(files, progress=bar.update), workers if kind == "gpt2" else 1)
        if path is None:
            tokens = np.concatenate(list(arrays))
            fingerprint = xxhash.xxh3_64(tokens.astype(np.int64).tobytes()).hexdigest()
            return types.SimpleNamespace(tokens=tokens, tokenizer=tokenizer, corpus=corpus, fingerprint=fingerprint,
                                         path=None)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        ckpt.remove_stale_temp_files(os.path.dirname(path))  # a killed part's: it would be saved with the output
        count = TokenFile.write(path, tokenizer, corpus, arrays)
    print(f"data: tokenized {total / 1e6:,.1f} MB into {count:,} tokens in {time.monotonic() - started:.1f} s ({path})")
    return TokenFile(path)


class TokenWindows:
    """Non-overlapping (input, target) windows of `block_size` tokens over a token stream.

    Each epoch shifts every window by the same offset in [0, block_size), drawn from
    (seed, epoch), so over several epochs the model sees each position at different places in
    its context. The number of windows does not depend on the shift.
    """

    def __init__(self, tokens, block_size, seed):
        if len(tokens) < 2 * block_size + 1:
            raise DataError(f"the text has {len(tokens)} tokens, too few for block_size {block_size}; "
                            f"use more text or a smaller block_size")
        self.tokens = np.asarray(tokens)  # a memory-mapped token file, or tokens in memory
        self.block_size = block_size
        self.seed = seed
        self.num_windows = len(tokens) // block_size - 1

    def __len__(self):
        return self.num_windows

    def shift(self, epoch):
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, epoch, 1])))
        return int(rng.integers(self.block_size))

    def batch(self, indices, epoch=0):
        """x, y of shape (B, T): y is x shifted left by one token."""
        starts = np.asarray(indices, dtype=np.int64) * self.block_size + self.shift(epoch)
        offsets = starts[:, None] + np.arange(self.block_size + 1)  # (B, T+1)
        chunk = torch.from_numpy(self.tokens[offsets].astype(np.int64))  # reads only these pages of a map
        return chunk[:, :-1], chunk[:, 1:]
