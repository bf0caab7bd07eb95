"""What serves the training stage (train_part.py): the tasks, the run's settings, finding the
checkpoint to continue from, the time budget, divergence, the run's record, running out of memory,
the device and several processes.

The task interface. Each task module (lm.py, asr.py, reg.py) has a config dataclass extending
config.py's TrainConfig, a task object (`LMTask`, `ASRTask`, `RegTask`) and `build(cfg, device,
rank, world, saved, workdir)`, which returns `(model, task object)`; `saved` is the checkpoint a
run resumes from (None for a fresh one) and `workdir` the run folder, where work that depends only
on the data is kept for later parts. A task object offers train_part.py the same few things:
- `sampler`: this rank's micro-batches of training indices, per epoch (data/sampler.py);
- `batches(index_batches, epoch)`: yields `(inputs, count)`, where `model(**inputs)` returns
  `(output, loss summed over count units)`; inputs None means nothing to learn from there;
- `evaluate(model, keep_going)`: additive sums over this rank's share of the validation set, or
  None when `keep_going()` turned false; `summarize(sums)` turns the sums of all ranks into metrics;
- `best_metric` (lower is better), `meta` (what inference needs besides the weights, stored in the
  checkpoint header) and `fingerprint` (of the training data, to warn when it changes).

The order to read it in: train_part.py first (the stage, top to bottom), then a task (lm.py is the
simplest) with the data modules it uses, then config.py, discovery.py (which checkpoint a part
continues from), budget.py (when a part must stop), divergence.py (what counts as diverging),
record.py (metrics.json and the plots), memory.py (a micro-batch that runs out of memory, trained in
pieces), devices.py (the device and precision) and distributed.py (torchrun's ranks and the collectives).
"""

import typing

from model.gpt import GPT
from model.regression import Regressor
from model.wav2vec2 import Wav2Vec2ForCTC
from training import asr, lm, reg


class TaskDef(typing.NamedTuple):
    config: type           # the task's settings: a dataclass extending config.TrainConfig
    model: type            # its nn.Module; a checkpoint's `model_config` rebuilds it (model.rebuild)
    build: typing.Callable  # (cfg, device, rank, world, saved, workdir) -> (model, task object)


# The one list of the tasks: the command lines' --task choices, and what each is made of.
TASKS = {"lm": TaskDef(lm.LMConfig, GPT, lm.build),
         "asr": TaskDef(asr.ASRConfig, Wav2Vec2ForCTC, asr.build),
         "reg": TaskDef(reg.RegConfig, Regressor, reg.build)}
