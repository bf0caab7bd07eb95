"""data/sampler.py and data/text.py, the resumable sampler and text data: deterministic, complete,
O(1) to resume."""

import itertools

import numpy as np
import pytest
import torch

from data import DataError, tokenizers
from data import text as text_data
from data.sampler import EpochSampler
from training.distributed import Ranks


def test_each_epoch_is_a_fixed_permutation_of_the_whole_set():
    s = EpochSampler(103, 10, seed=7)
    a, b = s.batches(3), EpochSampler(103, 10, seed=7).batches(3)
    assert a == b  # a function of (seed, epoch) only: a fresh process gets the same order
    assert sorted(i for batch in a for i in batch) == list(range(103))
    assert len(a) == len(s) == 11 and len(a[-1]) == 3
    assert s.batches(4) != a and EpochSampler(103, 10, seed=8).batches(3) != a


def test_drop_last_and_no_shuffle():
    s = EpochSampler(25, 4, seed=0, shuffle=False, drop_last=True)
    assert s.batches(0) == [list(range(i, i + 4)) for i in range(0, 24, 4)]
    assert len(s) == 6


def test_length_grouping_cuts_padding_and_keeps_every_sample():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 1000, size=400)
    grouped = EpochSampler(400, 8, seed=1, lengths=lengths, group_size=10).batches(0)
    plain = EpochSampler(400, 8, seed=1).batches(0)
    assert sorted(i for b in grouped for i in b) == list(range(400))

    def padding(batches):
        return sum(max(lengths[b]) * len(b) - sum(lengths[b]) for b in batches)

    assert padding(grouped) < 0.3 * padding(plain)
    assert grouped == EpochSampler(400, 8, seed=1, lengths=lengths, group_size=10).batches(0)


def test_a_step_takes_the_same_micro_batches_whatever_the_number_of_ranks():
    # As train_part.train deals them: rank r takes batches[r::world], `share` of each step's micro-batches.
    batches = EpochSampler(50, 4, seed=3).batches(2)  # 13 micro-batches

    def steps(world, grad_accum):
        per_step, streams, taken = grad_accum * world, [iter(batches[r::world]) for r in range(world)], []
        for start in range(0, len(batches), per_step):
            size = min(per_step, len(batches) - start)
            mine = [list(itertools.islice(streams[r], Ranks(r, world).share(size))) for r in range(world)]
            taken.append(sorted(tuple(b) for batch in mine for b in batch))
        assert all(next(stream, None) is None for stream in streams)  # every micro-batch was dealt once
        return taken

    one = steps(1, 6)
    assert one == steps(2, 3) == steps(3, 2) == steps(6, 1)
    assert [len(step) for step in one] == [6, 6, 1]  # the short last step leaves ranks 1.. without one
    assert one[0] == sorted(tuple(b) for b in batches[:6])


@pytest.mark.parametrize("kind", ["byte", "char"])
def test_tokenizers_round_trip(kind):
    text = "To be, or not to be: that is the question.\nআমি বাংলায় গান গাই।"
    tok = tokenizers.make_tokenizer(kind, text)
    ids = text_data.encode_tokens(tok, text)
    assert tok.decode(ids.tolist()) == text
    again = tokenizers.tokenizer_from_dict(tok.to_dict())
    assert again.encode(text) == ids.tolist()


def test_char_tokenizer_names_unknown_characters():
    tok = tokenizers.make_tokenizer("char", "abc")
    with pytest.raises(DataError, match="'z'"):
        tok.encode("abz")


def test_windows_are_shifted_targets_and_move_with_the_epoch():
    tokens = torch.arange(1000)
    w = text_data.TokenWindows(tokens, block_size=16, seed=0)
    x, y = w.batch([0, 5], epoch=0)
    assert x.shape == y.shape == (2, 16)
    assert torch.equal(y, x + 1)
    assert int(x[1, 0]) - int(x[0, 0]) == 5 * 16
    shifts = {w.shift(e) for e in range(20)}
    assert len(shifts) > 3 and all(0 <= s < 16 for s in shifts)
    last = w.batch([len(w) - 1], epoch=max(range(20), key=w.shift))[1]
    assert int(last.max()) < 1000


def test_missing_or_tiny_text_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        text_data.read_corpus(str(tmp_path / "nope.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no text files"):
        text_data.read_corpus(str(tmp_path / "empty"))
    with pytest.raises(DataError, match="too few"):
        text_data.TokenWindows(torch.arange(10), block_size=16, seed=0)


def test_embedded_corpus_is_there_and_sizable():
    text = text_data.read_corpus()
    assert len(text) > 1_000_000 and "HAMLET" in text


def test_gpt2_bpe_matches_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    import json
    # A small real-format vocabulary: all 256 byte characters plus a few merges.
    chars = list(tokenizers.bytes_to_unicode().values())
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("a", "n"), ("Ġa", "n"), ("o", "r"),
              ("Ġ", "w"), ("Ġw", "or"), ("l", "d"), ("Ġwor", "ld"), ("'", "s")]
    vocab = {c: i for i, c in enumerate(chars)}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    ours = tokenizers.make_tokenizer("gpt2", folder=str(tmp_path))
    reference = transformers.GPT2Tokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    for text in ["the world's in an  orchard", "Hello, world!\n\n  tabs\tand 12345 numbers",
                 "আমি বাংলায় গান গাই।", "it's 3.5 carat — £20"]:
        ids = ours.encode(text)
        assert ids == reference.encode(text), text
        assert ours.decode(ids) == text
    again = tokenizers.tokenizer_from_dict(ours.to_dict())
    assert again.encode("the world") == ours.encode("the world")
