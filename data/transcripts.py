"""Transcripts: how a sentence becomes CTC labels and how predictions are scored.

`normalize_text` is what the model learns (NFC, no punctuation, single spaces, then the run's
`Normalizer`); `CharVocab` turns
it into label ids and back, with Hugging Face's vocab.json conventions; `postprocess_bengali` is
what submission.csv gets; `wer` and `cer` score predictions (jiwer when installed, else the same
numbers from an edit distance here); `sentences_of` reads the text a decoding LM is built from.
"""

import itertools
import unicodedata

from data import DataError
from data.manifest import read_rows

SENTENCE_END = ("।", "?", "!")  # the danda (U+0964) ends a Bengali statement


def normalize_text(text, keep=None, normalizer=None):
    """A transcript as the model should learn it: NFC, no punctuation, single spaces.

    NFC first, so one spelling has one code-point sequence (Bengali য় ড় ঢ় are composition
    exclusions: NFC always gives the two code points য + ়, whichever way they were typed).
    Punctuation (Unicode category P: danda, ?, !, commas, quotes, hyphens) becomes a space, so
    "হ্যাঁ,এক" stays two words; characters in `keep` survive. Apostrophes are deleted instead
    ("don't" -> "dont"). Invisible format characters (zero-width joiner and non-joiner, BOM) are
    dropped: they change how a word is drawn, not how it sounds. Case is kept. Then `normalizer`
    (a `Normalizer`; None is NFC alone) mends each word.
    """
    keep = frozenset(keep or ())
    table = _TABLES.get(keep)
    if table is None:
        table = _TABLES[keep] = _Translation(keep)
    words = unicodedata.normalize("NFC", text).translate(table).split()
    return " ".join(normalizer.words(words) if normalizer else words)


# Which normaliser normalize_text applies after NFC: "nfc" (nothing more), or "bnunicodenormalizer",
# the library Bengali.AI Speech's annotations and its teams' submissions went through (it mends
# badly composed words: doubled vowel signs or hasanta, a vowel sign before its consonant, ZWJ/ZWNJ).
# A run makes one `Normalizer` (the asr task from its config, infer from the checkpoint's) and hands
# it to what reads transcripts (the vocabulary carries it), so that training targets, validation
# references and submissions agree.
NORMALIZERS = ("nfc", "bnunicodenormalizer")


def bnunicodenormalizer_installed():
    try:
        import bnunicodenormalizer  # noqa: F401
        return True
    except ImportError:
        return False


class Normalizer:
    """The normaliser `name` (one of NORMALIZERS); bnunicodenormalizer must be installed for it."""

    def __init__(self, name="nfc"):
        if name not in NORMALIZERS:
            raise ValueError(f"normalizer must be one of {', '.join(NORMALIZERS)} (got {name!r})")
        self.name, self._cache = name, {}
        if name == "bnunicodenormalizer":
            from bnunicodenormalizer import Normalizer as Library
            self._library = Library()

    def __reduce__(self):  # a spawned DataLoader worker makes its own, by name: the library's object is not sent
        return Normalizer, (self.name,)

    def __repr__(self):
        return f"Normalizer({self.name!r})"

    def words(self, words):
        """The words as this normaliser spells them (NFC'd already); a word it rejects is dropped."""
        return words if self.name == "nfc" else [w for w in map(self._mend, words) if w]

    def _mend(self, word):
        """The library's spelling of a word (it works word by word, ~50 us each: cached). A Bengali
        word it rejects (a lone vowel sign) is dropped; words in other scripts, which it also
        rejects, are kept as they are."""
        if word not in self._cache:
            normalized = self._library(word)["normalized"]
            self._cache[word] = normalized if normalized is not None else \
                ("" if any("\u0980" <= c <= "\u09ff" for c in word) else word)
        return self._cache[word]


class _Translation(dict):
    """normalize_text's str.translate table (code point -> replacement), filled in as characters
    are first met: translate runs in C, where a loop over characters costs ~3x more (Bengali.AI's
    ~960k sentences are normalised in ~2 s instead of ~6 s)."""

    def __init__(self, keep):
        super().__init__()
        self.keep = keep

    def __missing__(self, code):
        c = chr(code)
        category = unicodedata.category(c)
        if c in self.keep:
            out = c
        elif c in "'’" or category == "Cf":
            out = ""
        elif category[0] == "P":
            out = " "
        else:
            out = c
        self[code] = out
        return out


