"""The checkpoints of a train_dir and the model configuration saved beside them: finding
them, reading and writing model_config.json, and rebuilding the trained model from a checkpoint.

eval.py, inference.py and export_model.py rebuild the model from the configuration that
train.py saved beside its checkpoints (willow/configuration.py decides which configuration
that is). A train_dir written by the original TF1 code has no saved configuration: the model is
then built from the command-line flags and its variables are mapped by
willow/checkpoint_import.py.
"""
import os
from typing import List, Optional

import tensorflow as tf
from absl import logging

from utils import InputError
from willow import checkpoint_import
from willow import fileio
from willow import model_blocks
from willow import models

CHECKPOINT_PREFIX = "model.ckpt"
# The ModelConfig of the model a train_dir's checkpoints hold, beside them.
CONFIG_FILE = "model_config.json"
PRECISIONS = {"float64": tf.float64, "float32": tf.float32}


def checkpoint_step(path: str) -> int:
  """model.ckpt-1234 -> 1234 (-1 for a name without a step)."""
  try:
    return int(os.path.basename(path).rsplit("-", 1)[1])
  except (IndexError, ValueError):
    return -1


def _exists(prefix: str) -> bool:
  return tf.io.gfile.exists(prefix + ".index")


def list_checkpoints(train_dir: str) -> List[str]:
  """The checkpoints of a train_dir, newest first: those its `checkpoint` state file names or,
  when that file is missing or its latest entry is gone, every model.ckpt-N by step.

  Also finds them in a train_dir that was moved or downloaded: TF1 Savers wrote absolute paths
  of the machine that trained into the state file, so each name is looked up beside it too.
  """
  state = tf.train.get_checkpoint_state(train_dir)
  named = list(state.all_model_checkpoint_paths) if state else []
  if state and state.model_checkpoint_path and state.model_checkpoint_path not in named:
    named.append(state.model_checkpoint_path)
  found = []
  for name in reversed(named):
    for candidate in (name, os.path.join(train_dir, os.path.basename(name))):
      if _exists(candidate):
        found.append(candidate)
        break
    else:
      if name == named[-1]:  # the latest is gone: the state file cannot be trusted
        found = []
        break
  if found:
    return found
  prefixes = [p[:-len(".index")] for p in tf.io.gfile.glob(
      os.path.join(train_dir, CHECKPOINT_PREFIX + "-*.index"))]
  return sorted((p for p in prefixes if checkpoint_step(p) >= 0), key=checkpoint_step,
                reverse=True)


def find_checkpoint(location: str, step: int = -1) -> Optional[str]:
  """The checkpoint to use: `location` is a train_dir (its latest checkpoint, or
  model.ckpt-<step> when step >= 0; None when it holds none yet) or a checkpoint prefix.

  Raises:
    InputError: location is neither a directory nor a checkpoint prefix, or the requested
      step has no checkpoint.
  """
  if not tf.io.gfile.isdir(location):
    if _exists(location):
      return location
    raise InputError("%s does not exist (neither a train_dir nor a checkpoint prefix: no "
                     "%s.index)" % (location, location))
  if step is not None and step >= 0:
    path = os.path.join(location, "%s-%d" % (CHECKPOINT_PREFIX, step))
    if not _exists(path):
      raise InputError("%s: no checkpoint for step %d (--check_point)" % (location, step))
    return path
  found = list_checkpoints(location)
  return found[0] if found else None


def train_dir_of(location: str) -> str:
  """The train_dir of a find_checkpoint location: itself, or a checkpoint prefix's directory."""
  return location if tf.io.gfile.isdir(location) else os.path.dirname(location)


def require_checkpoint(location: str, step: int = -1) -> str:
  """find_checkpoint, where a train_dir without a checkpoint is an error."""
  path = find_checkpoint(location, step)
  if path is None:
    raise InputError("train_dir %s holds no checkpoint" % location)
  return path



def saved_config_path(train_dir: str) -> str:
  return os.path.join(train_dir, CONFIG_FILE)


def load_saved_config(train_dir: str) -> Optional[models.ModelConfig]:
  """The configuration saved in train_dir, or None; a damaged file is an error naming it."""
  path = saved_config_path(train_dir)
  if not tf.io.gfile.exists(path):
    return None
  try:
    with tf.io.gfile.GFile(path) as f:
      config = models.ModelConfig.from_json(f.read())
  except (ValueError, TypeError, AttributeError) as e:
    raise InputError("%s: unreadable model configuration (%s)" % (path, e))
  try:
    models.get_model_class(config.model)
  except InputError as e:
    raise InputError("%s: %s" % (path, e))
  return config


def save_config(train_dir: str, config: models.ModelConfig):
  fileio.atomic_write_text(saved_config_path(train_dir), config.to_json() + "\n")


def restore_weights(model: models.BaseModel, path: str):
  """Loads model weights (not the optimizer's) from one of our checkpoints or a TF1 one."""
  if checkpoint_import.is_tf1_checkpoint(path):
    checkpoint_import.load_tf1_checkpoint(model, path)
  else:
    checkpoint_import.load_our_checkpoint(model, path)


def initialize_from(model: tf.Module, location: str) -> str:
  """--init_from_checkpoint: loads weights and batch-norm statistics from a train_dir of the
  original TF1 code or of ours, or from a checkpoint prefix of either. The optimizer and the
  step counter are not loaded. Returns the checkpoint path."""
  path = require_checkpoint(location)
  if checkpoint_import.is_tf1_checkpoint(path):
    count, origin = checkpoint_import.load_tf1_checkpoint(model, path), "the original TF1 code"
  else:
    count, origin = checkpoint_import.load_our_checkpoint(model, path), "willow-tf2"
  statistics = sum(1 for v in model.variables if not v.trainable)
  logging.info("initialized %s from %s (written by %s): %d variables (%s values), "
               "%d of them batch-norm statistics; the optimizer and the step start afresh",
               type(model).__name__, path, origin, count,
               "{:,}".format(sum(v.shape.num_elements() for v in model.variables)), statistics)
  return path


def precision_dtype(precision: str) -> tf.DType:
  if precision not in PRECISIONS:
    raise InputError("--inference_precision must be float64 or float32, got %r" % precision)
  return PRECISIONS[precision]


def build_model_to_restore(config: models.ModelConfig, precision: str = "float64"):
  """The model of `config`, computing in `precision` (see --inference_precision), with
  placeholder weights (zeros: no random draws) for restore_trained_weights to replace."""
  dtype = precision_dtype(precision)
  with model_blocks.variables_for_restore(dtype):
    model = models.build_model(config)
  model.compute_dtype = dtype
  return model


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


def restore_model(config: models.ModelConfig, path: str, precision: str = "float64"):
  """The model of `config` with the weights of the checkpoint at `path`, computing in
  `precision`; errors name the checkpoint."""
  model = build_model_to_restore(config, precision)
  restore_trained_weights(model, config, path)
  return model
