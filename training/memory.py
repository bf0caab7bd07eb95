"""Out of memory in a step: training a micro-batch in pieces, without changing the run.

The loss of a step is normalised by the units (tokens, CTC labels, rows) of its whole step, so a
micro-batch trained as two halves, each forward and backward on its own, adds the same gradient up
to float rounding; its dropout and SpecAugment draws are those of a run with half the micro-batch.
train_part.py's step catches `torch.OutOfMemoryError`, undoes the failed attempt (the gradients
and the random draws of the step) and trains the micro-batch in twice the pieces, down to one
sample; one sample that does not fit is `OutOfMemory`, one sentence.

Which micro-batch was trained in how many pieces is the run's, like its batch size: each split goes
into the record (`splits`, carried by every checkpoint), and a resumed part trains the same steps
in the same pieces on any machine. A split also records the shapes of the piece that ran out of
memory (`failed`: the largest piece of the failed attempt, {tensor name: shape}); from that step
on, a micro-batch starts in the fewest pieces (1, 2, 4, ... as the splits go) whose largest piece
is smaller in some dimension than every piece that ran out of memory, since memory grows with
every dimension: a run of same-shaped batches pays the failed attempts of its first step only,
not of every step. After SPLITS_BEFORE_LOWERING splits, every micro-batch from that step on is
trained in that many pieces (an entry with micro_batch "all"), so a run whose batches keep failing
in shapes no earlier failure covers (long clips of ever new lengths) stops paying a failed attempt
for each. `--set probe_memory=true` decides that before the first step, from the part's largest
micro-batch (`probe`). Every decision is a function of the record's entries up to the step and of
the micro-batch's shapes, never of the machine: a resumed part splits exactly as the run did.
Entries without `failed` (older records) mean what they always did: their step and micro-batch.
"""

import torch

import ckpt
from training.config import ConfigError
from training.distributed import gather

SPLITS_BEFORE_LOWERING = 3  # splits of single micro-batches in a run before all micro-batches are split


class OutOfMemory(ConfigError):
    """One sample that does not fit: the message says which and what to try."""


def rows_of(inputs):
    """The number of samples in a micro-batch: the first dimension of its tensors."""
    return next(v.shape[0] for v in inputs.values() if isinstance(v, torch.Tensor))


def split_rows(inputs, pieces):
    """The micro-batch cut into `pieces` consecutive row slices, as equal as the rows allow (5 rows in
    2 pieces: 3 and 2); a value without the batch's first dimension goes to every piece whole."""
    if pieces == 1:
        return [inputs]
    rows = rows_of(inputs)
    cut = {k: v.tensor_split(pieces) if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == rows else None
           for k, v in inputs.items()}
    return [{k: cut[k][i] if cut[k] is not None else v for k, v in inputs.items()} for i in range(pieces)]


def shapes_of(inputs):
    """A micro-batch's tensors' shapes, as the record holds them: {'idx': [4, 16], 'targets': [4, 16]}."""
    return {k: list(v.shape) for k, v in inputs.items() if isinstance(v, torch.Tensor)}


def words(shapes):
    """Shapes as words: 'input_values 8x250000, attention_mask 8x250000'."""
    return ", ".join(f"{k} {'x'.join(map(str, shape))}" for k, shape in shapes.items())


def describe(inputs):
    """A micro-batch's tensors as words."""
    return words(shapes_of(inputs))


def at_least(shapes, failed):
    """Whether tensors of `shapes` are at least as large as `failed` in every dimension of every tensor
    (the same tensors, each with as many dimensions): then they need at least as much memory."""
    return shapes.keys() == failed.keys() and all(
        len(shapes[k]) == len(failed[k]) and all(a >= b for a, b in zip(shapes[k], failed[k])) for k in failed)


def pieces_for(history, step, index, inputs=None):
    """How many pieces micro-batch `index` of optimizer step `step` (1-based) is trained in, by the record:
    the most of its own splits and the "all" entries up to the step, then, given its `inputs`, twice
    that (as split_further would go) while its largest piece is at least as large as one that ran out
    of memory at this step or before. Only entries up to `step` count, so the answer for a step is
    the one the run gave it, whatever later steps added."""
    pieces, failed = 1, []
    for split in history.get("splits", []):
        if (split["micro_batch"] == "all" and split["step"] <= step) or \
                (split["micro_batch"] == index and split["step"] == step):
            pieces = max(pieces, split["pieces"])
        if "failed" in split and split["step"] <= step:
            failed.append(split["failed"])
    if inputs is not None and failed:
        rows = rows_of(inputs)
        while pieces < rows and any(at_least(shapes_of(split_rows(inputs, pieces)[0]), f) for f in failed):
            pieces = min(2 * pieces, rows)
    return pieces


