"""Decoding CTC output with a beam search and an optional word n-gram language model.

Greedy decoding (CharVocab.decode_greedy, data/transcripts.py) takes the likeliest label of every
frame. A beam search keeps the `beam` likeliest *prefixes* (transcripts so far) instead and adds up every
frame alignment that spells the same prefix, so "a" seen as "a a", "a -" or "- a" ("-" the
blank) counts once with all three probabilities. A word language model (an ARPA file, what
KenLM's `lmplz` writes, or one built here from text) then scores each word as the prefix
completes it. Bengali.AI Speech's leaders decoded this way: a 5-gram took WER from 0.217 to 0.153.

The search is plain Python and NumPy, fast because after a little training most frames are nearly
all blank, so few labels pass `prune` per frame, and an LM prunes the beam to a few prefixes
(bench/asr_decoding.py sets it beside pyctcdecode + KenLM). The LMs, in reading order: `NgramLM`
(built from text here), `ArpaLM` (an ARPA file of any size, in arrays), `KenLM` (the kenlm library,
when installed: ARPA and KenLM binaries); `read_lm` picks one for `--lm`, and `write_lm_folder`
writes Hugging Face's language_model/ folder.
"""

import array
import bisect
import collections
import heapq
import json
import math
import os
import shutil

import numpy as np
from tqdm import tqdm

LN10 = math.log(10.0)
NEG_INF = -math.inf
MEMO_SIZE = 1_000_000  # ArpaLM's memo of scores: ~200 MB at most, emptied when full


def logadd(a, b):
    """log(exp(a) + exp(b)) without leaving log space."""
    if a < b:
        a, b = b, a
    if b == NEG_INF:
        return a
    return a + math.log1p(math.exp(b - a))


def some_word_starts(sorted_words, prefix):
    """Whether a word of the sorted list starts with `prefix`: the first word not below it does, if any."""
    i = bisect.bisect_left(sorted_words, prefix)
    return i < len(sorted_words) and sorted_words[i].startswith(prefix)


