"""A tiny stand-in for the tutorial's remote-code model (techsword/wav2vec2-base-fsc-ic-multiheadmultilabel):
a local directory with config.json (auto_map), configuration_wav2vec2multihead.py and
modeling_wav2vec2multihead.py defining ``Wav2Vec2ForMultiHeadMultiLabelClassification`` (wav2vec2 base
model + dropout + mean pooling over time + classifier1/2/3, outputs logits1/2/3), tiny sizes, random
weights. Written for the tests from the architecture described in TUTORIAL_SPEC.md section 2.3."""

from __future__ import annotations

import json
from pathlib import Path

CONFIGURATION = '''
from transformers import Wav2Vec2Config


class Wav2Vec2MultiHeadConfig(Wav2Vec2Config):
    model_type = "wav2vec2-multihead"

    def __init__(self, num_labels_action=6, num_labels_object=14, num_labels_location=4, **kwargs):
        super().__init__(**kwargs)
        self.num_labels_action = num_labels_action
        self.num_labels_object = num_labels_object
        self.num_labels_location = num_labels_location
'''

MODELING = '''
from dataclasses import dataclass

import torch
from torch import nn
from transformers import Wav2Vec2Model, Wav2Vec2PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_wav2vec2multihead import Wav2Vec2MultiHeadConfig


@dataclass
class MultiHeadOutput(ModelOutput):
    loss: torch.FloatTensor | None = None
    logits1: torch.FloatTensor | None = None
    logits2: torch.FloatTensor | None = None
    logits3: torch.FloatTensor | None = None


class Wav2Vec2ForMultiHeadMultiLabelClassification(Wav2Vec2PreTrainedModel):
    config_class = Wav2Vec2MultiHeadConfig

    def __init__(self, config):
        super().__init__(config)
        self.wav2vec2 = Wav2Vec2Model(config)
        self.dropout = nn.Dropout(config.final_dropout)
        self.classifier1 = nn.Linear(config.hidden_size, config.num_labels_action)
        self.classifier2 = nn.Linear(config.hidden_size, config.num_labels_object)
        self.classifier3 = nn.Linear(config.hidden_size, config.num_labels_location)
        self.post_init()

    def forward(self, input_values, attention_mask=None, labels=None, **kwargs):
        outputs = self.wav2vec2(input_values, attention_mask=attention_mask)
        hidden_states = self.dropout(outputs[0])
        pooled = torch.mean(hidden_states, dim=1)
        logits1 = self.classifier1(pooled)
        logits2 = self.classifier2(pooled)
        logits3 = self.classifier3(pooled)
        loss = None
        if labels is not None:
            ce = nn.CrossEntropyLoss()
            loss = ce(logits1, labels[:, 0]) + ce(logits2, labels[:, 1]) + ce(logits3, labels[:, 2])
        return MultiHeadOutput(loss=loss, logits1=logits1, logits2=logits2, logits3=logits3)
'''

ACTIONS = ["activate", "bring", "change language", "deactivate", "decrease", "increase"]
OBJECTS = ["Chinese", "English", "German", "Korean", "heat", "juice", "lamp", "lights", "music", "newspaper",
           "none_object", "shoes", "socks", "volume"]  # fmt: skip
LOCATIONS = ["bedroom", "kitchen", "none_location", "washroom"]


def write_tiny_multihead(path: str | Path, seed: int = 0, stable_ln: bool = False) -> Path:
    """Write the remote-code files and a config, build the model through AutoModelForAudioClassification
    with trust_remote_code (random weights, seeded) and save it: a directory loadable offline with
    ``AutoModelForAudioClassification.from_pretrained(path, trust_remote_code=True)``."""
    import torch
    from transformers import AutoConfig, AutoModelForAudioClassification, Wav2Vec2FeatureExtractor

    from tests.builders import tiny_w2v2_config

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "configuration_wav2vec2multihead.py").write_text(CONFIGURATION)
    (path / "modeling_wav2vec2multihead.py").write_text(MODELING)
    base = tiny_w2v2_config("wav2vec2", "layer" if stable_ln else "group").to_dict()
    labels = ACTIONS + OBJECTS + LOCATIONS
    base.update({
        "model_type": "wav2vec2-multihead",
        "architectures": ["Wav2Vec2ForMultiHeadMultiLabelClassification"],
        "auto_map": {"AutoConfig": "configuration_wav2vec2multihead.Wav2Vec2MultiHeadConfig",
                     "AutoModelForAudioClassification": "modeling_wav2vec2multihead.Wav2Vec2ForMultiHeadMultiLabelClassification"},
        "num_labels_action": len(ACTIONS), "num_labels_object": len(OBJECTS), "num_labels_location": len(LOCATIONS),
        "id2label": {str(i): lab for i, lab in enumerate(labels)},
        "label2id": {lab: i for i, lab in enumerate(labels)},
        "final_dropout": 0.1, "hidden_dropout": 0.1,  # active in train mode: eval() must switch them off
    })  # fmt: skip
    for k in ("transformers_version", "_name_or_path"):
        base.pop(k, None)
    (path / "config.json").write_text(json.dumps(base, indent=1))
    config = AutoConfig.from_pretrained(str(path), trust_remote_code=True)
    torch.manual_seed(seed)
    model = AutoModelForAudioClassification.from_config(config, trust_remote_code=True)
    with torch.no_grad():  # larger heads than the default init, so the logits differ clearly between classes
        for k in (1, 2, 3):
            getattr(model, f"classifier{k}").weight.normal_(0.0, 0.5)
    model.save_pretrained(str(path))
    for name in ("configuration_wav2vec2multihead.py", "modeling_wav2vec2multihead.py"):  # save_pretrained may skip them
        if not (path / name).exists():
            (path / name).write_text(CONFIGURATION if name.startswith("conf") else MODELING)
    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=stable_ln).save_pretrained(str(path))
    return path
