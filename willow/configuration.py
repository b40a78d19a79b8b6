"""The rules that reconcile the model configuration saved beside the checkpoints with the
configuration the flags request.

The training loop saves the ModelConfig it trains as <train_dir>/model_config.json with its
first checkpoint (willow/checkpoints.py reads and writes the file); eval.py, inference.py and
export_model.py rebuild exactly that model from it (the original re-imported
its training graph, so the model flags given to its inference.py did not matter; they do not
here either). A train_dir written by the original TF1 code has no saved configuration: the
flags' configuration is used.
"""
import json
import os
from typing import Sequence

from absl import logging

import utils
from willow import checkpoints
from willow import models

# Model flags that describe the data rather than the architecture: a trained model reads only
# the features (and vocabulary) it was trained on.
DATA_FIELDS = ("frame_features", "feature_names", "feature_sizes", "num_classes")


def reconcile_config(saved: models.ModelConfig, requested: models.ModelConfig,
                     explicit: Sequence[str], train_dir: str) -> models.ModelConfig:
  """eval/inference/export: the saved configuration wins; explicit flags that disagree get one
  warning line, except flags describing the data (DATA_FIELDS), for which a disagreement
  cannot work: an error."""
  contradicting = _differences(saved, requested, [n for n in explicit if n in DATA_FIELDS])
  if contradicting:
    raise utils.InputError(
        "%s contradicts the model configuration saved in %s: a trained model reads only the "
        "data it was trained on; drop the flag or use another --train_dir"
        % (", ".join(contradicting), train_dir))
  differing = _differences(saved, requested, explicit)
  if differing:
    logging.warning("using the model configuration saved in %s; ignoring %s", train_dir,
                    ", ".join(differing))
  return saved


def _flag_text(value):
  if isinstance(value, (tuple, list)):
    return ",".join(str(v) for v in value)
  return json.dumps(value) if isinstance(value, str) else str(value)


def config_to_restore(train_dir: str, requested: models.ModelConfig,
                      explicit: Sequence[str]) -> models.ModelConfig:
  """eval/inference/export: the configuration saved in train_dir if there is one, else the
  flags'."""
  saved = checkpoints.load_saved_config(train_dir)
  if saved is None:
    return requested
  return reconcile_config(saved, requested, explicit, train_dir)


def load_trained_model(train_dir: str, check_point: int, requested: models.ModelConfig,
                       explicit: Sequence[str], precision: str = "float64"):
  """(model, config, checkpoint path) for eval/inference/export: the checkpoint of train_dir
  (the latest when check_point < 0), the model of the configuration saved beside it, computing
  in `precision` (see --inference_precision); errors name train_dir or the checkpoint."""
  checkpoints.precision_dtype(precision)  # a bad precision fails before the checkpoint search
  path = checkpoints.require_checkpoint(train_dir, check_point)
  config = config_to_restore(train_dir, requested, explicit)
  return checkpoints.restore_model(config, path, precision), config, path


def config_to_train(train_dir: str, requested: models.ModelConfig, explicit: Sequence[str],
                    start_new_model: bool = False) -> models.ModelConfig:
  """train: the configuration saved with train_dir's checkpoints when resuming, else the
  flags'. A configuration without a checkpoint beside it (a first run that failed) is not a
  model to resume. An explicit flag that contradicts the saved configuration is an error: the
  run would otherwise train another model than the command line says."""
  if start_new_model or not checkpoints.list_checkpoints(train_dir):
    return requested
  saved = checkpoints.load_saved_config(train_dir)
  if saved is None:  # a train_dir of the original TF1 code: the flags describe it
    return requested
  contradicting = _differences(saved, requested, explicit)
  if contradicting:
    raise utils.InputError(
        "%s contradicts the model trained in %s: pass --start_new_model to train a new model "
        "there, or use another --train_dir" % (", ".join(contradicting), train_dir))
  return saved


def _differences(saved: models.ModelConfig, requested: models.ModelConfig,
                 names: Sequence[str]):
  """["--name=requested (saved: value)", ...] for the names whose values differ."""
  return ["--%s=%s (saved: %s)" % (name, _flag_text(getattr(requested, name)),
                                   _flag_text(getattr(saved, name)))
          for name in names if getattr(saved, name) != getattr(requested, name)]


def warn_if_trained_differently(location: str, config: models.ModelConfig):
  """--init_from_checkpoint from one of our train_dirs: settings that change no shape (e.g.
  --gating_remove_diag) cannot be checked on the variables, so compare the configuration saved
  beside that checkpoint with the one to train."""
  path = checkpoints.find_checkpoint(location)
  saved = checkpoints.load_saved_config(os.path.dirname(path)) if path else None
  if saved is None:
    return
  differing = ["%s=%s (saved: %s)" % (name, getattr(config, name), getattr(saved, name))
               for name in models.CONFIG_FIELDS
               if getattr(config, name) != getattr(saved, name)]
  if differing:
    logging.warning("%s was trained with other model settings than the flags give: %s",
                    os.path.dirname(path), ", ".join(differing))
