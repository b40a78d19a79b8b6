"""YouTube-8M record readers and the tf.data input pipeline (the original's readers.py and
the input part of its train.py).

Two readers keep the original class and argument names:

* YT8MFrameFeatureReader: frame-level tf.train.SequenceExample records (one uint8-quantized
  bytes entry per frame and feature) -> a dequantized, zero-padded [B, max_frames, D] matrix.
* YT8MAggregatedFeatureReader: video-level tf.train.Example records (fixed-length float
  features such as mean_rgb / mean_audio) -> a [B, D] matrix.

Both decode a whole batch of serialized records with one vectorized parse
(`prepare_serialized_examples`), so they run inside tf.function and tf.data maps, and both
return the same dict:

  video_ids     [B] tf.string
  video_matrix  [B, max_frames, D] (frame level) or [B, D] (video level) float32
  labels        [B, num_classes] float32 multi-hot (duplicates collapse; no labels -> zeros)
  num_frames    [B] int32 (video level: ones)

Bad data fails with a message that names the file the record came from (the pipeline carries
each record's file name alongside it, see get_input_dataset) and the problem; scripts turn
the TensorFlow error into a one-line utils.InputError with describe_data_error.

Throughput: most of the decoding time goes into writing the float32 output (1.4 MB per
300-frame rgb+audio video). TensorFlow's BFC allocator, which the scripts choose
(willow/tf_env.py), reuses those buffers instead of page-faulting fresh ones for every batch.
"""
import numbers
import struct
import time
from typing import List, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

import utils
from willow import record_errors
from willow.record_errors import RECORD_FRAMING_BYTES

# The 2017 dataset names the context id `video_id`, later versions `id`.
ID_KEYS = ("id", "video_id")
LABELS_KEY = "labels"

# The pipeline's functions are plain TensorFlow code: converting them with autograph would only
# cost seconds of start-up (tf.function steps are traced with autograph=False for the same
# reason).
_plain = tf.autograph.experimental.do_not_convert


# ----------------------------------------------------------------------------------------------
# Argument validation.


def _positive_int(value, what: str) -> int:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
    raise utils.InputError("%s must be a positive integer, got %r" % (what, value))
  return int(value)


# ----------------------------------------------------------------------------------------------
# In-graph checks. A failing check reports "<file>: video <id>: <problem>" for the first bad
# record of the batch. The message is built with plain indexing rather than tf.cond (whose
# branch graphs would triple the trace time of the reader): every lookup goes through a
# sentinel appended to its tensor, so it is valid even when nothing is wrong or B == 0.


def _record_names(serialized, source):
  """[B] strings naming where each record came from, used in every error message."""
  batch_size = tf.shape(serialized)[0]
  if source is None:
    return tf.strings.join(
        ["batch record ", tf.strings.as_string(tf.range(batch_size))])
  source = tf.convert_to_tensor(source, dtype=tf.string)
  if source.shape.rank == 0:
    return tf.fill([batch_size], source)
  return source


def _first_true(mask):
  """Position of the first True of a 1-D bool tensor, or its length when there is none."""
  padded = tf.concat([mask, [True]], axis=0)
  positions = tf.range(tf.size(padded, out_type=tf.int32), dtype=tf.int32)
  return tf.reduce_min(tf.boolean_mask(positions, padded))


def _at(values, index, sentinel):
  """values[index] for a 1-D tensor, or `sentinel` when index == len(values)."""
  return tf.concat([values, [sentinel]], axis=0)[index]


def _assert_records(all_ok, record, names, video_ids, problem):
  """Asserts all_ok; the message names record `record` (int32 index into the batch).

  Args:
    all_ok: scalar bool.
    record: index of the first bad record (may be B when all_ok).
    names: [B] record names (file names).
    video_ids: [B] video ids.
    problem: scalar string describing what is wrong with that record.

  Returns:
    The assert op (use it as a control dependency).
  """
  video = _at(video_ids, record, "")
  video = tf.where(tf.strings.length(video) > 0, video, "(no id)")
  text = tf.strings.join([_at(names, record, ""), ": video ", video, ": ", problem])
  # A corrupt id may not be UTF-8; Python could then not even decode TensorFlow's error.
  text = tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace")
  return tf.debugging.Assert(all_ok, [text])


