"""The CTC prefix beam search and the word n-gram LM (model/decoding.py), on hand-made frame
probabilities and a hand-written ARPA file, against hand-computed answers."""

import math
import sys

import numpy as np
import pytest

from data import transcripts
from model import decoding

NEG = -math.inf
VOCAB = transcripts.CharVocab({"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, "a": 5, "c": 6, "o": 7, "t": 8})


def frames(*rows):
    """Log probabilities of frames given as {label: probability}; the rest is shared out tiny."""
    out = np.full((len(rows), len(VOCAB.token_to_id)), 1e-6)
    for t, row in enumerate(rows):
        for token, p in row.items():
            out[t, VOCAB.token_to_id[token]] = p
    return np.log(out / out.sum(axis=1, keepdims=True))


def test_the_beam_adds_up_the_alignments_that_greedy_sees_apart():
    # two frames, each 60% blank and 40% "a": the best path is blank-blank (0.36), so greedy says "";
    # but "a" is spelled by a-a, a-blank and blank-a: 0.16 + 0.24 + 0.24 = 0.64
    lp = frames({"<pad>": 0.6, "a": 0.4}, {"<pad>": 0.6, "a": 0.4})
    assert VOCAB.decode_ctc(lp.argmax(axis=1)) == ""
    assert decoding.prefix_beam_search(lp, VOCAB, beam=8) == "a"
    assert math.isclose(0.16 + 0.24 + 0.24, 0.64) and 0.64 > 0.36


def test_a_held_letter_is_one_and_a_blank_between_makes_two():
    held = frames({"a": 1.0}, {"a": 1.0}, {"<pad>": 1.0})
    twice = frames({"a": 1.0}, {"<pad>": 1.0}, {"a": 1.0})
    assert decoding.prefix_beam_search(held, VOCAB, beam=4) == "a"
    assert decoding.prefix_beam_search(twice, VOCAB, beam=4) == "aa"


COT_OR_CAT = frames({"c": 1.0}, {"o": 0.55, "a": 0.45}, {"t": 1.0})


def test_the_language_model_changes_the_beams_choice():
    assert decoding.prefix_beam_search(COT_OR_CAT, VOCAB, beam=8) == "cot"  # the sound alone
    lm = decoding.NgramLM.build([["cat"]] * 20 + [["cot"]], order=2)
    assert decoding.prefix_beam_search(COT_OR_CAT, VOCAB, beam=8, lm=lm, lm_weight=1.0) == "cat"
    assert decoding.prefix_beam_search(COT_OR_CAT, VOCAB, beam=8, lm=lm, lm_weight=0.0) == "cot"


ARPA = """\\data\\
ngram 1=4
ngram 2=2

\\1-grams:
-1.0\t</s>
-99\t<s>\t-0.30103
-0.5\ta\t-0.2
-0.7\tb

\\2-grams:
-0.1\t<s> a
-0.4\tb </s>

\\end\\
"""


def test_an_arpa_file_scores_a_sentence_as_computed_by_hand(tmp_path):
    path = tmp_path / "lm.arpa"
    path.write_text(ARPA, encoding="utf-8")
    lm = decoding.read_arpa(str(path))
    assert lm.order == 2
    # log10 P(<s> a b </s>) = P(a | <s>) listed: -0.1; P(b | a) not listed: bow(a) + P(b) = -0.2 - 0.7;
    # P(</s> | b) listed: -0.4
    assert lm.log10_sentence(["a", "b"]) == pytest.approx(-0.1 + (-0.2 - 0.7) + -0.4)
    # a word it never saw, and no <unk>: the floor of -10, after the backoff of its context
    assert lm.log10_prob(["a"], "zebra") == pytest.approx(-0.2 - 10.0)


def test_a_built_model_is_a_distribution_in_every_context_and_survives_arpa(tmp_path):
    sentences = [s.split() for s in ["the cat sat", "the cat ran", "a dog sat", "the dog", "cat"]]
    lm = decoding.NgramLM.build(sentences, order=3)
    words = sorted({w for s in sentences for w in s}) + ["</s>", "<unk>"]
    for context in (["<s>"], ["<s>", "the"], ["the", "cat"], ["cat"], ["never", "seen"]):
        assert sum(10 ** lm.log10_prob(context, w) for w in words) == pytest.approx(1.0), context
    path = tmp_path / "built.arpa"
    lm.write_arpa(str(path))
    again = decoding.read_arpa(str(path))
    for sentence in (["the", "cat", "sat"], ["a", "cat", "ran"], ["zebra"]):
        assert again.log10_sentence(sentence) == pytest.approx(lm.log10_sentence(sentence), abs=1e-5)
    assert lm.log10_sentence(["the", "cat", "sat"]) > lm.log10_sentence(["sat", "cat", "the"])


def test_a_word_no_lm_word_starts_like_leaves_the_beam_before_its_space():
    # "co" sounds likelier than "ca" (0.55 against 0.45) but the LM knows only "cat". With one beam,
    # "co" wins frame 2 and "cat" is lost for good, unless a spelling that no LM word starts with is
    # penalised at once (unk_offset): ln 0.55 - 10 < ln 0.45, so "ca" stays.
    lm = decoding.NgramLM.build([["cat"]] * 5, order=2)
    assert lm.has_prefix("ca") and not lm.has_prefix("co") and lm.has_word("cat") and not lm.has_word("cot")
    assert decoding.prefix_beam_search(COT_OR_CAT, VOCAB, beam=1, lm=lm, lm_weight=0.0, word_bonus=0.0) == "cat"
    assert decoding.prefix_beam_search(COT_OR_CAT, VOCAB, beam=1, lm=lm, lm_weight=0.0, word_bonus=0.0,
                                       unk_offset=0.0) == "cot"


def test_prefixes_far_below_the_best_are_pruned_and_a_frame_s_likeliest_letter_is_tried_below_prune():
    following = {("", "a", 5): [math.log(0.5), NEG, 0.0], ("", "c", 6): [NEG, -5.0, 0.0], ("", "t", 8): [-12.0, NEG, 0.0]}
    kept = decoding.best_prefixes(following, beam=8, beam_prune=-10.0)
    assert set(kept) == {("", "a", 5), ("", "c", 6)}  # -12 is more than 10 below ln 0.5
    assert set(decoding.best_prefixes(following, beam=1, beam_prune=-10.0)) == {("", "a", 5)}
    # No label clears prune=+1 (a log probability is at most 0), but each frame's likeliest is tried.
    assert decoding.prefix_beam_search(frames({"c": 0.9}, {"a": 0.9}, {"t": 0.9}), VOCAB, beam=4, prune=1.0) == "cat"


def test_a_frame_s_likeliest_letter_is_tried_below_prune_unless_it_cannot_survive_the_beam():
    # The "a" of "cat" is heard faintly: a frame of blank with "a" at 1e-3 (ln -6.9, below prune=-5).
    # Trying it anyway, "ca" costs 6.9 against "c" held, and the LM (which knows only "cat") takes
    # unk_offset=-10 from the spelling "ct" at once: "cat" wins. At 1e-7 (ln -16, beyond
    # beam_prune=-10 less the word bonus), whatever the LM says it would be pruned: it is not tried.
    lm = decoding.NgramLM.build([["cat"]] * 5, order=2)
    def clip(p_a):
        return frames({"c": 0.99}, {"<pad>": 1 - p_a, "a": p_a}, {"t": 0.99}, {"<pad>": 0.99})
    faint = clip(1e-3)
    assert VOCAB.decode_ctc(faint.argmax(axis=1)) == "ct"
    assert decoding.prefix_beam_search(faint, VOCAB, beam=8, lm=lm, lm_weight=0.0, word_bonus=1.0) == "cat"
    assert decoding.prefix_beam_search(faint, VOCAB, beam=8) == "ct"  # without the LM, the sound decides
    tried = list(decoding.labels_to_try(faint, VOCAB, prune=-5.0, lowest_lead=-11.0))
    assert tried == [[VOCAB.token_to_id["c"]], [VOCAB.token_to_id["a"]], [VOCAB.token_to_id["t"]], []]
    silent = clip(1e-7)
    assert list(decoding.labels_to_try(silent, VOCAB, prune=-5.0, lowest_lead=-11.0))[1] == []
    assert decoding.prefix_beam_search(silent, VOCAB, beam=8, lm=lm, lm_weight=0.0, word_bonus=1.0) == "ct"


END_ARPA = """\\data\\
ngram 1=5
ngram 2=4

\\1-grams:
-99\t<s>\t0
-1.0\t</s>
-1.0\tcat\t0
-1.0\tcot\t0
-2.0\t<unk>

\\2-grams:
-0.5\t<s> cat
-0.5\t<s> cot
-0.3\tcat </s>
-5.0\tcot </s>

\\end\\
"""


def test_the_end_of_the_sentence_is_scored(tmp_path):
    # Both words are as likely after <s>; "cot" sounds likelier (ln 0.55 - ln 0.45 = 0.2) but ends a
    # sentence with log10 P(</s> | cot) = -5 against -0.3 for "cat": 4.7 x ln 10 = 10.8 in its disfavour.
    path = tmp_path / "end.arpa"
    path.write_text(END_ARPA)
    lm = decoding.read_arpa(str(path))
    assert math.isclose(lm.end_score(lm.score(lm.begin(), "cot")[1]), -5.0)
    assert decoding.prefix_beam_search(COT_OR_CAT, VOCAB, beam=8, lm=lm, lm_weight=1.0, word_bonus=0.0) == "cat"

    lm.end_score = lambda state: 0.0  # blind to the sentence's end
    assert decoding.prefix_beam_search(COT_OR_CAT, VOCAB, beam=8, lm=lm, lm_weight=1.0, word_bonus=0.0) == "cot"


def test_a_language_model_folder_round_trip(tmp_path):
    lm = decoding.NgramLM.build([["cat", "sat"], ["cot"], ["cat"]], order=2)
    folder = decoding.write_lm_folder(str(tmp_path), lm, alpha=0.7, beta=2.5)
    assert (tmp_path / "language_model" / "unigrams.txt").read_text().split() == ["cat", "cot", "sat"]
    for given in (tmp_path, folder):  # the model folder holding language_model/, or the folder itself
        again = decoding.read_lm(str(given), sentences_of=None)
        assert again.attrs == {"alpha": 0.7, "beta": 2.5, "unk_score_offset": -10.0, "score_boundary": True}
        for words in (["cat", "sat"], ["cot", "sat"], ["cat"], ["dog", "cat"]):
            assert math.isclose(sentence_log10(again, words), sentence_log10(lm, words), abs_tol=1e-4)


def sentence_log10(lm, words):
    """log10 P(<s> words </s>) through the interface the beam search uses (NgramLM's or KenLM's)."""
    state, total = lm.begin(), 0.0
    for word in words:
        log10, state = lm.score(state, word)
        total += log10
    return total + lm.end_score(state)


def test_a_kenlm_binary_needs_kenlm_and_says_so(tmp_path, monkeypatch):
    path = tmp_path / "5gram.bin"
    path.write_bytes(b"mmap lm http://kheafield.com/code format version 5\0" + bytes(64))
    monkeypatch.setitem(sys.modules, "kenlm", None)  # as where it is not installed: `import kenlm` fails
    with pytest.raises(ValueError, match="is a KenLM binary file, which only the kenlm library reads: pip install kenlm"):
        decoding.read_lm(str(path), sentences_of=None)


def test_kenlm_and_the_plain_reader_score_an_arpa_file_alike(tmp_path):
    pytest.importorskip("kenlm")
    path = tmp_path / "end.arpa"
    path.write_text(END_ARPA)
    ken, plain = decoding.read_lm(str(path), sentences_of=None), decoding.read_arpa(str(path))
    assert isinstance(ken, decoding.KenLM)
    for words in (["cat"], ["cot"], ["cat", "cot"], ["dog"]):
        a, b = ken.begin(), plain.begin()
        for word in words + ["</s>"]:
            (ka, a), (pb, b) = ken.score(a, word), plain.score(b, word)
            assert math.isclose(ka, pb, abs_tol=1e-4), (words, word)
    assert decoding.prefix_beam_search(COT_OR_CAT, VOCAB, beam=8, lm=ken, lm_weight=1.0, word_bonus=0.0) == "cat"
