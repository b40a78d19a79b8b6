"""The command-line contract shared by train.py, eval.py and inference.py.

Every script defines every flag of the original suite (train, eval, inference, model and loss
flags), so a README command line that hands a script a flag it never used (the original's
argparse-era tf.flags silently ignored those) still runs; a flag no script knows is an error.
Unique prefixes of flag names are expanded (`--max_step` -> `--max_steps`) as the original's
argparse-based flags did. Flags are read here and in the scripts' main functions only.
"""
import dataclasses
import functools
import json
import os
import sys
import tempfile
from typing import List, Optional, Sequence

from absl import app
from absl import flags
from absl import logging

import fileio
import models
import utils

FLAGS = flags.FLAGS
CONFIG_FILE = "model_config.json"

# Defaults that differ between the original scripts.
_SCRIPT_DEFAULTS = {
    "train": dict(batch_size=1024, num_readers=8),
    "eval": dict(batch_size=1024, num_readers=4),
    "inference": dict(batch_size=8192, num_readers=4),
}

_MODEL_FLAG_HELP = {
    "model": "Model class, looked up in frame_level_models then video_level_models.",
    "feature_names": "Comma-separated feature names (rgb,audio for frame level).",
    "feature_sizes": "Comma-separated feature dimensions, one per name.",
    "frame_features": "True: frame-level SequenceExamples; False: video-level Examples.",
    "num_classes": "Vocabulary size V (4716 for the 2017 dataset, 3862 for 2018+).",
    "iterations": "Frames sampled per video by the cluster models (and the RNNs with "
                  "*_random_sequence).",
    "sample_random_frames": "Training sampler of the cluster models: i.i.d. random frames "
                            "(True) or a random contiguous clip (False).",
    "netvlad_cluster_size": "NetVLAD clusters (audio gets half).",
    "netvlad_hidden_size": "NetVLAD/NetRVLAD hidden size.",
    "netvlad_relu": "NetVLAD hidden layer: batch norm + relu6 (else affine).",
    "netvlad_add_batch_norm": "Batch norm in NetVLADModelLF and NetFVModelLF.",
    "lightvlad": "NetVLADModelLF: use NetRVLAD (no cluster centres).",
    "vlagd": "NetVLADModelLF: use NetVLAGD (if not --lightvlad).",
    "gating": "Context gating after the hidden layer (NetVLAD, NetFV).",
    "gating_remove_diag": "Context/probability gating without the self term.",
    "fv_cluster_size": "NetFV clusters (audio gets half).",
    "fv_hidden_size": "NetFV hidden size.",
    "fv_relu": "NetFV hidden layer: batch norm + relu6 (else affine).",
    "fv_couple_weights": "NetFV centres tied to the assignment weights.",
    "fv_coupling_factor": "NetFV tie factor.",
    "dbof_cluster_size": "DBoF-family clusters (audio gets 1/8).",
    "dbof_hidden_size": "DBoF-family hidden size.",
    "dbof_relu": "DBoF-family hidden layer: batch norm + relu6 (else affine).",
    "dbof_add_batch_norm": "Batch norm in the DBoF family.",
    "dbof_activation": "DbofModelLF activation: relu (relu6), glu or none.",
    "dbof_pooling_method": "Starter DbofModel frame pooling: max or average.",
    "softdbof_maxpool": "Soft-DBoW adds an l2-normalized max pool.",
    "fc_dimred": "Gated/Soft DBoF: apply the hidden layer.",
    "lstm_cells": "LSTM units per layer.",
    "lstm_layers": "LSTM layers.",
    "lstm_random_sequence": "LSTM: subsample --iterations frames.",
    "lstm_backward": "LSTM: reverse each video's frames.",
    "gru_cells": "GRU units per layer.",
    "gru_layers": "GRU layers.",
    "gru_random_sequence": "GRU: subsample --iterations frames.",
    "gru_backward": "GRU: reverse each video's frames.",
    "video_level_classifier_model": "Classifier head: MoeModel or LogisticModel.",
    "moe_num_mixtures": "Experts per class in the MoE head.",
    "moe_l2": "L2 scale on the MoE gate and expert weights.",
    "moe_low_rank_gating": "-1: full MoE gate matrix; r > 0: rank-r gate.",
    "moe_prob_gating": "Context-gate the MoE output probabilities.",
    "moe_prob_gating_input": "prob: gate from the probabilities; else from the MoE input.",
}

