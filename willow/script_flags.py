"""The command line of train.py, eval.py, inference.py and export_model.py: every flag, its
group and the scripts that read it, the parser, and the turning of flags into the library's
parameter objects. With the scripts, the only module that touches absl's FLAGS.

Every script defines every flag of the original suite, so a README command line that hands a
script a flag it never reads (the original's argparse-era tf.flags silently ignored those) still
runs; a flag no script knows is an error, with the nearest valid name. `--help` lists only the
flags the script reads (absl key flags of the script), grouped. Unique prefixes of flag names
are expanded (`--max_step` -> `--max_steps`) as the original's argparse-based flags did.
"""
import dataclasses
import difflib
import functools
import os
import re
import sys
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple

from absl import app
from absl import flags
from absl import logging

import losses
import utils
from willow import checkpoints
from willow import distribution
from willow import model_blocks
from willow import models
from willow import tf_env
from willow import train_step
from willow import training

FLAGS = flags.FLAGS

TRAIN, EVAL, INFERENCE, EXPORT = "train", "eval", "inference", "export"
SCRIPTS = (TRAIN, EVAL, INFERENCE, EXPORT)
READING = (TRAIN, EVAL, INFERENCE)  # the scripts that read records
RESTORING = (EVAL, INFERENCE, EXPORT)  # the scripts that restore a trained model

# --help groups, in order. "run" is how the script runs: training, evaluation, ...
GROUPS = ("data", "model", "run", "output")
_GROUP_TITLES = {"data": "Data", "model": "Model", "output": "Output"}
_RUN_TITLES = {TRAIN: "Training", EVAL: "Evaluation", INFERENCE: "Inference", EXPORT: "Export"}

# Defaults that differ between the original scripts.
_SCRIPT_DEFAULTS = {
    TRAIN: dict(batch_size=1024, num_readers=8),
    EVAL: dict(batch_size=1024, num_readers=4),
    INFERENCE: dict(batch_size=8192, num_readers=4),
    EXPORT: dict(batch_size=8192, num_readers=4),
}


@dataclasses.dataclass(frozen=True)
class Usage:
  """Who reads a flag, and where their --help lists it: in `group`, or in the group
  `group_by_script` gives a script."""
  group: str
  scripts: Tuple[str, ...]
  help: str
  group_by_script: Tuple[Tuple[str, str], ...] = ()

  def group_of(self, script: str) -> str:
    return dict(self.group_by_script).get(script, self.group)


# name -> Usage of every flag define_flags defines; flags absent here are accepted, not shown.
USAGE: Dict[str, Usage] = {}


def _define(kind: str, name: str, default, help_text: str, group: str, scripts, fv,
            group_by_script=(), **kwargs):
  """flags.DEFINE_<kind>, recording who reads the flag."""
  getattr(flags, "DEFINE_" + kind)(name=name, default=default, help=help_text, flag_values=fv,
                                   **kwargs)
  USAGE[name] = Usage(group, tuple(scripts), help_text, tuple(group_by_script))


# Model flags: one per ModelConfig field, read by every script (eval, inference and export use
# them when train_dir has no saved configuration, e.g. a train_dir of the original).
_MODEL_FLAG_HELP = {
    "model": "Model class (frame_level_models.py, video_level_models.py).",
    "feature_names": "Comma-separated feature names (rgb,audio for frame level).",
    "feature_sizes": "Comma-separated feature dimensions, one per name.",
    "frame_features": "True: frame-level SequenceExamples; False: video-level Examples.",
    "num_classes": "Vocabulary size V (4716 for the 2017 dataset, 3862 for 2018+).",
    "iterations": "Frames sampled per video (cluster models, RNNs with sampling).",
    "sample_random_frames": "Cluster models sample i.i.d. frames (else a random clip).",
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
    "dbof_activation": "DbofModelLF activation (relu is relu6).",
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
    "video_level_classifier_model": "Classifier head.",
    "moe_num_mixtures": "Experts per class in the MoE head.",
    "moe_l2": "L2 scale on the MoE gate and expert weights.",
    "moe_low_rank_gating": "-1: full MoE gate matrix; r > 0: rank-r gate.",
    "moe_prob_gating": "Context-gate the MoE output probabilities.",
    "moe_prob_gating_input": "prob: gate from the probabilities; else from the MoE input.",
}
# Model flags that describe the data: listed under "data".
_DATA_MODEL_FLAGS = ("frame_features", "feature_names", "feature_sizes", "num_classes")
# Choices of the string model flags (the others are free or take numbers).
_MODEL_FLAG_CHOICES = {
    "dbof_activation": model_blocks.DBOF_ACTIVATIONS,
    "video_level_classifier_model": ("LogisticModel", "MoeModel"),
}
# Sizes and counts that must be at least 1.
_POSITIVE_MODEL_FLAGS = (
    "num_classes", "iterations", "netvlad_cluster_size", "netvlad_hidden_size",
    "fv_cluster_size", "fv_hidden_size", "dbof_cluster_size", "dbof_hidden_size", "lstm_cells",
    "lstm_layers", "gru_cells", "gru_layers", "moe_num_mixtures")