_TABLES = {}  # frozenset(keep) -> its _Translation


PAD, BOS, EOS, UNK, DELIM = "<pad>", "<s>", "</s>", "<unk>", "|"


class CharVocab:
    """Characters <-> CTC label ids, with Hugging Face's vocab.json conventions.

    "<pad>" is id 0 and doubles as the CTC blank (transformers passes pad_token_id as the blank);
    "|" stands for the space between words. "<s>" and "</s>" are never predicted but are kept so
    that Wav2Vec2CTCTokenizer opens our vocab.json without adding tokens. Vocabularies written the
    other common way ("[PAD]", "[UNK]" at the end) are read too. Punctuation characters in the
    vocabulary are kept by `encode`'s normalisation, so a vocab built with `keep="।?!"` stays
    consistent after a round trip through vocab.json. `normalizer` (a `Normalizer`; None is NFC
    alone) is how `encode` normalises a text: the one the vocabulary's texts went through.
    """

    def __init__(self, token_to_id, normalizer=None):
        self.normalizer = normalizer
        self.token_to_id = {str(t): int(i) for t, i in token_to_id.items()}
        self.id_to_token = {i: t for t, i in self.token_to_id.items()}
        if len(self.id_to_token) != len(self.token_to_id):
            raise DataError("the vocabulary gives two tokens the same id; check vocab.json")
        pad = next((t for t in (PAD, "[PAD]") if t in self.token_to_id), None)
        unk = next((t for t in (UNK, "[UNK]") if t in self.token_to_id), None)
        if pad is None or unk is None or DELIM not in self.token_to_id:
            raise DataError(f"a CTC vocabulary needs {PAD} (or [PAD]), {UNK} (or [UNK]) and {DELIM}; check vocab.json")
        self.pad_id, self.unk_id = self.token_to_id[pad], self.token_to_id[unk]
        self.special_ids = {self.token_to_id[t] for t in (pad, unk, BOS, EOS) if t in self.token_to_id}
        self.keep = {t for t in self.token_to_id if len(t) == 1 and unicodedata.category(t)[0] == "P"}

    @classmethod
    def build(cls, sentences, keep=None, normalizer=None):
        """The vocabulary of the normalised sentences: specials, then characters in code-point order."""
        return cls.of_texts((normalize_text(s or "", keep, normalizer) for s in sentences), normalizer)

    @classmethod
    def of_texts(cls, texts, normalizer=None):
        """`build` for texts normalised (with `normalizer`) already."""
        chars = set("".join(texts)) - {" ", DELIM}
        tokens = [PAD, BOS, EOS, UNK, DELIM] + sorted(chars)
        return cls({t: i for i, t in enumerate(tokens)}, normalizer)

    @classmethod
    def from_dict(cls, token_to_id, normalizer=None):
        return cls(token_to_id, normalizer)

    def to_dict(self):
        """The vocab.json content: token -> id, in id order."""
        return dict(sorted(self.token_to_id.items(), key=lambda kv: kv[1]))

    def __len__(self):
        return len(self.token_to_id)

    def encode(self, text):
        """Label ids of the normalised text; characters the vocabulary lacks become <unk>."""
        text = normalize_text(text, self.keep, self.normalizer)
        return [self.token_to_id.get(DELIM if c == " " else c, self.unk_id) for c in text]

    def decode(self, ids):
        """Label ids back to text, one token per id (for labels; model output needs decode_ctc)."""
        return self._join(int(i) for i in _as_list(ids) if int(i) not in self.special_ids)

    def decode_ctc(self, ids):
        """Greedy CTC decoding of per-frame argmax ids: merge repeats, then drop blanks.

        The order matters: "a <blank> a" is two a's, "a a" is one. Other special tokens are dropped
        too (an <unk> in a submission would only add an error). Spaces are kept as the model gave
        them, as transformers' Wav2Vec2CTCTokenizer does ("| <blank> |" is two), stripped at the
        ends; post-processing (postprocess_bengali, normalize_text) makes them single.
        """
        kept, previous = [], None
        for i in _as_list(ids):
            i = int(i)
            if i != previous and i not in self.special_ids:
                kept.append(i)
            previous = i
        return "".join(" " if self.id_to_token.get(i) == DELIM else self.id_to_token.get(i, "") for i in kept).strip()

    def decode_greedy(self, logits, frames):
        """Best path decoding of a batch: logits (B, T, V), frames (B,) real frames -> B strings."""
        best_ids = logits.argmax(dim=-1).cpu()  # (B, T)
        return [self.decode_ctc(best_ids[row, : int(frames[row])].tolist()) for row in range(len(best_ids))]

    def _join(self, ids):
        text = "".join(" " if self.id_to_token.get(i) == DELIM else self.id_to_token.get(i, "") for i in ids)
        return " ".join(text.split())


