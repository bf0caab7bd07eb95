"""What serves the training stage (train_part.py): the tasks, the run's settings, finding the
checkpoint to continue from, the time budget, divergence, the run's record, running out of memory,
the device and several processes.

The task interface. tasks.py lists the tasks. Each task module (lm.py, asr.py, reg.py) has a
config dataclass extending config.py's TrainConfig, a task object (`LMTask`, `ASRTask`, `RegTask`)
and `build(cfg, device, rank, world, resumed, run_folder)`, which returns `(model, task object)`;
`resumed` is the checkpoint a run resumes from (None for a fresh one) and `run_folder` where work
that depends only on the data is kept for later parts. A task object offers train_part.py the same few things:
- `sampler`: this rank's micro-batches of training indices, per epoch (data/sampler.py);
- `batches(index_batches, epoch)`: yields `(inputs, count)`, where `model(**inputs)` returns
  `(output, loss summed over count units)`; inputs None means nothing to learn from there;
- `evaluate(model, keep_going)`: additive sums over this rank's share of the validation set, or
  None when `keep_going()` turned false; `summarize(sums)` turns the sums of all ranks into metrics;
- `best_metric` (lower is better), `meta` (what inference needs besides the weights, stored in the
  checkpoint header) and `fingerprint` (of the training data, to warn when it changes);
- `work(indices)`: what a micro-batch of these training indices trains on, in `work_unit` (tokens,
  seconds of audio, rows), for the part's time line; `flops_per_work(model)` (lm; else None) for MFU.

The order to read it in: train_part.py first (the stage, top to bottom), then signals.py (SIGTERM
and Ctrl-C, imported before torch), tasks.py (the one list of the tasks) and a task (lm.py is the
simplest) with the data modules it uses and reuse.py (where work an earlier part did on the data is
looked for, and who builds it), then config.py, discovery.py (which checkpoint a part continues
from), state.py (what a checkpoint holds of a part, and loading it back), optimizer.py (AdamW across
machines), budget.py (when a part must stop), divergence.py (what counts as diverging), record.py
(metrics.json and the plots), memory.py (a micro-batch that runs out of memory, trained in pieces),
devices.py (the device and precision) and distributed.py (torchrun's ranks and the collectives).
"""