def _pick_video_ids(context, names):
  """Per record, the non-empty one of `id` / `video_id` ('' when absent), and the check that
  neither holds more than one value.

  The ids are parsed as ragged lists: as fixed-length features, a record with two ids fails
  inside the batch parser with a message that names no file.
  """
  firsts, checks = [], []
  for key in ID_KEYS:
    values = context[key]
    firsts.append(values.to_tensor(default_value="", shape=[None, 1])[:, 0])
    counts = tf.cast(values.row_lengths(), tf.int32)
    several = counts > 1
    record = _first_true(several)
    problem = tf.strings.join(["context feature %s has " % key,
                               tf.strings.as_string(_at(counts, record, 0)),
                               " values, expected one"])
    checks.append(_assert_records(tf.logical_not(tf.reduce_any(several)), record, names,
                                  firsts[-1], problem))
  new_ids, old_ids = firsts
  return tf.where(tf.strings.length(new_ids) > 0, new_ids, old_ids), checks


def _context_spec(extra=None):
  spec = {key: tf.io.RaggedFeature(tf.string) for key in ID_KEYS}
  spec[LABELS_KEY] = tf.io.RaggedFeature(tf.int64)
  spec.update(extra or {})
  return spec


def _labels_to_multi_hot(labels, num_classes, names, video_ids):
  """Ragged [B, (L)] int64 class indices -> [B, num_classes] float32 multi-hot, checked."""
  values = labels.flat_values
  out_of_range = tf.logical_or(values < 0, values >= num_classes)
  first = _first_true(out_of_range)
  record = _at(tf.cast(labels.value_rowids(), tf.int32), first, tf.cast(labels.nrows(), tf.int32))
  problem = tf.strings.join([
      "label ", tf.strings.as_string(_at(values, first, 0)),
      " is outside [0, %d) (check --num_classes)" % num_classes])
  check = _assert_records(tf.logical_not(tf.reduce_any(out_of_range)), record, names, video_ids,
                          problem)
  with tf.control_dependencies([check]):
    # scatter_nd sums duplicates; the minimum collapses them to 1.
    indices = tf.stack([tf.cast(labels.value_rowids(), tf.int64), values], axis=1)
    shape = tf.stack([tf.cast(labels.nrows(), tf.int64), tf.constant(num_classes, tf.int64)])
    counts = tf.scatter_nd(indices, tf.ones_like(values, dtype=tf.float32), shape)
    return tf.minimum(counts, 1.0)


# ----------------------------------------------------------------------------------------------
# Readers.


class BaseReader:
  """Interface: turn a [B] batch of serialized records into the dict described above."""

  def prepare_serialized_examples(self, serialized, source=None):
    raise NotImplementedError()