# Flags the original defined but never read; accepted so old command lines keep working.
_UNUSED_INT_FLAGS = dict(netvlad_dimred=-1, gatednetvlad_dimred=1024, hidden_size=1024,
                         netvlad_hidden_size_video=1024, netvlad_hidden_size_audio=64,
                         lstm_cells_video=1024, lstm_cells_audio=128, gru_cells_video=1024,
                         gru_cells_audio=128, dbof_var_features=0)


def _define_model_flags(fv):
  defaults = models.ModelConfig()
  for field in dataclasses.fields(models.ModelConfig):
    name, value = field.name, getattr(defaults, field.name)
    group = "data" if name in _DATA_MODEL_FLAGS else "model"
    define = lambda kind, default, **kwargs: _define(
        kind, name, default, _MODEL_FLAG_HELP[name], group, SCRIPTS, fv, **kwargs)
    if name == "model":
      define("enum", value, enum_values=sorted(models.registered_models()))
    elif name in _MODEL_FLAG_CHOICES:
      define("enum", value, enum_values=list(_MODEL_FLAG_CHOICES[name]))
    elif name in ("feature_names", "feature_sizes"):
      define("string", ",".join(str(v) for v in value))
    elif isinstance(value, bool):
      define("bool", value)
    elif isinstance(value, int):
      define("integer", value, lower_bound=1 if name in _POSITIVE_MODEL_FLAGS else None)
    elif isinstance(value, float):
      define("float", value)
    else:
      define("string", value)
  for name, value in _UNUSED_INT_FLAGS.items():
    flags.DEFINE_integer(name, value, "Unused (defined by the original, accepted).",
                         flag_values=fv)


