"""Small helpers shared by the readers, the models and the scripts."""
import numbers
from typing import List, Mapping, Tuple, Union

import tensorflow as tf

# Defined without TensorFlow so that file_averaging.py starts fast.
from willow.fileio import InputError


JIT_COMPILE_MODES = ("auto", "true", "false")


def jit_compile_mode(value) -> str:
  """--jit_compile as "auto", "true" or "false" (train step and inference forward pass)."""
  mode = str(value).lower()
  if mode not in JIT_COMPILE_MODES:
    raise InputError("--jit_compile must be auto, true or false, got %r" % (value,))
  return mode


# XLA's CPU matrix product runs a contraction this long or longer slower than TensorFlow's own
# (oneDNN) kernel: the hidden layer of the full-size VLAD / FV models (278528 inputs).
LONG_CONTRACTION = 65536


def has_long_hidden_contraction(model) -> bool:
  hidden = getattr(model, "hidden", None)
  return hidden is not None and hidden.weights.shape[0] >= LONG_CONTRACTION


def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset:
  """The instruction-set flags of this machine's CPU (empty where /proc/cpuinfo is absent)."""
  try:
    with open(path) as f:
      for line in f:
        if line.startswith("flags"):
          return frozenset(line.split(":", 1)[1].split())
  except OSError:
    pass
  return frozenset()


def parse_feature_list(feature_names, feature_sizes) -> Tuple[List[str], List[int]]:
  """The one check of a feature list: names and sizes as the comma-separated flags give them or
  as sequences (the readers' and ModelConfig's arguments) -> ([name, ...], [size, ...])."""
  names = _items(feature_names)
  try:
    sizes = [int(s) for s in _items(feature_sizes)]
  except (TypeError, ValueError):
    raise InputError("--feature_sizes must be comma-separated integers, got %r"
                     % (feature_sizes,))
  if not names:
    raise InputError("--feature_names is empty")
  if len(names) != len(sizes):
    raise InputError(
        "--feature_names has %d entries (%s) but --feature_sizes has %d (%s); they must match"
        % (len(names), ",".join(names), len(sizes), ",".join(map(str, sizes))))
  if any(s <= 0 for s in sizes):
    raise InputError("--feature_sizes must be positive, got %s" % ",".join(map(str, sizes)))
  if len(set(names)) != len(names):
    raise InputError("--feature_names has duplicates: %s" % ",".join(names))
  return names, sizes


def _items(value) -> List[str]:
  """"a, b" or ["a", "b"] -> ["a", "b"]."""
  if isinstance(value, str):
    return [item.strip() for item in value.split(",") if item.strip()]
  return [str(item).strip() for item in value]


# ----------------------------------------------------------------------------------------------
# Tensor helpers used by the readers and the models.

def Dequantize(feat_vector, max_quantized_value=2, min_quantized_value=-2):
  """Maps uint8 quantization levels back to floats (the original's utils.Dequantize).

  x = q * (max - min) / 255 + (max - min) / 512 + min, i.e. q * 4/255 - 1.9921875 with the
  defaults. The half-bucket offset is the original's: level q stands for the centre of its
  bucket, which makes the range slightly asymmetric (-1.9921875 .. 2.0078125).

  Args:
    feat_vector: tensor (or array) of quantization levels, already cast to a float type.
    max_quantized_value: upper end of the quantized range.
    min_quantized_value: lower end of the quantized range.

  Returns:
    A tensor of the same shape and dtype.
  """
  if max_quantized_value <= min_quantized_value:
    raise ValueError("max_quantized_value must exceed min_quantized_value")
  quantized_range = max_quantized_value - min_quantized_value
  scalar = quantized_range / 255.0
  bias = (quantized_range / 512.0) + min_quantized_value
  return feat_vector * scalar + bias


def l2_normalize_frames(x):
  """Unit L2 norm along the last axis: x / sqrt(max(sum(x^2), 1e-12)), as the original's
  train.py normalized the model input.

  All-zero padding frames stay exactly zero.
  """
  return tf.math.l2_normalize(x, axis=-1, epsilon=1e-12)


# ----------------------------------------------------------------------------------------------
# Frame samplers (the original's utils.py and frame_level_models.py):
# [B, T, D] frames + [B] valid counts -> [B, n, D].
# Every index is clamped into [0, max(num_frames - 1, 0)], so a video with no frames gathers
# row 0 (a zero padding frame) instead of failing, and float rounding of u * num_frames can
# never select a padding frame.


def _clamp_to_valid_frames(indices, num_frames):
  """Clamps [B, n] int32 frame indices into [0, max(num_frames - 1, 0)] per row."""
  last_valid = tf.maximum(num_frames - 1, 0)[:, tf.newaxis]
  return tf.clip_by_value(indices, 0, last_valid)


def _gather_frames(model_input, indices):
  return tf.gather(model_input, indices, batch_dims=1)