class NgramLM:
    """A word n-gram model in ARPA's backoff form: log10 P(word | context) for the n-grams it has,
    and a log10 backoff weight for each context; an unseen n-gram backs off to a shorter context:
    P(w | a b) = bow(a b) * P(w | b) when "a b w" is not listed."""

    def __init__(self, order, logprob, backoff):
        self.order, self.logprob, self.backoff = order, logprob, backoff  # {tuple(words): log10}

    def log10_prob(self, context, word):
        """log10 P(word | context): the longest listed n-gram, plus the backoff weights on the way down.
        A word the model never saw gets <unk>'s probability, or -10 if it has none."""
        context = tuple(context)[-(self.order - 1):] if self.order > 1 else ()
        penalty = 0.0
        while True:
            ngram = context + (word,)
            if ngram in self.logprob:
                return penalty + self.logprob[ngram]
            if not context:
                return penalty + self.logprob.get(("<unk>",), -10.0)
            penalty += self.backoff.get(context, 0.0)
            context = context[1:]

    # The interface the beam search scores through (KenLM's model offers the same, see KenLM below).
    def begin(self):
        """The state before the first word: the context <s>."""
        return ("<s>",)

    def score(self, state, word):
        """(log10 P(word | state), the state after it)."""
        return self.log10_prob(state, word), (state + (word,))[-(self.order - 1):] if self.order > 1 else ()

    def end_score(self, state):
        return self.log10_prob(state, "</s>")

    def has_word(self, word):
        return (word,) in self.logprob

    def has_prefix(self, prefix):
        """Whether some word of the model starts with `prefix` (a binary search of its sorted words)."""
        if not hasattr(self, "_sorted_words"):
            self._sorted_words = sorted(w for (w, *rest) in self.logprob if not rest)
        return some_word_starts(self._sorted_words, prefix)

    def log10_sentence(self, words):
        """log10 P(<s> words </s>)."""
        history, total = ["<s>"], 0.0
        for word in list(words) + ["</s>"]:
            total += self.log10_prob(history, word)
            history.append(word)
        return total

    def write_arpa(self, path):
        by_order = collections.defaultdict(list)
        for words in self.logprob:
            by_order[len(words)].append(words)
        with open(path, "w", encoding="utf-8") as f:
            f.write("\\data\\\n" + "".join(f"ngram {n}={len(by_order[n])}\n" for n in sorted(by_order)) + "\n")
            for n in sorted(by_order):
                f.write(f"\\{n}-grams:\n")
                for words in sorted(by_order[n]):
                    bow = f"\t{self.backoff[words]:.6f}" if words in self.backoff else ""
                    f.write(f"{self.logprob[words]:.6f}\t{' '.join(words)}{bow}\n")
                f.write("\n")
            f.write("\\end\\\n")

    @classmethod
    def build(cls, sentences, order=3, discount=0.75):
        """An n-gram model of `sentences` (lists of words) with absolute discounting and backoff:
        each seen n-gram gives up `discount` of its count, P(w | h) = (c(h w) - D) / c(h), and the
        mass given up goes to the shorter context through h's backoff weight, chosen so that P(. | h)
        sums to one. Unigrams give their mass to <unk>. (KenLM's lmplz uses modified Kneser-Ney,
        which also changes the lower orders' counts; this is the simpler textbook method.)"""
        counts = [collections.Counter() for _ in range(order + 1)]  # counts[n][ngram]
        for words in sentences:
            padded = ["<s>"] + list(words) + ["</s>"]
            for n in range(1, order + 1):
                for i in range(1 if n == 1 else 0, len(padded) - n + 1):  # <s> is a context, not a word
                    counts[n][tuple(padded[i:i + n])] += 1
        total = sum(counts[1].values())
        logprob = {(w,): math.log10(max(c - discount, 1e-9) / total) for (w,), c in counts[1].items()}
        logprob[("<unk>",)] = math.log10(max(discount * len(counts[1]) / total, 1e-9))
        logprob[("<s>",)] = -99.0  # never predicted, only a context (ARPA's convention)
        backoff = {}
        for n in range(2, order + 1):
            lower = cls(n - 1, logprob, backoff)  # the orders below n, complete by now
            by_context = collections.defaultdict(list)
            for ngram, c in counts[n].items():
                by_context[ngram[:-1]].append((ngram[-1], c))
            for context, followers in by_context.items():
                c_context = sum(c for _, c in followers)
                seen, lower_seen = 0.0, 0.0
                for word, c in followers:
                    p = (c - discount) / c_context
                    logprob[context + (word,)] = math.log10(p)
                    seen += p
                    lower_seen += 10 ** lower.log10_prob(context[1:], word)
                left, lower_left = 1.0 - seen, max(1.0 - lower_seen, 1e-9)
                backoff[context] = math.log10(max(left, 1e-12) / lower_left)
        return cls(order, logprob, backoff)