def define_flags(script: str, fv=None):
  """Defines every flag of the suite, with `script`'s defaults where the originals differ."""
  fv = FLAGS if fv is None else fv
  d = _SCRIPT_DEFAULTS[script]
  _define_model_flags(fv)

  def define(kind, name, default, help_text, group, scripts, **kwargs):
    _define(kind, name, default, help_text, group, scripts, fv, **kwargs)

  define("string", "train_dir", os.path.join(tempfile.gettempdir(), "yt8m_model"),
         "Checkpoints, saved model configuration, summaries and exports.", "output", SCRIPTS,
         group_by_script=[(script, "model") for script in RESTORING])
  define("integer", "batch_size", d["batch_size"],
         "Examples per batch (train: per step and replica).", "data", READING, lower_bound=1)
  define("integer", "num_readers", d["num_readers"], "Files read in parallel.", "data",
         READING, lower_bound=1)
  define("enum", "label_loss", "CrossEntropyLoss", "Loss (losses.py).", "run", (TRAIN, EVAL),
         enum_values=sorted(losses.LOSSES))
  define("float", "alpha", 0.5, "CrossEntropyLoss weight of the positive labels.", "run",
         (TRAIN, EVAL))
  define("integer", "check_point", -1, "Step of the checkpoint to use; < 0: the latest.",
         "model", RESTORING)
  define("enum", "inference_precision", "float64",
         "float64: scores exact across batch sizes; float32: faster.",
         "run", RESTORING, enum_values=list(checkpoints.PRECISIONS))
  define("integer", "top_k", 20, "Predictions kept per video (eval: for GAP; inference: "
         "written).", "output", RESTORING, lower_bound=1)
  define("bool", "verbose", False,
         "Show TensorFlow's own log lines (also: TF_CPP_MIN_LOG_LEVEL=0).", "output", SCRIPTS)
  # train.py.
  define("string", "train_data_pattern", "", "Glob of the training TFRecords.", "data",
         (TRAIN,))
  define("bool", "start_new_model", False, "Delete train_dir and start from scratch.",
         "run", (TRAIN,))
  define("float", "regularization_penalty", 1.0, "Multiplier on the regularization loss.",
         "run", (TRAIN,))
  define("float", "base_learning_rate", 0.001, "Initial learning rate.", "run", (TRAIN,))
  define("float", "learning_rate_decay", 0.9, "Staircase decay factor.", "run", (TRAIN,))
  define("float", "learning_rate_decay_examples", 4000000,
         "Examples (global) between two learning-rate decays.", "run", (TRAIN,))
  define("integer", "num_epochs", 15, "Passes over the training data, then stop.", "run",
         (TRAIN,), lower_bound=1)
  define("integer", "max_steps", None, "Stop once the global step reaches this value.", "run",
         (TRAIN,), lower_bound=0)
  define("integer", "export_model_steps", 10000, "Steps between SavedModel exports (0: none).",
         "output", (TRAIN,), lower_bound=0)
  define("enum", "optimizer", "AdamOptimizer",
         "A TF1 optimizer (AdamOptimizer, ...) or a Keras one (Adam, ...).", "run",
         (TRAIN,), enum_values=train_step.OPTIMIZER_NAMES)
  define("float", "clip_gradient_norm", 1.0,
         "Clip each gradient tensor to this L2 norm (0 disables).", "run", (TRAIN,))
  define("bool", "log_device_placement", False, "Log the device of every op.", "run",
         (TRAIN,))
  define("integer", "bn_calibration_batches", 100,
         "Batches re-estimating batch-norm statistics per save (0: none).",
         "run", (TRAIN,), lower_bound=0)
  define("integer", "save_checkpoint_secs", 900, "Seconds between checkpoints.", "output",
         (TRAIN,), lower_bound=0)
  define("integer", "save_checkpoint_steps", 0, "Steps between checkpoints (0: by time).",
         "output", (TRAIN,), lower_bound=0)
  define("integer", "keep_checkpoints", 5, "Checkpoints kept in train_dir (0: all).",
         "output", (TRAIN,), lower_bound=0)
  define("integer", "log_steps", 10, "Steps between progress lines.", "output", (TRAIN,),
         lower_bound=1)
  define("integer", "seed", None, "Random seed (initialization, sampling, shuffling).", "run",
         (TRAIN,))
  define("enum", "jit_compile", "auto",
         "XLA for the train step / forward pass (auto: where it pays).", "run",
         (TRAIN, INFERENCE), enum_values=list(utils.JIT_COMPILE_MODES), case_sensitive=False)
  define("enum", "mixed_precision", "none",
         "Compute dtype: none (float32) or bf16 (variables stay float32).", "run",
         (TRAIN,), enum_values=list(train_step.COMPUTE_DTYPES))
  define("enum", "distribution_strategy", "auto",
         "tf.distribute strategy (auto: from TF_CONFIG and the GPUs).", "run", (TRAIN,),
         enum_values=list(distribution.STRATEGIES))
  define("string", "init_from_checkpoint", "",
         "Start from the weights of this train_dir (or TF1 original's).", "run",
         (TRAIN,))
  # eval.py.
  define("string", "eval_data_pattern", "",
         "Glob of the evaluation TFRecords (also read while training).", "data",
         (TRAIN, EVAL))
  define("integer", "eval_every_n_steps", 0,
         "Steps between evaluations while training (0: only at the end).", "run",
         (TRAIN,), lower_bound=0)
  define("bool", "run_once", False, "Evaluate one checkpoint and exit.", "run", (EVAL,))
  define("integer", "eval_interval_secs", 60, "Seconds between checks for a new checkpoint.",
         "run", (EVAL,), lower_bound=0)
  define("string", "predictions_csv", "",
         "Score this predictions CSV against the labels (no model).", "data", (EVAL,))
  # inference.py.
  define("string", "input_data_pattern", "", "Glob of the TFRecords to predict.", "data",
         (INFERENCE,))
  define("string", "output_file", "", "CSV to write.", "output", (INFERENCE,))
  define("integer", "task_index", None, "This process's part of the input (0-based).", "data",
         (INFERENCE,), lower_bound=0)
  define("integer", "num_tasks", None, "Number of parts the input is split in.", "data",
         (INFERENCE,), lower_bound=1)
  define("bool", "skip_corrupt_records", False,
         "Skip unreadable records (and count them) instead of failing.", "data", (INFERENCE,))
  define("bool", "merge_parts", False,
         "Join the <output_file>.part-*-of-* of --num_tasks runs, exit.", "output",
         (INFERENCE,))
  # Segment-rated data (the 2019 challenge; the starter code's flag names): willow/segments.py.
  define("bool", "segment_labels", False,
         "Segment-rated records: one example per segment (see docs).", "data", READING)
  define("integer", "segment_size", 5, "Frames per segment (--segment_labels).", "data",
         READING, lower_bound=1)
  define("integer", "segment_max_pred", 100000,
         "Segments per class kept (inference) and ranked (eval).", "output", (EVAL, INFERENCE),
         lower_bound=1)
  define("string", "segment_label_ids_file", "",
         "File of the class ids to predict and evaluate (empty: all).", "data",
         (EVAL, INFERENCE))
  # export_model.py.
  define("string", "export_dir", "",
         "SavedModel directory (default: <train_dir>/export/step_<N>).", "output",
         (EXPORT,))
  _validate_feature_lists(fv)


