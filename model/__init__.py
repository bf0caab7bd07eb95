"""The models, pure nn.Modules: gpt.py (lm), wav2vec2.py (asr), regression.py (reg).

Given targets, each forward also returns its loss, summed over the batch's units (tokens, CTC labels,
rows): `output, loss_sum = model(**inputs)`. `MODELS` names each task's model and config classes, so
that a checkpoint's `model_config` rebuilds its model, for resuming and for inference alike."""

import dataclasses

from model.gpt import GPT, GPTConfig
from model.regression import Regressor, RegressorConfig
from model.wav2vec2 import Wav2Vec2Config, Wav2Vec2ForCTC

MODELS = {"lm": (GPT, GPTConfig), "asr": (Wav2Vec2ForCTC, Wav2Vec2Config), "reg": (Regressor, RegressorConfig)}


def rebuild(task, model_config, **overrides):
    """The model that a checkpoint's `model_config` describes, with random weights (load the state
    next); `overrides` change training behaviour such as dropout, never shapes."""
    model_cls, config_cls = MODELS[task]
    return model_cls(dataclasses.replace(config_cls(**model_config), **overrides))


def pretrained_or_fresh(task, pretrained, saved, fresh_config, load_args, **overrides):
    """The model a run trains. With a `pretrained` folder, the architecture of those weights: on resume
    from the checkpoint `saved`'s record of it (the folder need not be attached again), else read from
    the folder (`load_args` go to from_pretrained). Without, one made from `fresh_config`. `overrides`
    (dropout, masking) apply in every case."""
    if pretrained and saved:
        return rebuild(task, saved.meta["model_config"], **overrides)
    model_cls, _ = MODELS[task]
    if pretrained:
        return model_cls.from_pretrained(pretrained, **load_args, **overrides)
    return model_cls(dataclasses.replace(fresh_config, **overrides))
