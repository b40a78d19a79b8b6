"""Loading checkpoints written by the original TF1 WILLOW code (and ours) into our models.

The original's train.py saved every global variable with a TF1 Saver under the names the
`tf.get_variable` / slim calls of its frame_level_models.py and video_level_models.py produced:
no `model/` prefix (get_variable ignores name scopes), branch variables under `video_VLAD`,
`audio_FV`, `video_DBOF`, ..., slim layers as `<scope>/weights|biases`, batch norms as
`<scope>/beta|gamma|moving_mean|moving_variance`, and the RNN cells under
`RNN/rnn/multi_rnn_cell/cell_<i>/`. Our blocks keep the original's tensor layouts (flattening
orders, LSTM gate order i, j, f, o with the forget bias added at run time, GRU gates [r, u]), so
a checkpoint value is assigned to our variable unchanged; what this module knows is the name of
each variable, in one table.

A checkpoint is loaded only if it matches the model exactly: every model variable must have an
entry of the same shape and every model entry of the checkpoint must have a variable. Optimizer
slots and the step counter are ignored (fine-tuning starts a fresh optimizer and step).
"""
import re
from typing import Callable, Dict, Iterator, List, Set, Tuple

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

from utils import InputError

Converter = Callable[[np.ndarray], np.ndarray]
VariableMap = Dict[str, Tuple[tf.Variable, Converter]]


def is_tf1_checkpoint(path: str) -> bool:
  """Checkpoints of tf.train.Checkpoint carry an object graph; TF1 Saver ones do not."""
  names = {name for name, _ in tf.train.list_variables(path)}
  return _OBJECT_GRAPH not in names


def same_layout(value: np.ndarray) -> np.ndarray:
  """Every block stores its weights in the original's layout: values load unchanged."""
  return value


# The one name table. For each block class: the TF1 variable scope it opened (relative to the
# enclosing one; "" when it opened none) and, for each of its attributes holding a variable,
# that variable's name in the scope. "{module}" is the block's name (our blocks are named after
# the original's scopes: "video_VLAD", "cluster_bn", "hidden1_biases", "cell_0", ...) and
# "{variable}" the variable's own name (used where one block class served under several names).
_TF1_NAMES: Dict[str, Tuple[str, Dict[str, str]]] = {
    # Models: train.py's `model` name scope did not apply to get_variable.
    "BaseModel": ("", {}),
    # slim.batch_norm(scope=...), and the plain bias variable the no-BN branches meant to add.
    "BatchNorm": ("{module}", {"beta": "beta", "gamma": "gamma",
                               "moving_mean": "moving_mean",
                               "moving_variance": "moving_variance"}),
    "Bias": ("", {"bias": "{module}"}),
    # Pooling modules, each in its branch scope (video_VLAD, audio_FV, video_DBOF, ...).
    "ClusterAssignment": ("", {"cluster_weights": "cluster_weights"}),
    "NetVLAD": ("{module}", {"centres": "cluster_weights2", "gate_weights": "gate_weights"}),
    "NetFV": ("{module}", {"centres": "cluster_weights2", "covar_weights": "covar_weights"}),
    "SoftDBoF": ("{module}", {}),
    "GatedDBoF": ("{module}", {"dim_red": "dim_red", "gate_weights": "cluster_weights_2"}),
    "DBoF": ("{module}", {}),
    # Top-level get_variable calls of the models and of MoeModel.
    "HiddenLayer": ("", {"weights": "hidden1_weights"}),
    "ContextGate": ("", {"weights": "{variable}"}),  # gating_weights_2, gating_prob_weights
    # slim.fully_connected(scope="gates" | "gates1" | "gates2" | "experts").
    "MoeHead": ("", {"gate_weights": "{variable}/weights", "expert_weights": "experts/weights",
                     "expert_biases": "experts/biases"}),
    # dynamic_rnn in variable_scope("RNN") over a MultiRNNCell of BasicLSTMCell / GRUCell.
    "LSTMLayer": ("RNN/rnn/multi_rnn_cell/{module}/basic_lstm_cell",
                  {"kernel": "kernel", "bias": "bias"}),
    "GRULayer": ("RNN/rnn/multi_rnn_cell/{module}/gru_cell",
                 {"gate_kernel": "gates/kernel", "gate_bias": "gates/bias",
                  "candidate_kernel": "candidate/kernel", "candidate_bias": "candidate/bias"}),
}

# TF 1.0 and 1.1 named the RNN cells' variables weights/biases; later TF1 renamed them.
_LEGACY_RNN_NAMES = (("/kernel", "/weights"), ("/bias", "/biases"))

# Entries of an original checkpoint that are not model variables: the step counter and the
# accumulators of whichever tf.train optimizer --optimizer named.
_NOT_MODEL_ENTRY = re.compile(
    r"^(global_step|beta1_power|beta2_power)$"
    r"|/(Adam|Adam_1|Momentum|Adagrad|Adadelta|Adadelta_1|RMSProp|RMSProp_1|Ftrl|Ftrl_1)$")