def split_further(history, step, index, inputs, device):
    """Micro-batch `index` of step `step` ran out of memory: record twice its pieces and the shapes of
    the piece that failed (and, after repeated splits, the same pieces for all micro-batches from
    here on); returns what to print. One sample that does not fit raises OutOfMemory."""
    rows, pieces = rows_of(inputs), pieces_for(history, step, index, inputs)
    if pieces >= rows:
        raise OutOfMemory(
            f"out of memory at step {step}: micro-batch {index} of the step does not fit on the {device} even as "
            f"single samples ({describe(split_rows(inputs, rows)[0])}); try --set grad_checkpointing=true, shorter samples (asr: "
            f"max_seconds, lm: block_size), --amp fp16 or bf16 on a GPU, or a GPU with more memory")
    failed = shapes_of(split_rows(inputs, pieces)[0])  # the largest piece of the attempt that failed
    pieces = min(2 * pieces, rows)
    splits = history.setdefault("splits", [])
    splits.append({"step": step, "micro_batch": index, "pieces": pieces, "failed": failed})
    said = (f"step {step}: out of memory in micro-batch {index} ({describe(inputs)}): trained in {pieces} pieces "
            f"(the same gradient up to float rounding); no piece as large as {words(failed)} is tried again")
    singles = sum(1 for split in splits if split["micro_batch"] != "all")
    for_all = max((split["pieces"] for split in splits if split["micro_batch"] == "all"), default=1)
    if singles >= SPLITS_BEFORE_LOWERING and pieces > for_all:
        splits.append({"step": step, "micro_batch": "all", "pieces": pieces})
        said += (f"; after {singles} splits every micro-batch from step {step} on is trained in {pieces} pieces "
                 f"(the step, and so the optimisation, stays the same)")
    return said


def fits(model, inputs, pieces, autocast):
    """Whether forward and backward of `inputs` in `pieces` run without running out of memory. The
    gradients are left behind for the caller to clear."""
    try:
        for piece in split_rows(inputs, pieces):
            with autocast():
                _, loss_sum = model(**piece)
            loss_sum.backward()
        return True
    except torch.OutOfMemoryError:
        return False


def probe(model, optimizer, task, epoch, autocast, device):
    """The pieces the part's largest micro-batch (by padded length) needs: forward and backward in
    1, 2, 4, ... pieces until they fit; returns (pieces, what to print). The caller restores the RNG
    and clears the gradients. A fresh optimizer has no moments yet: stand-ins of their size are held
    meanwhile, so that what fits now still fits once AdamW has made its state."""
    batches = task.sampler.batches(epoch)
    inputs, _ = next(task.batches([task.sampler.largest(batches)], epoch))
    if inputs is None:  # every clip of it unreadable: nothing to measure
        return 1, "memory probe: the largest micro-batch has no readable sample; nothing measured"
    trainable = [p for p in model.parameters() if p.requires_grad]
    moments = [] if optimizer.state else [torch.empty_like(p, dtype=torch.float32) for p in trainable for _ in (0, 1)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    pieces, rows = 1, rows_of(inputs)
    while not fits(model, inputs, pieces, autocast):
        optimizer.zero_grad(set_to_none=True)
        if pieces >= rows:
            raise OutOfMemory(f"out of memory in the memory probe: the part's largest micro-batch does not fit on the "
                              f"{device} even as single samples ({describe(split_rows(inputs, rows)[0])}); try --set grad_checkpointing=true, "
                              f"shorter samples (asr: max_seconds), or a GPU with more memory")
        pieces = min(2 * pieces, rows)
    del moments
    said = f"memory probe: the largest micro-batch ({describe(inputs)}) fits " + \
        ("whole" if pieces == 1 else f"in {pieces} pieces")
    if device.type == "cuda":
        _, total = torch.cuda.mem_get_info(device)
        said += f"; peak {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB of the GPU's {total / 2**30:.1f} GiB"
    return pieces, said


def probe_part(part):
    """--set probe_memory=true, for train_part.py's Part: every micro-batch is trained in the pieces the
    part's largest one needs, recorded as a split from the part's first step on; returns what to
    print. Nothing of the run moves: the probe's random draws are undone and its gradients cleared."""
    rng, step = ckpt.capture_rng(), part.position.global_step + 1
    model = part.train_model if part.ranks.world == 1 else part.model  # no gradient exchange in a probe
    try:
        pieces, said = probe(model, part.optimizer, part.task, part.position.epoch, part.autocast, part.device)
    finally:
        part.optimizer.zero_grad(set_to_none=True)
        ckpt.restore_rng(rng)
    pieces = max(gather(part.ranks, pieces))  # every rank trains in the pieces the tightest one needs
    if pieces > pieces_for(part.history, step, "all"):
        part.history.setdefault("splits", []).append({"step": step, "micro_batch": "all", "pieces": pieces})
        said += f": from step {step} on, every micro-batch is trained in {pieces} pieces (the same steps, the same run)"
    return said