def SampleRandomFrames(model_input, num_frames, num_samples):
  """Samples num_samples frames per video i.i.d. uniformly from its valid frames.

  index = floor(u * num_frames), u ~ U[0, 1) drawn independently for every slot: with
  replacement and unordered, exactly as the original, so even num_samples == num_frames is a
  resample rather than the identity. Uses the stateful tf.random.uniform, so it honours
  tf.random.set_seed and works under tf.function.

  Args:
    model_input: [B, T, D] float frames.
    num_frames: [B] int32 number of valid (non-padding) frames per video.
    num_samples: python int n.

  Returns:
    [B, n, D] sampled frames.
  """
  num_frames = tf.cast(num_frames, tf.int32)
  batch_size = tf.shape(model_input)[0]
  u = tf.random.uniform([batch_size, num_samples], 0.0, 1.0, dtype=tf.float32)
  scaled = u * tf.cast(num_frames, tf.float32)[:, tf.newaxis]
  indices = _clamp_to_valid_frames(tf.cast(tf.floor(scaled), tf.int32), num_frames)
  return _gather_frames(model_input, indices)


def SampleRandomSequence(model_input, num_frames, num_samples):
  """Samples a random contiguous clip of num_samples frames per video.

  start = floor(u * (max(num_frames - n, 0) + 1)), u ~ U[0, 1) per video;
  index_j = min(start + j, num_frames - 1), so videos shorter than n repeat their last frame.

  Args and returns as SampleRandomFrames.
  """
  num_frames = tf.cast(num_frames, tf.int32)
  batch_size = tf.shape(model_input)[0]
  last_start = tf.maximum(num_frames - num_samples, 0)
  u = tf.random.uniform([batch_size], 0.0, 1.0, dtype=tf.float32)
  start = tf.cast(tf.floor(u * tf.cast(last_start + 1, tf.float32)), tf.int32)
  start = tf.minimum(start, last_start)  # u * (m + 1) may round up to m + 1 in float32
  offsets = tf.range(num_samples, dtype=tf.int32)[tf.newaxis, :]
  indices = _clamp_to_valid_frames(start[:, tf.newaxis] + offsets, num_frames)
  return _gather_frames(model_input, indices)


def evenly_spaced_frame_indices(num_frames, num_samples):
  """[B, n] int32 indices floor((j + 0.5) * num_frames / n), computed exactly in integers.

  Index j sits in the middle of the j-th of n equal segments of the video, so the sample is
  deterministic and matches the random sampler's expectation; num_frames == n gives 0..n-1.
  """
  num_frames = tf.cast(num_frames, tf.int32)
  odd = 2 * tf.range(num_samples, dtype=tf.int32) + 1          # 2j + 1
  indices = (odd[tf.newaxis, :] * num_frames[:, tf.newaxis]) // (2 * num_samples)
  return _clamp_to_valid_frames(indices, num_frames)


def SampleEvenlySpacedFrames(model_input, num_frames, num_samples):
  """Deterministic counterpart of SampleRandomFrames for evaluation and inference.

  Takes the frames evenly_spaced_frame_indices selects; the same video always yields the same
  frames whatever else is in the batch.

  Args and returns as SampleRandomFrames.
  """
  indices = evenly_spaced_frame_indices(num_frames, num_samples)
  return _gather_frames(model_input, indices)


def FramePooling(frames, method, **unused_params):
  """Pools [B, T, D] frames over the time axis.

  Args:
    frames: [B, T, D] float tensor.
    method: "average" (mean over T), "max" (max over T) or "none" (no pooling: the frames are
      flattened to [B * T, D]).

  Returns:
    [B, D] for "average" / "max", [B * T, D] for "none".

  Raises:
    ValueError: unknown method.
  """
  if method == "average":
    return tf.reduce_mean(frames, axis=1)
  if method == "max":
    return tf.reduce_max(frames, axis=1)
  if method == "none":
    feature_size = frames.shape[-1]
    if feature_size is None:
      feature_size = tf.shape(frames)[-1]
    return tf.reshape(frames, [-1, feature_size])
  raise ValueError("Unrecognized pooling method: %r (expected average, max or none)" % (method,))


# ----------------------------------------------------------------------------------------------
# TensorBoard summaries (TF2 replacement of the original's hand-built tf.Summary protos).


def _scalar_metadata() -> bytes:
  """SummaryMetadata marking a value as a TensorBoard scalar (plugin "scalars")."""
  metadata = tf.compat.v1.SummaryMetadata()
  metadata.plugin_data.plugin_name = "scalars"
  return metadata.SerializeToString()


def write_scalars(writer: tf.summary.SummaryWriter, step: int,
                  scalars: Mapping[str, Union[float, numbers.Number]], flush: bool = False):
  """Writes one scalar summary per (name, value) at the given step.

  Uses the core tf.summary.write op with the scalars-plugin metadata, which is what
  tf.summary.scalar writes, but without requiring the tensorboard package at run time.

  Args:
    writer: a tf.summary.SummaryWriter (e.g. tf.summary.create_file_writer(train_dir)).
    step: global step (python int or int tensor).
    scalars: {tag: value}, e.g. {"model/Training_Hit@1": 0.5}. None values are skipped.
    flush: flush the writer afterwards (scripts that may stop abruptly want this).
  """
  metadata = _scalar_metadata()
  with writer.as_default():
    for name, value in scalars.items():
      if value is None:
        continue
      tf.summary.write(name, tf.cast(value, tf.float32), step=step, metadata=metadata)
  if flush:
    writer.flush()
