"""Where a part looks for what an earlier part made from the same data (the lm token file, the asr
manifest check) and which process makes it when nothing fits: one rule, for both tasks.

Look in the run folder, then beside the checkpoint being resumed (on Kaggle, the previous part's
output, attached read-only), then under the input roots (datasets and notebook outputs attached
under /kaggle/input, data/inputs.py); rank 0 builds into the run folder, the other ranks wait for
it. They wait by looking again every second, not in a collective: a tokenization can outlast NCCL's
timeout. The manifest check departs from the rule twice: it is not looked for under the input roots
(each part copies the cache it reuses into its own folder, so the resumed checkpoint's folder has
it; a token file, too large to copy, stays in the output of the part that made it), and the other
ranks check the manifest themselves, in seconds, without writing the cache (a small manifest is
never cached, so there may be nothing to wait for).
"""

import itertools
import os

from data import audio, text
from data.inputs import input_roots


def places(run_folder, resumed):
    """The run folder, then the folder of the checkpoint `resumed`, those of them that there are."""
    return [folder for folder in [run_folder, os.path.dirname(resumed.path) if resumed else None] if folder is not None]


def lm_token_file(cfg, tokenizer=None, resumed=None, run_folder=None, rank=0):
    """The lm corpus's TokenFile (data/text.py's token_file): in tokens/ of the run folder, beside
    `resumed`, or under the input roots; `tokenizer` is the one the run must use (None: a new one)."""
    own = os.path.join(run_folder, "tokens") if run_folder else None
    inputs = (folder for root in input_roots() for folder in text.input_token_folders(root))  # walked only if needed
    folders = itertools.chain((os.path.join(folder, "tokens") for folder in places(run_folder, resumed)), inputs)
    return text.token_file(cfg.data, tokenizer, folders, build_into=own, may_build=rank == 0, kind=cfg.tokenizer,
                           pretrained=cfg.pretrained)


def asr_manifest_check(cfg, vocab=None, normalizer=None, resumed=None, run_folder=None, rank=0):
    """The asr manifest's check (data/audio.py's reuse_or_check_manifest): cached in the run folder
    or beside `resumed`, else checked; `vocab` is the one the run must use (None: built)."""
    return audio.reuse_or_check_manifest(cfg, vocab, normalizer, places(run_folder, resumed),
                                         write_into=run_folder if rank == 0 else None)