def _validate_feature_lists(fv):
  """--feature_names and --feature_sizes must pair up (one line naming both on error)."""
  def check(values):
    try:
      utils.parse_feature_list(values["feature_names"], values["feature_sizes"])
    except utils.InputError as e:
      raise flags.ValidationError(str(e))
    return True
  flags.register_multi_flags_validator(["feature_names", "feature_sizes"], check,
                                       flag_values=fv)


def script_flag_names(script: str) -> List[str]:
  """The flags `script` reads, in definition order."""
  return [name for name, usage in USAGE.items() if script in usage.scripts]


def declare_key_flags(script: str, fv=None):
  """Makes the flags `script` reads key flags of the running script (sys.argv[0]), as absl
  counts them (--helpxml marks them); the other flags stay defined and accepted."""
  fv = FLAGS if fv is None else fv
  for name in script_flag_names(script):
    fv.register_key_flag_for_module(sys.argv[0], fv[name])


# ----------------------------------------------------------------------------------------
# --help.

HELP_ARGS = ("--help", "-help", "--helpshort", "-h", "-?")


def help_text(script: str, doc: str, fv=None) -> str:
  """The script's docstring, then the flags it reads by group, each on one line with its
  default (and its choices, when they fit)."""
  fv = FLAGS if fv is None else fv
  names = script_flag_names(script)
  width = min(max(len(_flag_with_default(fv[n])) for n in names), _HELP_NAME_WIDTH)
  lines = [(doc or "").strip(), ""]
  for group in GROUPS:
    in_group = [n for n in names if USAGE[n].group_of(script) == group]
    if in_group:
      lines.append((_RUN_TITLES[script] if group == "run" else _GROUP_TITLES[group]) + ":")
      lines += [_help_line(fv[n], width) for n in in_group] + [""]
  lines.append("Flags of the other scripts are accepted and ignored; --helpfull lists them all.")
  return "\n".join(lines) + "\n"


_HELP_NAME_WIDTH = 32
_HELP_LINE_WIDTH = 100


def _help_line(flag, width: int) -> str:
  line = "  %-*s  %s" % (width, _flag_with_default(flag), USAGE[flag.name].help)
  choices = getattr(flag.parser, "enum_values", None)
  with_choices = "%s [%s]" % (line, "|".join(choices)) if choices else line
  return with_choices if len(with_choices) <= _HELP_LINE_WIDTH else line


def _flag_with_default(flag) -> str:
  if flag.default is None:
    return "--%s" % flag.name
  if isinstance(flag.default, bool):
    return "--%s=%s" % (flag.name, str(flag.default).lower())
  return "--%s=%s" % (flag.name, flag.default if flag.default != "" else "''")


# ----------------------------------------------------------------------------------------
# Parsing.

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


def parse(argv: Sequence[str], fv=None, script: Optional[str] = None) -> List[str]:
  """absl parsing with the original's prefix matching; a bad command line raises
  utils.InputError with one line, naming the nearest valid flag or value."""
  fv = FLAGS if fv is None else fv
  try:
    return fv(expand_flag_prefixes(argv, list(fv)))
  except flags.Error as e:
    raise utils.InputError(_explain(e, fv, script))