class YT8MFrameFeatureReader(BaseReader):
  """Reads frame-level tf.train.SequenceExample records.

  Each feature list (e.g. `rgb` 1024 bytes per frame, `audio` 128) is decoded independently,
  dequantized, truncated to the first max_frames frames or padded at the end with exact zeros,
  and the features are concatenated along the last axis in the order of feature_names.

  num_frames is min(frame count, max_frames). When the features of one record have different
  frame counts, the smallest count is used and every frame from it on is zero in all features
  (the original used the first feature's count; its equality check never ran).
  """

  def __init__(self, num_classes=4716, feature_sizes=[1024], feature_names=["rgb"],
               max_frames=300):
    """Args:
      num_classes: vocabulary size V; labels must lie in [0, V).
      feature_sizes: bytes per frame of each feature (list, or comma-separated string).
      feature_names: feature list names, same length and order as feature_sizes.
      max_frames: frames kept per video (the original's constructor default, not a flag).

    Raises:
      utils.InputError: inconsistent names/sizes or non-positive numbers.
    """
    self.feature_names, self.feature_sizes = utils.parse_feature_list(feature_names, feature_sizes)
    self.num_classes = _positive_int(num_classes, "num_classes")
    self.max_frames = _positive_int(max_frames, "max_frames")

  def prepare_serialized_examples(self, serialized, source=None):
    """Decodes a batch of serialized SequenceExamples.

    Args:
      serialized: [B] tf.string serialized records.
      source: optional [B] (or scalar) tf.string naming each record's file, used in error
        messages; without it records are named by their position in the batch.

    Returns:
      {"video_ids": [B] string, "video_matrix": [B, max_frames, sum(sizes)] float32,
       "labels": [B, num_classes] float32, "num_frames": [B] int32}
    """
    serialized = tf.convert_to_tensor(serialized, dtype=tf.string)
    names = _record_names(serialized, source)
    # FixedLenSequenceFeature (not RaggedFeature) so that a record lacking a feature list fails
    # in the parser with "Name: <file>, Feature list 'rgb' is required", while a present but
    # empty list is a legitimate 0-frame video. Frames beyond each record's length are "".
    context, frame_lists, frame_counts = tf.io.parse_sequence_example(
        serialized,
        context_features=_context_spec(),
        sequence_features={name: tf.io.FixedLenSequenceFeature([], tf.string)
                           for name in self.feature_names},
        example_names=names)
    video_ids, checks = _pick_video_ids(context, names)

    quantized, counts = [], []
    for name, size in zip(self.feature_names, self.feature_sizes):
      frames = frame_lists[name]
      count = tf.cast(frame_counts[name], tf.int32)
      checks.append(self._check_frame_sizes(frames, count, name, size, names, video_ids))
      quantized.append(self._decode_frames(frames, size))
      counts.append(count)
    num_frames = tf.minimum(tf.reduce_min(tf.stack(counts), axis=0), self.max_frames)

    labels = _labels_to_multi_hot(context[LABELS_KEY], self.num_classes, names, video_ids)
    with tf.control_dependencies(checks):
      video_matrix = self._dequantize_valid_frames(tf.concat(quantized, axis=2), num_frames)
    return {
        "video_ids": video_ids,
        "video_matrix": video_matrix,
        "labels": labels,
        "num_frames": num_frames,
    }

  def _decode_frames(self, frames, size):
    """[B, T] frame bytes -> [B, max_frames, size] uint8 (kept in uint8: 4x less memory)."""
    frames = frames[:, :self.max_frames]
    # fixed_length turns the "" past each record's end into zero rows, so the whole padded
    # batch decodes in one op; wrong-length frames are caught by _check_frame_sizes.
    quantized = tf.io.decode_raw(frames, tf.uint8, fixed_length=size)
    missing = self.max_frames - tf.shape(quantized)[1]
    quantized = tf.pad(quantized, [[0, 0], [0, missing], [0, 0]])
    return tf.ensure_shape(quantized, [None, self.max_frames, size])

  def _dequantize_valid_frames(self, quantized, num_frames):
    """Dequantizes, then zeroes every frame at or after num_frames (padding is exactly 0)."""
    values = utils.Dequantize(tf.cast(quantized, tf.float32))
    valid = tf.sequence_mask(num_frames, self.max_frames)[:, :, tf.newaxis]
    return tf.where(valid, values, tf.zeros([], tf.float32))

  @staticmethod
  def _check_frame_sizes(frames, count, name, size, names, video_ids):
    """Every real frame of `name` must hold exactly `size` bytes."""
    byte_lengths = tf.strings.length(frames)
    num_columns = tf.shape(frames)[1]
    real = tf.sequence_mask(count, num_columns)
    wrong = tf.reshape(tf.logical_and(real, tf.not_equal(byte_lengths, size)), [-1])
    first = _first_true(wrong)   # row-major: the first bad frame of the first bad record
    record = first // tf.maximum(num_columns, 1)
    problem = tf.strings.join([
        "frame ", tf.strings.as_string(first - record * num_columns), " of feature ", name,
        " has ", tf.strings.as_string(_at(tf.reshape(byte_lengths, [-1]), first, 0)),
        " bytes, expected %d (check --feature_sizes)" % size])
    return _assert_records(tf.logical_not(tf.reduce_any(wrong)), record, names, video_ids,
                           problem)