def prefix_beam_search(log_probs, vocab, beam=16, lm=None, lm_weight=0.5, word_bonus=1.0, prune=-5.0,
                       beam_prune=-10.0, unk_offset=-10.0):
    """The best transcript of one clip: `log_probs` (T, V) are the frames' log-softmax outputs.

    A beam is a prefix of the transcript: its completed words (`text`), the word being spelt
    (`word`) and its last label. It keeps two probabilities: of the alignments so far that end in a
    blank, and of those that end in its last label. The split decides what the next frame means: the
    same label again after a blank is a new letter ("a - a" is "aa"), without one it is the same
    letter held longer. Alignments that spell the same prefix merge (their probabilities add): that
    is what makes it better than greedy.

    With `lm`, a completed word gets `lm_weight` x ln P(word | the words before) + `word_bonus` (the
    bonus keeps the LM's fondness for few words from deleting them), and `unk_offset` more if the LM
    does not know it; a word being spelt that no word of the LM starts with gets `unk_offset` at
    once, so a misspelling leaves the beam before its space instead of crowding out the right
    spelling; at the end the last word and </s> are scored.

    Pruning, as pyctcdecode does: a frame's labels below `prune` (ln) are not tried, and a prefix
    more than -`beam_prune` below the best one is dropped; and more: the frame's likeliest letter is
    tried even below `prune` (on the embedded test clips, WER with the LM 0.052 against 0.091:
    BENCHMARKS.md), unless the prefix it would make is sure to be dropped, and a new prefix that
    cannot come within -`beam_prune` of the best one that stays is not made. The LM's state and score of each `text`
    are computed once and shared by every prefix that extends it.
    """
    blank, space = vocab.pad_id, vocab.token_to_id["|"]
    chars = [vocab.id_to_token[i] for i in range(len(vocab.id_to_token))]
    scores = LMScores(lm, lm_weight, word_bonus, unk_offset) if lm is not None else None
    # The most the LM can lift a new prefix above its parent: a letter never raises the score of a
    # prefix (a known start can only become unknown), a completed word by at most the word bonus.
    lift = max(word_bonus, 0.0) if lm is not None else 0.0
    # (text, word, last label) -> (ln p of the alignments ending in a blank, of those ending in the
    # label, the LM's score of text and word: computed once, when the prefix first appears)
    beams = {("", "", -1): (0.0, NEG_INF, 0.0)}
    log_probs = np.asarray(log_probs, dtype=np.float64)  # (T, V)
    for lp, candidates in zip(log_probs.tolist(), labels_to_try(log_probs, vocab, prune, beam_prune - lift)):
        p_blank_frame = lp[blank]
        # Every prefix stays itself: the frame a blank, or its last label held longer. No two collide.
        stays = [(key, p_blank, logadd(p_blank, p_label), p_label, lm_score)
                 for key, (p_blank, p_label, lm_score) in beams.items()]
        following = {key: [p_total + p_blank_frame, p_label + lp[key[2]] if key[2] >= 0 else NEG_INF, lm_score]
                     for key, p_blank, p_total, p_label, lm_score in stays}
        if not candidates:  # blank only (most frames): nothing new, nothing to rank
            beams = following
            continue
        # below the best that stays by more than -beam_prune (its blank path is a lower bound of it)
        floor = max(b + s for b, _, s in following.values()) + beam_prune - lift
        for (text, word, last), p_blank, p_total, _, lm_score in stays:
            for label in candidates:
                # the same label again is a new letter (or a second space) only after a blank
                p = (p_blank if label == last else p_total) + lp[label]
                if p + lm_score < floor:  # sure to be pruned
                    continue
                if label == space:  # a word boundary; one before any word, or a second one, spells nothing new
                    new = (text, "", label) if not word else \
                        (scores.complete(text, word) if scores else (f"{text} {word}" if text else word), "", label)
                else:
                    new = (text, word + chars[label], label)
                there = following.get(new)  # reached by several alignments: they merge (logadd)
                if there is None:
                    following[new] = [NEG_INF, p, scores.of_prefix(new[0], new[1]) if scores else 0.0]
                else:
                    there[1] = logadd(there[1], p)
        beams = best_prefixes(following, beam, beam_prune)
    # the last word and the end of the sentence
    text, word, _ = max(beams, key=lambda key: logadd(*beams[key][:2]) + (scores.at_end(*key[:2]) if scores else 0.0))
    return f"{text} {word}".strip()


def labels_to_try(log_probs, vocab, prune, lowest_lead):
    """Per frame of `log_probs` (T, V), the labels the beam search tries, as lists: the transcript's
    labels at or above `prune`, and the frame's likeliest one where it stands at least `lowest_lead`
    against the blank (below that, what it makes is sure to be pruned: its parent stays, with the
    blank). Found for the whole clip at once: per-frame NumPy calls cost more than the search."""
    usable = np.ones(log_probs.shape[-1], dtype=bool)
    usable[list(vocab.special_ids)] = False  # blank, <unk>, <s>, </s>: never part of a transcript
    letters = np.where(usable, log_probs, NEG_INF)  # (T, V)
    tried = letters >= prune
    frames = np.arange(len(log_probs))
    likeliest = np.argmax(letters, axis=1)
    close = letters[frames, likeliest] - log_probs[:, vocab.pad_id] >= lowest_lead
    tried[frames[close], likeliest[close]] = True
    frames, labels = np.nonzero(tried)
    bounds = np.searchsorted(frames, np.arange(len(log_probs) + 1)).tolist()
    labels = labels.tolist()
    return (labels[bounds[t]:bounds[t + 1]] for t in range(len(log_probs)))