# Flags the original defined but never read; accepted so old command lines keep working.
_UNUSED_INT_FLAGS = dict(netvlad_dimred=-1, gatednetvlad_dimred=1024, hidden_size=1024,
                         netvlad_hidden_size_video=1024, netvlad_hidden_size_audio=64,
                         lstm_cells_video=1024, lstm_cells_audio=128, gru_cells_video=1024,
                         gru_cells_audio=128, dbof_var_features=0)


def _definers(fv):
  """DEFINE_string/bool/integer/float bound to the FlagValues fv."""
  return tuple(functools.partial(define, flag_values=fv) for define in (
      flags.DEFINE_string, flags.DEFINE_bool, flags.DEFINE_integer, flags.DEFINE_float))


def _define_model_flags(fv):
  define_string, define_bool, define_integer, define_float = _definers(fv)
  defaults = models.ModelConfig()
  for field in dataclasses.fields(models.ModelConfig):
    name, value = field.name, getattr(defaults, field.name)
    help_text = _MODEL_FLAG_HELP[name]
    if name == "feature_names":
      define_string(name, ",".join(value), help_text)
    elif name == "feature_sizes":
      define_string(name, ",".join(str(v) for v in value), help_text)
    elif isinstance(value, bool):
      define_bool(name, value, help_text)
    elif isinstance(value, int):
      define_integer(name, value, help_text)
    elif isinstance(value, float):
      define_float(name, value, help_text)
    else:
      define_string(name, value, help_text)
  for name, value in _UNUSED_INT_FLAGS.items():
    define_integer(name, value, "Unused (defined by the original, accepted).")