class YT8MAggregatedFeatureReader(BaseReader):
  """Reads video-level tf.train.Example records.

  Each feature (e.g. `mean_rgb` 1024 floats, `mean_audio` 128) must hold exactly its size in
  floats; the features are concatenated in the order of feature_names into [B, D].
  """

  def __init__(self, num_classes=4716, feature_sizes=[1024], feature_names=["mean_rgb"]):
    """Args:
      num_classes: vocabulary size V; labels must lie in [0, V).
      feature_sizes: floats per record of each feature (list, or comma-separated string).
      feature_names: feature names, same length and order as feature_sizes.

    Raises:
      utils.InputError: inconsistent names/sizes or non-positive numbers.
    """
    self.feature_names, self.feature_sizes = utils.parse_feature_list(feature_names, feature_sizes)
    self.num_classes = _positive_int(num_classes, "num_classes")

  def prepare_serialized_examples(self, serialized, source=None):
    """Decodes a batch of serialized Examples.

    Args:
      serialized: [B] tf.string serialized records.
      source: optional [B] (or scalar) tf.string naming each record's file.

    Returns:
      {"video_ids": [B] string, "video_matrix": [B, sum(sizes)] float32,
       "labels": [B, num_classes] float32, "num_frames": [B] int32 ones}
    """
    serialized = tf.convert_to_tensor(serialized, dtype=tf.string)
    names = _record_names(serialized, source)
    # An Example's wire format is a SequenceExample's context, and parse_sequence_example names
    # the record in its "cannot parse" error where parse_example does not. Ragged features so
    # that a missing or wrong-length feature reaches our own, clearer check.
    features = {name: tf.io.RaggedFeature(tf.float32) for name in self.feature_names}
    context, _, _ = tf.io.parse_sequence_example(
        serialized, context_features=_context_spec(features), example_names=names)
    video_ids, checks = _pick_video_ids(context, names)

    columns = []
    for name, size in zip(self.feature_names, self.feature_sizes):
      values = context[name]
      checks.append(self._check_feature_size(values, name, size, names, video_ids))
      checks.append(self._check_finite(values, name, names, video_ids))
      columns.append(values)
    labels = _labels_to_multi_hot(context[LABELS_KEY], self.num_classes, names, video_ids)
    with tf.control_dependencies(checks):
      video_matrix = tf.concat(
          [tf.reshape(values.flat_values, [-1, size])
           for values, size in zip(columns, self.feature_sizes)], axis=1)
    video_matrix = tf.ensure_shape(video_matrix, [None, sum(self.feature_sizes)])
    return {
        "video_ids": video_ids,
        "video_matrix": video_matrix,
        "labels": labels,
        "num_frames": tf.ones(tf.shape(video_ids), dtype=tf.int32),
    }

  @staticmethod
  def _check_feature_size(values, name, size, names, video_ids):
    """Every record must hold exactly `size` floats of feature `name`."""
    lengths = tf.cast(values.row_lengths(), tf.int32)
    wrong = tf.not_equal(lengths, size)
    record = _first_true(wrong)
    found = _at(lengths, record, 0)
    problem = tf.where(
        found > 0,
        tf.strings.join(["feature ", name, " has ", tf.strings.as_string(found),
                         " values, expected %d (check --feature_sizes)" % size]),
        "the record lacks feature %s (check --feature_names; frame-level records need "
        "--frame_features)" % name)
    return _assert_records(tf.logical_not(tf.reduce_any(wrong)), record, names, video_ids,
                           problem)

  @staticmethod
  def _check_finite(values, name, names, video_ids):
    """NaN or Inf in a feature is a corrupt record, not a video (it would make the loss
    NaN, or every score of the video NaN)."""
    bad = tf.logical_not(tf.reduce_all(tf.math.is_finite(values), axis=1))
    return _assert_records(tf.logical_not(tf.reduce_any(bad)), _first_true(bad), names,
                           video_ids, "feature %s holds NaN or Inf" % name)


def get_reader(frame_features: bool, feature_names, feature_sizes, num_classes=4716,
               max_frames=300) -> BaseReader:
  """The reader for the --frame_features / --feature_names / --feature_sizes flags."""
  if frame_features:
    return YT8MFrameFeatureReader(num_classes=num_classes, feature_sizes=feature_sizes,
                                  feature_names=feature_names, max_frames=max_frames)
  return YT8MAggregatedFeatureReader(num_classes=num_classes, feature_sizes=feature_sizes,
                                     feature_names=feature_names)


def reader_for(config) -> BaseReader:
  """The reader of the records a model configuration (willow/model_base.py's ModelConfig) reads:
  its frame_features, feature_names, feature_sizes and num_classes."""
  return get_reader(config.frame_features, list(config.feature_names),
                    list(config.feature_sizes), config.num_classes)