class LMScores:
    """What the LM says of the beam search's prefixes, each computed once: the score and LM state of
    every completed `text` (shared by all the prefixes that extend it), and the penalty of each word
    being spelt (0, or unk_offset when no LM word starts like it)."""

    def __init__(self, lm, weight, bonus, unk_offset):
        self.lm, self.weight, self.bonus, self.unk_offset = lm, weight, bonus, unk_offset
        self.texts = {"": (0.0, lm.begin())}  # text -> (LM score, LM state after it)
        self.partial = {"": 0.0}

    def complete(self, text, word):
        """The text that `word` completes, scored: weight x ln P(word | text) + bonus (+ unk_offset)."""
        new_text = f"{text} {word}" if text else word
        if new_text not in self.texts:
            score, state = self.texts[text]
            log10, after = self.lm.score(state, word)
            score += self.weight * LN10 * log10 + self.bonus + (0.0 if self.lm.has_word(word) else self.unk_offset)
            self.texts[new_text] = (score, after)
        return new_text

    def of_prefix(self, text, word):
        if word not in self.partial:
            self.partial[word] = 0.0 if self.lm.has_prefix(word) else self.unk_offset
        return self.texts[text][0] + self.partial[word]

    def at_end(self, text, word):
        """The whole transcript's LM score: its last word completed, then </s>."""
        score, state = self.texts[self.complete(text, word) if word else text]
        return score + self.weight * LN10 * self.lm.end_score(state)


def best_prefixes(following, beam, beam_prune):
    """The `beam` likeliest prefixes (acoustic + LM), none more than -beam_prune below the best;
    `following` maps each to [ln p ending in blank, in a label, LM score]."""
    scored = [(logadd(b, l) + s, key, (b, l, s)) for key, (b, l, s) in following.items()]
    best = max(item[0] for item in scored)
    kept = [item for item in scored if item[0] >= best + beam_prune]
    if len(kept) > beam:
        kept = heapq.nlargest(beam, kept, key=lambda item: item[0])
    return {key: p for _, key, p in kept}


