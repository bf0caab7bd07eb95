"""The one list of the tasks: the command lines' --task choices, and what each is made of.

Importing it loads torch, the models and the three tasks, so it is imported by the stages
(train_part.py, infer.py), never by training/__init__.py.
"""

import typing

from model.gpt import GPT
from model.regression import Regressor
from model.wav2vec2 import Wav2Vec2ForCTC
from training import asr, lm, reg


class TaskDef(typing.NamedTuple):
    config: type           # the task's settings: a dataclass extending config.TrainConfig
    model: type            # its nn.Module; a checkpoint's `model_config` rebuilds it (model.rebuild)
    build: typing.Callable  # (cfg, device, rank, world, resumed, run_folder) -> (model, task object)


TASKS = {"lm": TaskDef(lm.LMConfig, GPT, lm.build),
         "asr": TaskDef(asr.ASRConfig, Wav2Vec2ForCTC, asr.build),
         "reg": TaskDef(reg.RegConfig, Regressor, reg.build)}