# ----------------------------------------------------------------------------------------------
# Files and the tf.data pipeline.


def match_files(data_pattern: str) -> List[str]:
  """Sorted, de-duplicated record files matching a (comma-separated) glob pattern.

  Works for local paths and any tf.io.gfile filesystem (gs://, ...). Directories matched by a
  pattern are skipped.

  Raises:
    utils.InputError: an empty pattern, or a pattern part that matches no file (including one
      that matches only directories).
  """
  parts = [p.strip() for p in str(data_pattern or "").split(",") if p.strip()]
  if not parts:
    raise utils.InputError("the data pattern is empty")
  files = set()
  for part in parts:
    try:
      matches = tf.io.gfile.glob(part)
      regular = [m for m in matches if not tf.io.gfile.isdir(m)]
    except tf.errors.OpError as e:
      raise utils.InputError("cannot list %s: %s" % (part, record_errors.error_message(e)))
    if not regular:
      if matches:
        raise utils.InputError(
            "%s matches only directories (%s); give a pattern of record files, e.g. %s"
            % (part, ", ".join(sorted(matches)[:3]), _join(sorted(matches)[0], "*.tfrecord")))
      raise utils.InputError("no files match %s" % part)
    files.update(regular)
  return sorted(files)


def _join(directory, name):
  return directory.rstrip("/") + "/" + name


def _default_shuffle_buffer(batch_size: int) -> int:
  # The original's queue held 5 batches; at least 1000 records (~350 MB of 300-frame videos)
  # so small batches still mix records from many files.
  return max(5 * batch_size, 1000)


def get_input_dataset(reader: BaseReader, data_pattern: str, batch_size: int, num_readers=8,
                      shuffle=False, num_epochs=None, seed=None, num_shards=1, shard_index=0,
                      drop_remainder=False, shuffle_buffer_size=None,
                      skip_corrupt_records=False) -> tf.data.Dataset:
  """The tf.data pipeline of train, eval and inference: files -> records -> decoded batches.

  Without shuffling the order is deterministic: file order (sorted names), then record order
  within each file, so eval / inference outputs follow the input files. With shuffling
  (training) the file order is reshuffled every epoch, num_readers files are read interleaved
  and records pass through a shuffle buffer. Each record travels with its file name so that
  decoding errors name the file.

  Sharding across workers: by file (worker i reads files i, i + num_shards, ...) when there
  are at least num_shards files, otherwise by record (worker i keeps records i, i + num_shards,
  ... of the fixed, unshuffled file order). Either way every record goes to exactly one worker.

  Args:
    reader: a YT8MFrameFeatureReader or YT8MAggregatedFeatureReader.
    data_pattern: glob pattern, or several separated by commas.
    batch_size: records per batch.
    num_readers: files read in parallel (interleave cycle length).
    shuffle: shuffle files and records (training).
    num_epochs: None = repeat forever, N = N passes over the data.
    seed: seed of the file and record shuffles (None: different every run).
    num_shards, shard_index: this worker's share of the data.
    drop_remainder: drop the last partial batch (each epoch boundary is not a batch boundary:
      batches span epochs).
    shuffle_buffer_size: records in the shuffle buffer (default max(5 * batch_size, 1000)).
    skip_corrupt_records: drop what cannot be read instead of failing: each record that fails
      to decode, and the rest of a file after a truncated or corrupted record (TFRecord
      framing has no resynchronization point). Records are then decoded one at a time (slower)
      and, once the pipeline is exhausted, one log line says how many records and files were
      skipped. Needs a finite num_epochs.

  Returns:
    A dataset of reader output dicts (see the module docstring).

  Raises:
    utils.InputError: bad arguments or no matching files.
  """
  batch_size = _positive_int(batch_size, "batch_size")
  num_readers = _positive_int(num_readers, "num_readers")
  num_shards = _positive_int(num_shards, "num_shards")
  if not 0 <= shard_index < num_shards:
    raise utils.InputError("shard_index must be in [0, %d), got %r" % (num_shards, shard_index))
  if num_epochs is not None:
    num_epochs = _positive_int(num_epochs, "num_epochs")
  elif skip_corrupt_records:
    raise utils.InputError("skip_corrupt_records needs a finite num_epochs")
  files = match_files(data_pattern)

  shard_by_file = len(files) >= num_shards
  if shard_by_file:
    files = files[shard_index::num_shards]
  # Reproducible order whenever asked for (eval, inference, or a seeded training run).
  deterministic = (not shuffle) or seed is not None

  # Each file travels with its size (known now: a tf.py_function asking for it in the pipeline
  # could deadlock with a main thread that destroys the iterator while holding the GIL).
  file_names = tf.data.Dataset.from_tensor_slices(
      (files, tf.constant(_file_sizes(files), tf.int64)))
  if shuffle and shard_by_file:
    file_names = file_names.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
  skipped = _SkippedRecords(files, num_epochs) if skip_corrupt_records else None
  records = file_names.interleave(
      _plain(skipped.records_of_file if skipped else _records_with_source),
      cycle_length=min(num_readers, len(files)),
      # Shuffled: one record per file in turn. Otherwise each file is read to its end before
      # the next one is emitted (file order, then record order) while later files prefetch.
      block_length=1 if (shuffle and shard_by_file) else _WHOLE_FILE,
      num_parallel_calls=tf.data.AUTOTUNE,
      deterministic=deterministic or not shard_by_file)
  if not shard_by_file:
    records = records.shard(num_shards, shard_index)
  if shuffle:
    records = records.shuffle(shuffle_buffer_size or _default_shuffle_buffer(batch_size),
                              seed=seed, reshuffle_each_iteration=True)
  records = records.repeat(num_epochs)
  if skipped:
    decoded = skipped.decode_each(records, reader, deterministic).batch(
        batch_size, drop_remainder=drop_remainder)
    decoded = skipped.report_when_exhausted(decoded)
    return decoded.prefetch(tf.data.AUTOTUNE)
  # A segment reader turns a batch of records into any number of examples: rebatched.
  regroup = getattr(reader, "several_examples_per_record", False)
  batches = records.batch(batch_size, drop_remainder=drop_remainder and not regroup)
  decoded = batches.map(
      _plain(lambda serialized, source: reader.prepare_serialized_examples(serialized,
                                                                           source=source)),
      num_parallel_calls=tf.data.AUTOTUNE,
      deterministic=deterministic)
  if regroup:
    decoded = decoded.rebatch(batch_size, drop_remainder=drop_remainder)
  return decoded.prefetch(tf.data.AUTOTUNE)