class ArpaLM:
    """An ARPA file (what KenLM's `lmplz` writes) held in arrays, for any size without kenlm: each
    order's n-grams as word ids (uint32, sorted, found by binary search) with float32 log10
    probabilities and backoffs, ~4n + 8 bytes an n-gram where Python dicts of tuples took ~400 (a
    552 MB 3-gram: see bench/asr_decoding.py's --arpa-mb). The same scoring as NgramLM."""

    def __init__(self, path):
        self.path, self.words = path, {}
        counts, grams, n = {}, {}, None
        size = os.path.getsize(path)
        with open(path, "rb") as f, tqdm(total=size, unit="B", unit_scale=True, desc="reading the LM",
                                         disable=size < 64 << 20, mininterval=2) as bar:
            for number, raw in enumerate(f):
                if number % 100_000 == 0:
                    bar.update(f.tell() - bar.n)
                line = raw.decode("utf-8").strip()
                if not line or line == "\\data\\":
                    continue
                if line.startswith("ngram "):
                    order, count = line[6:].split("=")
                    counts[int(order)] = int(count)
                elif line.startswith("\\") and line.endswith("-grams:"):
                    n = int(line[1:line.index("-")])
                    grams[n] = (array.array("I"), array.array("f"), array.array("f"))
                elif line == "\\end\\":
                    break
                elif n is not None:
                    fields = line.split()
                    ids, logprobs, backoffs = grams[n]
                    if n == 1:
                        self.words.setdefault(fields[1], len(self.words))
                    ids.extend(self.words.get(w, 0xFFFFFFFF) for w in fields[1:1 + n])
                    logprobs.append(float(fields[0]))
                    backoffs.append(float(fields[1 + n]) if len(fields) > 1 + n else 0.0)
        if not grams or not len(grams.get(1, [[]])[0]):
            raise ValueError(f"{path} holds no n-grams: not an ARPA file")
        self.order, self.tables = max(grams), {}
        self._memo = {}  # (context, word) -> log10 prob: a decode asks the same few thousand again and again
        for n in sorted(grams):
            self.tables[n] = self._table(n, *grams.pop(n))

    @staticmethod
    def _table(n, ids, logprobs, backoffs):
        """(sorted keys, log10 probs, backoffs) of order n; a key is the ids as big-endian bytes, so
        that byte order is numeric order and one searchsorted finds an n-gram."""
        keys = np.frombuffer(ids, dtype=np.uint32).astype(">u4").reshape(-1, n).view(f"V{4 * n}").ravel()
        del ids  # each copy is dropped as soon as the next exists: the peak stays near twice the table
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        logprobs = np.frombuffer(logprobs, dtype=np.float32)[order]
        backoffs = np.frombuffer(backoffs, dtype=np.float32)[order]
        return keys, logprobs, backoffs

    def _find(self, ngram):
        """(log10 prob, backoff) of an n-gram of word ids, or None if it is not listed."""
        keys, logprobs, backoffs = self.tables.get(len(ngram), (None, None, None))
        if keys is None:
            return None
        key = np.array(ngram, dtype=">u4").view(f"V{4 * len(ngram)}")[0]
        i = int(np.searchsorted(keys, key))
        return (float(logprobs[i]), float(backoffs[i])) if i < len(keys) and keys[i] == key else None

    def log10_prob(self, context, word):
        """As NgramLM.log10_prob: the longest listed n-gram, plus the backoff weights on the way down."""
        key = (tuple(context)[-(self.order - 1):] if self.order > 1 else (), word)
        if key not in self._memo:
            if len(self._memo) >= MEMO_SIZE:
                self._memo.clear()
            self._memo[key] = self._log10_prob(*key)
        return self._memo[key]

    def _log10_prob(self, context, word):  # context: the last order - 1 words at most (log10_prob cut it)
        ids = [self.words.get(w, -1) for w in context]
        target, penalty = self.words.get(word, -1), 0.0
        while True:
            if -1 not in ids and target >= 0:
                found = self._find(tuple(ids) + (target,))
                if found is not None:
                    return penalty + found[0]
            if not ids:
                unk = self.words.get("<unk>")
                return penalty + (self._find((unk,))[0] if unk is not None else -10.0)
            if -1 not in ids:
                penalty += (self._find(tuple(ids)) or (0.0, 0.0))[1]
            ids = ids[1:]

    log10_sentence = NgramLM.log10_sentence
    begin, score, end_score = NgramLM.begin, NgramLM.score, NgramLM.end_score

    def has_word(self, word):
        return word in self.words

    def has_prefix(self, prefix):
        if not hasattr(self, "_sorted_words"):
            self._sorted_words = sorted(w for w in self.words if w not in NOT_WORDS)
        return some_word_starts(self._sorted_words, prefix)


def read_arpa(path):
    return ArpaLM(path)


class KenLM:
    """A KenLM model, ARPA or KenLM's binary (`build_binary`'s output: mapped from disk, a 22 GB
    5-gram loads in seconds), through the `kenlm` library, with NgramLM's scoring interface.
    `unigrams` (its words) let the beam search score a word being spelt; without them every
    spelling passes until its space."""

    def __init__(self, path, unigrams=None):
        import kenlm
        self.kenlm, self.model, self.path = kenlm, kenlm.Model(path), path
        self.order = self.model.order
        self._sorted_words = sorted(unigrams) if unigrams else None

    def begin(self):
        state = self.kenlm.State()
        self.model.BeginSentenceWrite(state)
        return state

    def score(self, state, word):
        after = self.kenlm.State()
        return self.model.BaseScore(state, word, after), after

    def end_score(self, state):
        return self.model.BaseScore(state, "</s>", self.kenlm.State())

    def has_word(self, word):
        return word in self.model

    def has_prefix(self, prefix):
        return self._sorted_words is None or some_word_starts(self._sorted_words, prefix)


KENLM_MAGIC = b"mmap lm "  # how a KenLM binary file begins
NOT_WORDS = {"<s>", "</s>", "<unk>"}


def arpa_unigrams(path):
    """The words of an ARPA file's 1-grams section, reading no further (it comes first)."""
    words, inside = [], False
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line == "\\1-grams:":
                inside = True
            elif inside and line.startswith("\\"):
                break
            elif inside and line:
                word = line.split()[1]
                if word not in NOT_WORDS:
                    words.append(word)
    return words