# Our checkpoints are tf.train.Checkpoint(model=..., optimizer=...): the model's variables are
# the objects under "model" in the checkpoint's object graph.
_OBJECT_GRAPH = "_CHECKPOINTABLE_OBJECT_GRAPH"
_MODEL_CHILD = "model"

_MAX_LISTED = 12


# ----------------------------------------------------------------------------------------
# Walking our model.

def _module_variables(module: tf.Module, path: Tuple[str, ...] = (), blocks=()
                      ) -> Iterator[Tuple[Tuple[str, ...], List[tf.Module], str, tf.Variable]]:
  """Yields (attribute path, enclosing blocks from the model down to the owner, attribute,
  variable) for every variable reachable through public attributes. The attribute paths are
  the paths of the objects in tf.train.Checkpoint's object graph."""
  blocks = list(blocks) + [module]
  for attribute, value in sorted(vars(module).items()):
    if attribute.startswith("_"):
      continue
    items = list(enumerate(value)) if isinstance(value, (list, tuple)) else [(None, value)]
    for index, item in items:
      item_path = path + ((attribute,) if index is None else (attribute, str(index)))
      if isinstance(item, tf.Variable):
        yield item_path, blocks, attribute, item
      elif isinstance(item, tf.Module):
        yield from _module_variables(item, item_path, blocks)


def _table_entry(block: tf.Module):
  for cls in type(block).__mro__:
    if cls.__name__ in _TF1_NAMES:
      return _TF1_NAMES[cls.__name__]
  return None


def _own_name(variable: tf.Variable) -> str:
  """"NetVLADModelLF/moe/gates:0" -> "gates"."""
  return variable.name.split(":")[0].rsplit("/", 1)[-1]


def _tf1_name(blocks: List[tf.Module], attribute: str, variable: tf.Variable):
  """The original's checkpoint name of one variable, or None if the table has none."""
  entries = [_table_entry(block) for block in blocks]
  if None in entries or attribute not in entries[-1][1]:
    return None
  scopes = [scope.format(module=block.name) for block, (scope, _) in zip(blocks, entries)]
  leaf = entries[-1][1][attribute].format(module=blocks[-1].name, variable=_own_name(variable))
  return "/".join(part for part in scopes + [leaf] if part)


def tf1_variable_map(model: tf.Module) -> VariableMap:
  """{name in an original TF1 checkpoint: (our variable, converter)} for every variable of the
  model, batch-norm statistics included. RNN names are the later TF1 ones (kernel/bias).

  Raises InputError if a variable has no known original name (a model or head the original
  code did not have, e.g. LogisticModel).
  """
  mapping, unknown = {}, []
  for path, blocks, attribute, variable in _module_variables(model):
    name = _tf1_name(blocks, attribute, variable)
    if name is None:
      unknown.append("/".join(path))
    elif name in mapping:
      raise ValueError("two variables map to the TF1 name %s" % name)
    else:
      mapping[name] = (variable, same_layout)
  _check_all_variables_walked(model, [v for v, _ in mapping.values()], unknown)
  if unknown:
    raise InputError("%s: the original TF1 code had no variables for %s (no TF1 checkpoint "
                     "can be loaded into this model)" % (type(model).__name__,
                                                        _listing(unknown)))
  return mapping


def our_variable_map(model: tf.Module) -> VariableMap:
  """{attribute path ("hidden/weights"): (variable, converter)} for every model variable;
  the paths of the model's objects in the object graph of our checkpoints."""
  return {"/".join(path): (variable, same_layout)
          for path, _, _, variable in _module_variables(model)}


def _check_all_variables_walked(model, found, unknown):
  if len(found) + len(unknown) != len(model.variables):
    raise ValueError("%s: %d variables, but %d reachable through its blocks' attributes" % (
        type(model).__name__, len(model.variables), len(found) + len(unknown)))


# ----------------------------------------------------------------------------------------
# Matching a checkpoint against a variable map.

def _listing(names) -> str:
  names = sorted(names)
  shown = ", ".join(names[:_MAX_LISTED])
  if len(names) > _MAX_LISTED:
    shown += " ... (%d more)" % (len(names) - _MAX_LISTED)
  return shown


def _with_legacy_rnn_names(mapping: VariableMap, entries: Set[str]) -> VariableMap:
  """Renames RNN entries to the TF 1.0-1.1 names (weights/biases) where the checkpoint has
  those instead of kernel/bias."""
  renamed = {}
  for name, target in mapping.items():
    if name.startswith("RNN/") and name not in entries:
      for new, old in _LEGACY_RNN_NAMES:
        if name.endswith(new) and name[:-len(new)] + old in entries:
          name = name[:-len(new)] + old
          break
    renamed[name] = target
  return renamed