# Larger than any record file, so an interleave block is a whole file.
_WHOLE_FILE = 1 << 40


def _records_with_source(file_name, file_size):
  """(serialized record, file name) pairs of one TFRecord file of file_size bytes.

  TensorFlow takes a file that ends inside a record's 12-byte header for a clean end of file,
  which would silently drop the rest of a truncated file: the bytes read are counted and,
  after the last record, compared with the file's size. The count runs over small batches of
  records (per record, tf.data's scan would halve the throughput of video-level records).
  """
  batches = tf.data.TFRecordDataset(file_name).batch(_COUNTED_RECORDS).map(
      _plain(lambda records: (records, False, tf.constant(0, tf.int64))))
  end = tf.data.Dataset.from_tensors((tf.zeros([0], tf.string), True, file_size))

  def check_at_end(state, element):
    bytes_read, count = state
    records, is_end, size = element
    problem = tf.strings.join([
        file_name, ": not a valid TFRecord file: truncated record at byte ",
        tf.strings.as_string(bytes_read), " (record ", tf.strings.as_string(count),
        " of the file; the file ends inside its header)"])
    check = tf.debugging.Assert(tf.logical_or(tf.logical_not(is_end), bytes_read >= size),
                                [problem])
    with tf.control_dependencies([check]):
      added = tf.reduce_sum(tf.cast(tf.strings.length(records), tf.int64) +
                            RECORD_FRAMING_BYTES)
      state = (bytes_read + added, count + tf.cast(tf.size(records), tf.int64))
      return state, (records, tf.fill(tf.shape(records), file_name))

  return batches.concatenate(end).scan(
      (tf.constant(0, tf.int64), tf.constant(0, tf.int64)), _plain(check_at_end)).unbatch()