def lm_folder(path):
    """A Hugging Face `language_model/` folder (as Wav2Vec2ProcessorWithLM and pyctcdecode keep it:
    attrs.json, unigrams.txt and the KenLM file), given itself or the model folder holding it; or None."""
    for folder in (os.path.join(path, "language_model"), path):
        if os.path.isfile(os.path.join(folder, "attrs.json")):
            return folder
    return None


def read_lm(path, sentences_of):
    """The word LM that `--lm` names: an ARPA file (through kenlm when it is installed), a KenLM
    binary (kenlm needed), a Hugging Face language_model/ folder (its alpha and beta come along as
    `lm.attrs`), or a text file / CSV `sentence` column to build a 3-gram from; `sentences_of(path)`
    gives the normalised sentences of such a file."""
    folder = lm_folder(path) if os.path.isdir(path) else None
    if os.path.isdir(path) and folder is None:
        raise ValueError(f"{path} is a folder without attrs.json: not a Hugging Face language_model folder")
    attrs, unigrams = {}, None
    if folder is not None:
        with open(os.path.join(folder, "attrs.json"), encoding="utf-8") as f:
            attrs = json.load(f)
        if os.path.isfile(os.path.join(folder, "unigrams.txt")):
            with open(os.path.join(folder, "unigrams.txt"), encoding="utf-8") as f:
                unigrams = [line.strip() for line in f if line.strip()]
        files = sorted(n for n in os.listdir(folder) if n not in ("attrs.json", "unigrams.txt") and not n.startswith("."))
        if not files:
            raise ValueError(f"{folder} holds no language model file beside attrs.json")
        path = os.path.join(folder, files[0])
    with open(path, "rb") as f:
        binary = f.read(len(KENLM_MAGIC)) == KENLM_MAGIC
    try:
        import kenlm  # noqa: F401
    except ImportError:
        kenlm = None
    if binary and kenlm is None:
        raise ValueError(f"{path} is a KenLM binary file, which only the kenlm library reads: pip install kenlm "
                         f"(or give the ARPA file it was built from)")
    if binary or (kenlm is not None and path.endswith(".arpa")):
        lm = KenLM(path, unigrams or (arpa_unigrams(path) if not binary else None))
    elif path.endswith(".arpa"):
        lm = ArpaLM(path)
    else:
        sentences = [s.split() for s in sentences_of(path) if s.strip()]
        lm = NgramLM.build(sentences)
        print(f"language model: a {lm.order}-gram built from {len(sentences)} sentences "
              f"({len([k for k in lm.logprob if len(k) == 1])} words) of {path}")
    lm.attrs, lm.path = attrs, path
    return lm


def write_lm_folder(folder, lm, alpha, beta, unk_offset=-10.0):
    """A Hugging Face `language_model/` folder in `folder`: attrs.json (alpha, beta as pyctcdecode
    names the LM weight and word bonus), unigrams.txt, and the LM file (copied as it is, or the
    built n-gram written as ARPA), so that transformers' Wav2Vec2ProcessorWithLM decodes with it."""
    target = os.path.join(folder, "language_model")
    os.makedirs(target, exist_ok=True)
    with open(os.path.join(target, "attrs.json"), "w", encoding="utf-8") as f:
        json.dump({"alpha": alpha, "beta": beta, "unk_score_offset": unk_offset, "score_boundary": True}, f)
    if isinstance(lm, NgramLM):  # built from text here
        words = sorted(w for (w, *rest) in lm.logprob if not rest and w not in NOT_WORDS)
        lm.write_arpa(os.path.join(target, "lm.arpa"))
    else:  # read from a file: the file itself
        words = sorted(lm.words) if isinstance(lm, ArpaLM) else (lm._sorted_words or [])
        words = [w for w in words if w not in NOT_WORDS]
        link_or_copy(lm.path, os.path.join(target, os.path.basename(lm.path)))
    with open(os.path.join(target, "unigrams.txt"), "w", encoding="utf-8") as f:
        f.write("".join(w + "\n" for w in words))
    return target


def link_or_copy(source, destination):
    """A GB-sized LM file linked where the filesystem allows (no second copy on disk), else copied."""
    if os.path.exists(destination):
        os.remove(destination)
    try:
        os.link(source, destination)
    except OSError:  # another filesystem, or a read-only input (Kaggle's /kaggle/input)
        shutil.copyfile(source, destination)