def _mismatch_report(mapping: VariableMap, shapes: Dict[str, List[int]]) -> List[str]:
  """Problems that prevent loading, as short phrases (empty if the checkpoint fits).
  shapes: {name: shape} of the checkpoint's model variables."""
  missing = [n for n in mapping if n not in shapes]
  extra = [n for n in shapes if n not in mapping]
  misshapen = ["%s (checkpoint %s, model %s)" % (n, list(shapes[n]), v.shape.as_list())
               for n, (v, _) in mapping.items()
               if n in shapes and list(shapes[n]) != v.shape.as_list()]
  problems = []
  if missing:
    problems.append("model variables missing from the checkpoint: " + _listing(missing))
  if extra:
    problems.append("checkpoint variables the model does not have: " + _listing(extra))
  if misshapen:
    problems.append("shape mismatches: " + _listing(misshapen))
  return problems


def _load_mapped(model: tf.Module, path: str, mapping: VariableMap, keys: Dict[str, str],
                 reader, flavour: str) -> int:
  """Checks the whole mapping against the checkpoint's model variables (keys: {name: key in
  the checkpoint}), then assigns; returns the number of variables loaded."""
  all_shapes = reader.get_variable_to_shape_map()
  problems = _mismatch_report(mapping, {n: all_shapes[k] for n, k in keys.items()})
  if problems:
    raise InputError(
        "%s: this %s does not fit the %s model built from the model flags: %s. Are the "
        "model flags (--model, cluster and hidden sizes, --gating, --moe_prob_gating, "
        "--lightvlad, ...) the ones it was trained with?" % (
            path, flavour, type(model).__name__, "; ".join(problems)))
  for name, (variable, convert) in mapping.items():
    _assign_in_slices(variable, convert(reader.get_tensor(keys[name])))
  return len(mapping)


# Largest slice converted and assigned at once: a 285M-parameter hidden layer restored into
# float64 variables would otherwise hold float64 and tensor copies of the whole matrix.
_ASSIGN_SLICE_BYTES = 64 << 20


def _assign_in_slices(variable: tf.Variable, value: np.ndarray):
  """variable.assign(value) in variable's dtype, converting one slice of rows at a time."""
  dtype = variable.dtype.as_numpy_dtype
  value = np.asarray(value)
  row_bytes = value[0].size * np.dtype(dtype).itemsize if value.ndim else 0
  if value.ndim == 0 or value.shape[0] * row_bytes <= _ASSIGN_SLICE_BYTES:
    variable.assign(value.astype(dtype, copy=False))
    return
  rows = max(1, _ASSIGN_SLICE_BYTES // row_bytes)
  for start in range(0, value.shape[0], rows):
    variable[start:start + rows].assign(value[start:start + rows].astype(dtype, copy=False))


def _open(path: str):
  try:
    return tf.train.load_checkpoint(path)
  except (tf.errors.OpError, ValueError) as e:
    raise InputError("%s: cannot read the checkpoint (%s)" % (path, str(e).splitlines()[0]))


def load_tf1_checkpoint(model: tf.Module, path: str) -> int:
  """Loads a checkpoint written by the original TF1 code (prefix `.../model.ckpt-N`) into
  the model: weights and batch-norm statistics. Returns the number of variables loaded.

  Raises InputError, naming the checkpoint, if any variable is unmapped or misshapen on
  either side; nothing is assigned then.
  """
  reader = _open(path)
  keys = {n: n for n in reader.get_variable_to_shape_map() if not _NOT_MODEL_ENTRY.search(n)}
  mapping = _with_legacy_rnn_names(tf1_variable_map(model), set(keys))
  return _load_mapped(model, path, mapping, keys, reader,
                      "TF1 checkpoint of the original code")


def _model_variable_keys(reader, path: str) -> Dict[str, str]:
  """{path of a variable under "model" in the object graph: its checkpoint key}.

  The object graph, not the keys, tells which entries are the model's: a variable is stored
  once, under the shortest path to it, which for trainable variables may run through the
  optimizer."""
  graph = trackable_object_graph_pb2.TrackableObjectGraph()
  graph.ParseFromString(reader.get_tensor(_OBJECT_GRAPH))
  roots = [c.node_id for c in graph.nodes[0].children if c.local_name == _MODEL_CHILD]
  if not roots:
    raise InputError("%s: no model in this checkpoint (no %r object)" % (path, _MODEL_CHILD))
  keys, pending, seen = {}, [(roots[0], ())], set()
  while pending:
    node_id, node_path = pending.pop()
    if node_id in seen:
      continue
    seen.add(node_id)
    node = graph.nodes[node_id]
    for attribute in node.attributes:
      if attribute.name == "VARIABLE_VALUE":
        keys["/".join(node_path)] = attribute.checkpoint_key
    pending += [(c.node_id, node_path + (c.local_name,)) for c in node.children]
  return keys


def load_our_checkpoint(model: tf.Module, path: str) -> int:
  """Loads the model variables (not the optimizer's) of one of our checkpoints."""
  reader = _open(path)
  return _load_mapped(model, path, our_variable_map(model), _model_variable_keys(reader, path),
                      reader, "checkpoint")