def define_flags(script: str, fv=None):
  """Defines every flag of the suite, with `script`'s defaults where the originals differ."""
  fv = FLAGS if fv is None else fv
  d = _SCRIPT_DEFAULTS[script]
  define_string, define_bool, define_integer, define_float = _definers(fv)
  _define_model_flags(fv)
  # Shared.
  define_string("train_dir", os.path.join(tempfile.gettempdir(), "yt8m_model"),
                      "Checkpoints, saved model configuration, summaries and exports.")
  define_integer("batch_size", d["batch_size"],
                       "Examples per step and per replica (train), or per batch (eval, "
                       "inference).")
  define_integer("num_readers", d["num_readers"], "Files read in parallel.")
  define_string("label_loss", "CrossEntropyLoss",
                      "Loss class in losses.py: CrossEntropyLoss, HingeLoss or SoftmaxLoss.")
  define_float("alpha", 0.5, "CrossEntropyLoss weight of the positive labels.")
  define_integer("check_point", -1,
                       "eval/inference: step of the checkpoint to use; < 0 means the latest.")
  define_string("inference_precision", "float64",
                "eval/inference/export compute precision: float64 (scores independent of batch "
                "size and composition to the last printed digit) or float32 (about twice as "
                "fast; a score may then differ by 1e-6 between batch sizes).")
  define_integer("top_k", 20, "eval: predictions per video kept for GAP; inference: "
                       "label/score pairs written per video.")
  # train.py.
  define_string("train_data_pattern", "", "Glob of the training TFRecords.")
  define_bool("start_new_model", False,
                    "Delete the checkpoints in train_dir and start from scratch.")
  define_float("regularization_penalty", 1.0, "Multiplier on the regularization loss.")
  define_float("base_learning_rate", 0.001, "Initial learning rate.")
  define_float("learning_rate_decay", 0.9, "Staircase decay factor.")
  define_float("learning_rate_decay_examples", 4000000,
                     "Examples (global) between two learning-rate decays.")
  define_integer("num_epochs", 15, "Passes over the training data, then stop.")
  define_integer("max_steps", None, "Stop once the global step reaches this value.")
  define_integer("export_model_steps", 10000, "Steps between SavedModel exports.")
  define_string("optimizer", "AdamOptimizer",
                      "Optimizer: a TF1 name (AdamOptimizer, GradientDescentOptimizer, ...) or "
                      "a Keras one (Adam, SGD, ...).")
  define_float("clip_gradient_norm", 1.0,
                     "Clip each gradient tensor to this L2 norm (0 disables).")
  define_bool("log_device_placement", False, "Log the device of every op.")
  define_integer("bn_calibration_batches", 100,
                       "Training batches over which batch-norm population statistics are "
                       "re-estimated before each checkpoint (0 keeps the moving averages).")
  define_integer("save_checkpoint_secs", 900, "Seconds between checkpoints.")
  define_integer("save_checkpoint_steps", 0, "Steps between checkpoints (0: by time).")
  define_integer("keep_checkpoints", 5, "Checkpoints kept in train_dir (0 keeps all).")
  define_integer("log_steps", 10, "Steps between progress lines.")
  define_integer("seed", None, "Random seed (initialization, sampling, shuffling).")
  define_string("jit_compile", "auto",
                "Compile with XLA: auto, true or false. train: the train step (auto: on one "
                "replica without --seed, since XLA ignores the samplers' op seeds); inference: "
                "the forward pass (auto: only with --inference_precision=float32, since XLA "
                "gives up scores identical across batch sizes, and not for a hidden layer of "
                "65536 inputs or more, whose product XLA runs at half TensorFlow's rate).")
  define_string("mixed_precision", "none",
                "Training compute dtype: none (float32) or bf16 (variables, loss and batch-norm "
                "statistics stay float32). fp16 is not supported (CPU training; no loss scaling).")
  define_string("distribution_strategy", "auto",
                      "auto, default, mirrored or multi_worker.")
  define_string("init_from_checkpoint", "",
                      "Start from the weights of this train_dir (ours or the original's TF1).")
  # eval.py.
  define_string("eval_data_pattern", "", "Glob of the evaluation TFRecords.")
  define_bool("run_once", False, "eval: evaluate one checkpoint and exit.")
  define_integer("eval_interval_secs", 60, "eval: seconds between checks for a new "
                       "checkpoint.")
  define_string("predictions_csv", "",
                "eval: score this predictions CSV (inference.py's or file_averaging.py's) "
                "against the labels of --eval_data_pattern instead of a checkpoint.")
  # inference.py.
  define_string("input_data_pattern", "", "Glob of the TFRecords to predict.")
  define_string("output_file", "", "CSV to write.")
  define_integer("task_index", None, "inference: this process's part of the input.")
  define_integer("num_tasks", None, "inference: number of parts the input is split in.")
  define_bool("skip_corrupt_records", False,
                    "inference: skip unreadable records (and count them) instead of failing.")
  # Segment-rated data (the 2019 challenge; the starter code's flag names). See segments.py.
  define_bool("segment_labels", False,
              "Segment-rated frame-level records: train and eval on each rated segment "
              "(labels weighted: unrated classes are unknown); inference scores every segment "
              "and writes Class,Segments.")
  define_integer("segment_size", 5, "Frames per segment (--segment_labels).", lower_bound=1)
  define_integer("segment_max_pred", 100000,
                 "--segment_labels: segments per class kept by inference and ranked by the "
                 "eval metric.", lower_bound=1)
  define_string("segment_label_ids_file", "",
                "--segment_labels: file of the class ids to predict (inference) and evaluate "
                "(eval), one per line; empty: every class.")


def expand_flag_prefixes(argv: Sequence[str], known: Sequence[str]) -> List[str]:
  """Rewrites `--prefix[=v]` to `--full_name[=v]` when prefix names exactly one flag.

  As the original's argparse-based flags: `--noprefix` stands for `--nofull_name` (a boolean
  set to false), an exact name always wins, and a prefix of several names is an error
  (flags.Error) naming them.
  """
  known = set(known)
  out = list(argv[:1])
  for arg in argv[1:]:
    if arg == "--":
      out.extend(argv[len(out):])  # absl's end of flags: the rest is positional
      break
    if arg.startswith("--") and len(arg) > 2:
      name, sep, value = arg[2:].partition("=")
      bare = name[2:] if name.startswith("no") and name[2:] in known else name
      if bare not in known:
        matches = sorted(k for k in known if k.startswith(name))
        if name.startswith("no"):
          matches += sorted("no" + k for k in known if k.startswith(name[2:]))
        if len(matches) == 1:
          arg = "--" + matches[0] + sep + value
        elif matches:
          raise flags.Error("ambiguous flag --%s: could be %s" % (
              name, ", ".join("--" + m for m in matches)))
    out.append(arg)
  return out


