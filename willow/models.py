"""The models by name: `--model=NAME` -> the registered class, built from a ModelConfig.

Every model is a class of frame_level_models.py or video_level_models.py decorated with
@register (willow/model_base.py); importing both modules here fills the registry.
"""
from typing import Dict, Type

import frame_level_models
import video_level_models
from utils import InputError
from willow.model_base import CONFIG_FIELDS, REGISTRY, BaseModel, ModelConfig

__all__ = ["CONFIG_FIELDS", "BaseModel", "ModelConfig", "build_model", "get_model_class",
           "registered_models"]

MODEL_MODULES = (frame_level_models, video_level_models)


def registered_models() -> Dict[str, Type[BaseModel]]:
  return dict(REGISTRY)


def get_model_class(name: str) -> Type[BaseModel]:
  if name not in REGISTRY:
    raise InputError("unknown model %r; valid models: %s" % (name, ", ".join(sorted(REGISTRY))))
  return REGISTRY[name]


def build_model(config: ModelConfig) -> BaseModel:
  return get_model_class(config.model)(config)
