"""The models, pure nn.Modules: gpt.py (lm), wav2vec2.py (asr), regression.py (reg), and decoding.py
(CTC beam search and word language models, for turning asr output into text); hf_weights.py reads a
Hugging Face folder's weights for their from_pretrained.

Given targets, each forward also returns its loss, summed over the batch's units (tokens, CTC labels,
rows): `output, loss_sum = model(**inputs)`. Each model class names its config dataclass
(`config_class`), so that the `model_config` a checkpoint stores rebuilds the model, for resuming and
for inference alike. Nothing here knows about tasks, training or checkpoint files."""

import dataclasses


def rebuild(model_cls, model_config, **overrides):
    """The model that a stored `model_config` (a dict) describes, with random weights (load the state
    next); `overrides` change training behaviour such as dropout, never shapes."""
    return model_cls(dataclasses.replace(model_cls.config_class(**model_config), **overrides))


def pretrained_or_fresh(model_cls, pretrained, saved_config, fresh_config, load_args, **overrides):
    """The model a run trains. With a `pretrained` folder, the architecture of those weights: on resume
    from the resumed checkpoint's record of it, `saved_config` (the folder need not be attached again),
    else read from the folder (`load_args` go to from_pretrained). Without, one made from `fresh_config`.
    `overrides` (dropout, masking) apply in every case."""
    if pretrained and saved_config:
        return rebuild(model_cls, saved_config, **overrides)
    if pretrained:
        return model_cls.from_pretrained(pretrained, **load_args, **overrides)
    return model_cls(dataclasses.replace(fresh_config, **overrides))