def parse_flags(argv):
  """absl flags parser with the original's prefix matching."""
  try:
    return FLAGS(expand_flag_prefixes(argv, list(FLAGS)))
  except flags.Error as e:
    sys.stderr.write("error: %s\n" % e)
    sys.exit(1)


def run(main):
  """app.run with prefix matching; a user-facing error (bad input, a diverged loss) ends the
  script with one line and exit status 1."""
  def guarded_main(argv):
    try:
      return main(argv)
    except (utils.InputError, FloatingPointError) as e:
      logging.flush()
      sys.stderr.write("error: %s\n" % e)
      sys.exit(1)
  app.run(guarded_main, flags_parser=parse_flags)


def require_flags(nonempty=(), positive=(), fv=None):
  """One-line errors for string flags left empty and numeric flags that are not positive."""
  fv = FLAGS if fv is None else fv
  for name in nonempty:
    if not fv[name].value:
      raise utils.InputError("--%s is empty" % name)
  for name in positive:
    if fv[name].value <= 0:
      raise utils.InputError("--%s must be positive, got %s" % (name, fv[name].value))


def model_config_from_flags(fv=None) -> models.ModelConfig:
  fv = FLAGS if fv is None else fv
  names, sizes = utils.parse_feature_list(fv.feature_names, fv.feature_sizes)
  values = {f: fv[f].value for f in models.CONFIG_FIELDS
            if f not in ("feature_names", "feature_sizes")}
  config = models.ModelConfig(feature_names=names, feature_sizes=sizes, **values)
  models.get_model_class(config.model)  # an unknown model is an error before any work
  return config


def explicit_model_flags(fv=None) -> List[str]:
  fv = FLAGS if fv is None else fv
  return [f for f in models.CONFIG_FIELDS if fv[f].present]


def saved_config_path(train_dir: str) -> str:
  return os.path.join(train_dir, CONFIG_FILE)


def load_saved_config(train_dir: str) -> Optional[models.ModelConfig]:
  import tensorflow as tf  # lazily: flag parsing should not need TensorFlow
  path = saved_config_path(train_dir)
  if not tf.io.gfile.exists(path):
    return None
  try:
    with tf.io.gfile.GFile(path) as f:
      config = models.ModelConfig.from_json(f.read())
  except (ValueError, TypeError, AttributeError) as e:
    raise utils.InputError("%s: unreadable model configuration (%s)" % (path, e))
  try:
    models.get_model_class(config.model)
  except utils.InputError as e:
    raise utils.InputError("%s: %s" % (path, e))
  return config


def save_config(train_dir: str, config: models.ModelConfig):
  fileio.atomic_write_text(saved_config_path(train_dir), config.to_json() + "\n")


# Model flags that describe the data rather than the architecture: a trained model reads only
# the features (and vocabulary) it was trained on.
DATA_FIELDS = ("frame_features", "feature_names", "feature_sizes", "num_classes")


def reconcile_config(saved: models.ModelConfig, requested: models.ModelConfig,
                     explicit: Sequence[str], train_dir: str) -> models.ModelConfig:
  """The saved configuration wins; explicit flags that disagree get one warning line, except
  flags describing the data (DATA_FIELDS), for which a disagreement cannot work: an error."""
  contradicting = ["--%s=%s (saved: %s)" % (name, _flag_text(getattr(requested, name)),
                                             _flag_text(getattr(saved, name)))
                   for name in explicit
                   if name in DATA_FIELDS and getattr(saved, name) != getattr(requested, name)]
  if contradicting:
    raise utils.InputError(
        "%s contradicts the model configuration saved in %s: a trained model reads only the "
        "data it was trained on; drop the flag or use another --train_dir"
        % (", ".join(contradicting), train_dir))
  differing = ["--%s=%s (saved: %s)" % (name, _flag_text(getattr(requested, name)),
                                         _flag_text(getattr(saved, name)))
               for name in explicit if getattr(saved, name) != getattr(requested, name)]
  if differing:
    logging.warning("using the model configuration saved in %s; ignoring %s", train_dir,
                    ", ".join(differing))
  return saved


def _flag_text(value):
  if isinstance(value, (tuple, list)):
    return ",".join(str(v) for v in value)
  return json.dumps(value) if isinstance(value, str) else str(value)