def count_records(files: List[str], max_seconds: float = 10.0) -> Tuple[int, bool]:
  """(records in `files`, exact): counted by hopping over the TFRecord framing (12 bytes read
  per record, never the data). When that takes longer than max_seconds (a huge or remote data
  set) the count is extrapolated from the files counted so far by their share of the bytes,
  and exact is False."""
  deadline = time.time() + max_seconds
  counted = counted_bytes = 0
  sizes = _file_sizes(files)
  for path, size in zip(files, sizes):
    if counted_bytes and time.time() > deadline:
      return int(round(counted * sum(sizes) / counted_bytes)), False
    counted += _records_in_file(path, size)
    counted_bytes += size
  return counted, True


def _records_in_file(path: str, size: int) -> int:
  count, position = 0, 0
  local = "://" not in path  # Python's own files seek several times faster than GFile
  with (open(path, "rb") if local else tf.io.gfile.GFile(path, "rb")) as f:
    while position + 12 <= size:
      f.seek(position)
      length = struct.unpack("<Q", f.read(8))[0]
      position += length + RECORD_FRAMING_BYTES
      count += 1
  return count


# Records counted at a time by _records_with_source (a few MB of frame-level records).
_COUNTED_RECORDS = 16


def _file_sizes(files: List[str]) -> List[int]:
  try:
    return [tf.io.gfile.stat(path).length for path in files]
  except tf.errors.OpError as e:
    raise utils.InputError("cannot read %s" % record_errors.error_message(e))


class _SkippedRecords:
  """The --skip_corrupt_records side of get_input_dataset: drops what cannot be read, counts it
  and logs the count when the pipeline is exhausted.

  Records that fail to decode are counted as records read minus records decoded. A file cut
  short by a truncated or corrupted record is found by comparing the bytes read from it with
  its size (its unreadable rest holds an unknown number of records).
  """

  def __init__(self, files: List[str], num_epochs: int):
    self.files, self.num_epochs = files, num_epochs
    self.records_read = tf.Variable(0, dtype=tf.int64, trainable=False)
    self.records_decoded = tf.Variable(0, dtype=tf.int64, trainable=False)
    self.bytes_read = tf.lookup.experimental.MutableHashTable(tf.string, tf.int64, 0)

  def records_of_file(self, file_name, unused_file_size):
    """(record, file name) pairs of one file, ending quietly at its first unreadable record."""
    def count_bytes(record):
      key = file_name[tf.newaxis]
      size = tf.strings.length(record)[tf.newaxis]
      update = self.bytes_read.insert(
          key, self.bytes_read.lookup(key) + tf.cast(size, tf.int64) + RECORD_FRAMING_BYTES)
      with tf.control_dependencies([update]):
        return tf.identity(record), file_name
    return tf.data.TFRecordDataset(file_name).map(count_bytes).ignore_errors(log_warning=True)

  def decode_each(self, records, reader, deterministic):
    """Decodes record by record so that a bad record costs only itself, not its batch."""
    def decode(serialized, source):
      # Counted here, after any sharding, so that read - decoded is what this pipeline dropped.
      with tf.control_dependencies([self.records_read.assign_add(1)]):
        serialized = tf.identity(serialized)
      return reader.prepare_serialized_examples(serialized[tf.newaxis], source[tf.newaxis])

    def count(decoded):
      with tf.control_dependencies([self.records_decoded.assign_add(1)]):
        return tf.nest.map_structure(tf.identity, decoded)

    decoded = records.map(_plain(decode), num_parallel_calls=tf.data.AUTOTUNE,
                          deterministic=deterministic).ignore_errors(log_warning=True)
    # Counted per record, before unbatching: a segment reader makes several examples of one.
    return decoded.map(count).unbatch()

  def report_when_exhausted(self, dataset):
    """dataset, then an empty tail whose only effect is to log the counts."""
    def log_counts(element):
      logged = tf.py_function(self._log_counts, [], Tout=tf.int64)
      with tf.control_dependencies([logged]):
        return tf.nest.map_structure(tf.identity, element)
    placeholder = tf.nest.map_structure(
        lambda spec: tf.zeros([d if d is not None else 0 for d in spec.shape], spec.dtype),
        dataset.element_spec)
    tail = tf.data.Dataset.from_tensors(placeholder).map(log_counts).filter(
        lambda _: tf.constant(False))
    return dataset.concatenate(tail)

  def counts(self):
    """(records that failed to decode, [files whose end could not be read])."""
    undecoded = int(self.records_read.numpy()) - int(self.records_decoded.numpy())
    cut_short = []
    for path in self.files:
      read = int(self.bytes_read.lookup(tf.constant([path]))[0])
      if read < self.num_epochs * tf.io.gfile.stat(path).length:
        cut_short.append(path)
    return undecoded, cut_short

  def _log_counts(self):
    undecoded, cut_short = self.counts()
    if undecoded or cut_short:
      skipped = ["%d record(s) that could not be decoded" % undecoded] if undecoded else []
      if cut_short:
        skipped.append("the unreadable rest of %d file(s) (%s%s)" % (
            len(cut_short), ", ".join(cut_short[:5]), ", ..." if len(cut_short) > 5 else ""))
      logging.warning("--skip_corrupt_records: skipped %s; %d record(s) decoded",
                      " and ".join(skipped), int(self.records_decoded.numpy()))
    else:
      logging.info("--skip_corrupt_records: nothing skipped; %d record(s) decoded",
                   int(self.records_decoded.numpy()))
    return 0


