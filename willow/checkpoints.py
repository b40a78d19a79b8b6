"""Finding a checkpoint in a train_dir and rebuilding the trained model from it.

eval.py, inference.py and export_model.py rebuild the model from the configuration that
train.py saved beside its checkpoints (the original re-imported the training graph, so the
model flags given to its inference.py did not matter; they do not here either). A train_dir
written by the original TF1 code has no saved configuration: the model is then built from the
command-line flags and its variables are mapped by checkpoint_import.py.
"""
import os
from typing import Optional, Sequence, Tuple

import tensorflow as tf
from absl import logging

import model_blocks
import models
import script_flags
from utils import InputError

CHECKPOINT_PREFIX = "model.ckpt"


def checkpoint_step(path: str) -> int:
  """model.ckpt-1234 -> 1234."""
  try:
    return int(os.path.basename(path).rsplit("-", 1)[1])
  except (IndexError, ValueError):
    return -1


def find_checkpoint(train_dir: str, check_point: int = -1) -> Optional[str]:
  """The latest checkpoint (check_point < 0) or model.ckpt-<check_point>; None when the
  directory has no checkpoint yet. A requested step that does not exist is an error."""
  if not tf.io.gfile.isdir(train_dir):
    raise InputError("train_dir %s does not exist" % train_dir)
  if check_point is not None and check_point >= 0:
    path = os.path.join(train_dir, "%s-%d" % (CHECKPOINT_PREFIX, check_point))
    if not tf.io.gfile.exists(path + ".index"):
      raise InputError("%s: no checkpoint for step %d (--check_point)" % (train_dir,
                                                                          check_point))
    return path
  import checkpoint_import  # pylint: disable=g-import-not-at-top (it imports this module)
  # Unlike tf.train.latest_checkpoint, also finds checkpoints of a train_dir that was moved
  # from the machine it was trained on (its state file holds that machine's paths).
  return checkpoint_import.latest_checkpoint(train_dir)


def is_tf1_checkpoint(path: str) -> bool:
  """Checkpoints of tf.train.Checkpoint carry an object graph; TF1 Saver ones do not."""
  names = {name for name, _ in tf.train.list_variables(path)}
  return "_CHECKPOINTABLE_OBJECT_GRAPH" not in names


def resolve_model_config(train_dir: str, requested: models.ModelConfig,
                         explicit: Sequence[str]) -> Tuple[models.ModelConfig, bool]:
  """(config, saved): the saved configuration if there is one, else the flags'."""
  saved = script_flags.load_saved_config(train_dir)
  if saved is None:
    return requested, False
  return script_flags.reconcile_config(saved, requested, explicit, train_dir), True


def restore_weights(model: models.BaseModel, path: str):
  """Loads model weights (not the optimizer's) from one of our checkpoints or a TF1 one."""
  import checkpoint_import  # pylint: disable=g-import-not-at-top (it imports this module)
  if is_tf1_checkpoint(path):
    checkpoint_import.load_tf1_checkpoint(model, path)
  else:
    checkpoint_import.load_our_checkpoint(model, path)


_PRECISIONS = {"float64": tf.float64, "float32": tf.float32}


def _dtype(precision: str) -> tf.DType:
  if precision not in _PRECISIONS:
    raise InputError("--inference_precision must be float64 or float32, got %r" % precision)
  return _PRECISIONS[precision]


def load_trained_model(train_dir: str, check_point: int, requested: models.ModelConfig,
                       explicit: Sequence[str], precision: str = "float64"):
  """Returns (model, config, checkpoint path) for eval/inference; errors name train_dir.

  The model computes in `precision` (see --inference_precision)."""
  _dtype(precision)  # a bad --inference_precision fails before the checkpoint search
  path = find_checkpoint(train_dir, check_point)
  if path is None:
    raise InputError("train_dir %s holds no checkpoint" % train_dir)
  model, config = build_model_to_restore(train_dir, requested, explicit, precision)
  restore_trained_weights(model, config, path)
  return model, config, path


def build_model_to_restore(train_dir: str, requested: models.ModelConfig,
                           explicit: Sequence[str], precision: str = "float64"):
  """(model, config): the model train_dir's checkpoints hold, computing in `precision`, with
  placeholder weights (zeros: no random draws) for restore_trained_weights to replace."""
  config, _ = resolve_model_config(train_dir, requested, explicit)
  dtype = _dtype(precision)
  with model_blocks.variables_for_restore(dtype):
    model = models.build_model(config)
  model.compute_dtype = dtype
  return model, config


def restore_trained_weights(model: models.BaseModel, config: models.ModelConfig, path: str):
  """Loads the checkpoint at `path` into a model from build_model_to_restore (eval.py reuses
  one model for every checkpoint it watches); errors name the checkpoint."""
  try:
    restore_weights(model, path)
  except InputError:
    raise
  except (tf.errors.OpError, AssertionError, ValueError) as e:
    raise InputError("%s: cannot restore the %s model from it (%s)" % (
        path, config.model, str(e).splitlines()[0]))
  logging.info("restored %s (%s, step %d)", path, config.model, checkpoint_step(path))