def _explain(error: flags.Error, fv, script: Optional[str]) -> str:
  """absl's message, with the nearest valid flag (or value of a choice flag) when the user
  mistyped one; one line."""
  message = str(error).strip().splitlines()[0]
  names = script_flag_names(script) if script else list(fv)
  if isinstance(error, flags.UnrecognizedFlagError):
    name = error.flagname
    return "unknown flag --%s%s" % (name, _did_you_mean(name, names, "--"))
  ambiguous = re.match(r"ambiguous flag --([\w-]+): could be (.*)$", message)
  if ambiguous:
    name, candidates = ambiguous.groups()
    others = [n for n in names if "--" + n not in candidates.split(", ")]
    return message + _did_you_mean(name, others, "--")
  choice = re.match(r"flag --(\w+)=(.*?): value should be one of <", message)
  if choice and choice.group(1) in fv:
    name, value = choice.groups()
    values = fv[name].parser.enum_values
    return "--%s=%s is not one of %s%s" % (name, value, ", ".join(values),
                                           _did_you_mean(value, values, ""))
  validator = re.match(r"flags? [^:]*: (--.*)$", message)  # a validator names the flags itself
  return validator.group(1) if validator else message


def _did_you_mean(word: str, candidates: Sequence[str], prefix: str) -> str:
  """'; did you mean <prefix><nearest>?' (case ignored), or '' when nothing is near."""
  lowered = {c.lower(): c for c in candidates}
  near = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
  return "; did you mean %s%s?" % (prefix, lowered[near[0]]) if near else ""


def parse_flags(argv, script: Optional[str] = None):
  """app.run's flags parser: --help prints the script's own flags (exit 0), a bad command
  line is one `error:` line (exit 1)."""
  if script and any(arg in HELP_ARGS for arg in argv[1:]):
    sys.stdout.write(help_text(script, sys.modules["__main__"].__doc__))
    sys.exit(0)
  try:
    return parse(argv, script=script)
  except utils.InputError as e:
    sys.stderr.write("error: %s\n" % e)
    sys.exit(1)


def run(main, script: str):
  """Defines the flags, then app.run with prefix matching; a user-facing error (bad input, a
  diverged loss) ends the script with one line and exit status 1."""
  define_flags(script)
  declare_key_flags(script)

  def guarded_main(argv):
    if FLAGS.verbose:  # e.g. from a --flagfile, which willow/tf_env.py does not read
      tf_env.set_tensorflow_verbosity(True)
    try:
      return main(argv)
    except (utils.InputError, FloatingPointError) as e:
      logging.flush()
      sys.stderr.write("error: %s\n" % e)
      sys.exit(1)
  app.run(guarded_main, flags_parser=functools.partial(parse_flags, script=script))


# How a run talks, not what it computes: left out of the flagfile of a run.
_CONSOLE_FLAGS = ("verbose",)


def flagfile_text(script: str, fv=None, config: Optional[models.ModelConfig] = None) -> str:
  """The flags `script` read and their values, in absl's flagfile format (one --name=value a
  line): `python <script>.py --flagfile=FILE` runs with them again. The model flags are those
  of `config` when given (the configuration a resumed run really trained)."""
  fv = FLAGS if fv is None else fv
  values = {name: fv[name].value for name in script_flag_names(script)
            if name not in _CONSOLE_FLAGS}
  if config is not None:
    values.update({name: _flag_value(getattr(config, name)) for name in models.CONFIG_FIELDS})
  lines = ["--%s" % name if value is True else "--no%s" % name if value is False
           else "--%s=%s" % (name, value) for name, value in values.items() if value is not None]
  return "# The flags of this %s.py run: python %s.py --flagfile=<this file>\n%s\n" % (
      script, script, "\n".join(lines))


def _flag_value(value):
  """A ModelConfig value as its flag holds it (feature lists are comma-separated)."""
  return ",".join(str(v) for v in value) if isinstance(value, tuple) else value


def require_flags(*names: str, fv=None):
  """One-line errors for the string flags a script needs and were left empty (absl's bounds
  and choices are checked while parsing)."""
  fv = FLAGS if fv is None else fv
  for name in names:
    if not fv[name].value:
      raise utils.InputError("--%s is empty" % name)


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


def train_options_from_flags(fv=None) -> training.TrainOptions:
  """Every TrainOptions field comes from the flag of the same name (data_pattern from
  --train_data_pattern)."""
  fv = FLAGS if fv is None else fv
  flag_name = {"data_pattern": "train_data_pattern"}
  return training.TrainOptions(**{
      field.name: fv[flag_name.get(field.name, field.name)].value
      for field in dataclasses.fields(training.TrainOptions)})