def describe_data_error(exc: Exception, data_pattern: str = None) -> utils.InputError:
  """One-line InputError for an error raised while reading or decoding the records of
  data_pattern (willow/record_errors.py recognizes TensorFlow's messages); scripts print it as
  `error: <message>`."""
  return record_errors.describe(exc, data_pattern, list_files=_files_or_none)


def _files_or_none(data_pattern: str) -> List[str]:
  try:
    return match_files(data_pattern)
  except utils.InputError:
    return []


# ----------------------------------------------------------------------------------------------
# Video ids and labels only (scoring a predictions CSV, fitting ensemble weights).


def read_video_labels(data_pattern: str, num_classes: int, batch_size: int = 256) -> dict:
  """{video id (bytes): sorted distinct labels (int32 array)} of every record of data_pattern.

  Reads only the context `id` (or `video_id`) and `labels`, from frame-level SequenceExamples
  and video-level Examples alike: both keep them in the message's field 1, which
  tf.io.parse_example reads while it skips a SequenceExample's frames (field 2). No feature
  flags are needed. Raises utils.InputError naming the file for an unreadable record, a record
  without an id, a label outside [0, num_classes), a video that appears twice, and for a
  pattern none of whose records has labels.
  """
  spec = {key: tf.io.RaggedFeature(tf.string) for key in ID_KEYS}
  spec[LABELS_KEY] = tf.io.RaggedFeature(tf.int64)
  parse = _plain(lambda records: tf.io.parse_example(records, spec))
  videos, source = {}, {}
  for path in match_files(data_pattern):
    first_record = 0
    try:
      for batch in tf.data.TFRecordDataset(path).batch(batch_size).map(parse):
        ids = [batch[key].to_list() for key in ID_KEYS]
        labels = batch[LABELS_KEY]
        label_lists = np.split(labels.flat_values.numpy(),
                               np.cumsum(labels.row_lengths().numpy())[:-1])
        for i, (new_id, old_id, values) in enumerate(zip(*ids, label_lists)):
          record = first_record + i
          if len(new_id) > 1 or len(old_id) > 1:
            raise utils.InputError("%s: record %d has several ids" % (path, record))
          video = (new_id or [b""])[0] or (old_id or [b""])[0]
          if not video:
            raise utils.InputError("%s: record %d has no %s" % (path, record,
                                                                " or ".join(ID_KEYS)))
          name = video.decode("utf-8", "replace")
          bad = values[(values < 0) | (values >= num_classes)]
          if len(bad):
            raise utils.InputError("%s: video %s: label %d is outside [0, %d) (check "
                                   "--num_classes)" % (path, name, bad[0], num_classes))
          if video in videos:
            raise utils.InputError("%s: video %s appears twice (also in %s)"
                                   % (path, name, source[video]))
          videos[video], source[video] = np.unique(values).astype(np.int32), path
        first_record += len(label_lists)
    except tf.errors.OpError as e:
      raise utils.InputError("%s: cannot read the records: %s"
                             % (path, record_errors.error_message(e)))
  if not any(len(labels) for labels in videos.values()):
    raise utils.InputError("no record of %s has labels (a test partition?)" % data_pattern)
  return videos