def _as_list(ids):
    return ids.tolist() if hasattr(ids, "tolist") else list(ids)


def sentences_of(path, normalizer=None):
    """The normalised sentences (`normalizer`: see normalize_text) of a text file (one a line) or of a
    manifest's `sentence` column (its training rows only, when it has a `split` column): what a
    decoding LM is built from."""
    if path.lower().endswith((".csv", ".tsv")):
        columns, rows = read_rows(path)
        if "sentence" not in columns:
            raise DataError(f"{path} has no 'sentence' column to build a language model from")
        rows = [dict(itertools.zip_longest(columns, row)) for row in rows]  # a short row's cells: None
        texts = [row.get("sentence") or "" for row in rows if row.get("split", "train") in ("train", "")]
    else:
        with open(path, encoding="utf-8") as f:
            texts = f.read().splitlines()
    return [normalize_text(t, normalizer=normalizer) for t in texts]


def postprocess_bengali(text, normalizer=None):
    """A prediction as submission.csv wants it: NFC (and `normalizer`, as the references were),
    single spaces, ending in a danda unless it ends in ।, ? or !."""
    words = unicodedata.normalize("NFC", text).split()
    text = " ".join(normalizer.words(words) if normalizer else words)
    if text and not text.endswith(SENTENCE_END):
        text += "।"
    return text


# ---------------------------------------------------------------------------------------------
# Scoring: word and character error rates
# ---------------------------------------------------------------------------------------------


def wer(references, hypotheses):
    """Word error rate over the whole set: (substitutions + deletions + insertions) / reference words."""
    return error_rate(*error_counts(references, hypotheses, words=True))


def cer(references, hypotheses):
    """Character error rate over the whole set (spaces count as characters, as in jiwer)."""
    return error_rate(*error_counts(references, hypotheses, words=False))


def error_rate(errors, total):
    """Errors per reference unit; with nothing to recognise, perfect only if nothing was produced.
    Counts add up across shards (several processes), rates do not: reduce counts, then call this."""
    if total == 0:
        return 0.0 if errors == 0 else 1.0
    return errors / total


def _edit_distance(a, b):
    """Levenshtein distance between two sequences: substitutions + deletions + insertions."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def error_counts(references, hypotheses, words):
    """(edit errors, reference units) over the whole set, in words or characters."""
    try:
        import jiwer  # only evaluation needs it
    except ImportError:  # Kaggle does not preinstall jiwer, and its internet is often off
        jiwer = None
        if not getattr(error_counts, "warned", False):
            print("note: jiwer is not installed; WER/CER come from Baton's own edit distance (same numbers)")
            error_counts.warned = True

    references = [references] if isinstance(references, str) else list(references)
    hypotheses = [hypotheses] if isinstance(hypotheses, str) else list(hypotheses)
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    references = [" ".join(r.split()) for r in references]
    hypotheses = [" ".join(h.split()) for h in hypotheses]

    def size(text):
        return len(text.split()) if words else len(text)

    # jiwer (before 4.0) refuses empty references, so those pairs are scored here: every
    # hypothesis token is an insertion.
    errors = sum(size(h) for r, h in zip(references, hypotheses) if not r)
    scored = [(r, h) for r, h in zip(references, hypotheses) if r]
    total = sum(size(r) for r, _ in scored)
    if scored and jiwer is not None:
        process = jiwer.process_words if words else jiwer.process_characters
        out = process([r for r, _ in scored], [h for _, h in scored])
        errors += out.substitutions + out.deletions + out.insertions
    elif scored:
        units = str.split if words else list
        errors += sum(_edit_distance(units(r), units(h)) for r, h in scored)
    return errors, total
