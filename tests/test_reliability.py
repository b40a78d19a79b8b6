"""Bad input explains itself: one `error:` line naming the file (and record or line), a
non-zero exit, no partial output. Also --skip_corrupt_records, unwritable outputs, and a fuzz
test of the reader (random and mutated records: a clean error or a correct parse, never a
crash or a hang).

The scripts run as subprocesses for the cases where the script's own handling matters,
several at a time (each pays for importing TensorFlow); the other cases go through the
readers directly. The CSV cases of file_averaging.py are in tests/test_file_averaging.py.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import inference
import readers
from conftest import (ROOT, VIDEO_LEVEL_CLASSES, call_main, limit_file_size, one_line_error,
                      script_environment)
from tests.test_readers import write_records
import utils
from willow import configuration
from willow import models
from willow import training

NUM_CLASSES = VIDEO_LEVEL_CLASSES
VIDEO_FLAGS = ["--model=MoeModel", "--feature_names=mean_rgb,mean_audio",
               "--feature_sizes=1024,128", "--num_classes=%d" % NUM_CLASSES]
# Compiling the step with XLA adds seconds to each of the many starts and has nothing to do
# with checkpoints or input errors.
FAST_ARGS = ["--jit_compile=false"]


def start_script(script, args, preexec_fn=None):
  return subprocess.Popen([sys.executable, os.path.join(ROOT, script)] + list(args),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          env=script_environment(), preexec_fn=preexec_fn)


def run_concurrently(commands, at_once=4):
  """{name: (returncode, stderr)} of {name: (script, args[, preexec_fn])}, `at_once` at a
  time: most of a failing run is importing TensorFlow, which overlaps well."""
  results, names = {}, list(commands)
  for start in range(0, len(names), at_once):
    running = {name: start_script(*commands[name]) for name in names[start:start + at_once]}
    for name, process in running.items():
      _, stderr = process.communicate(timeout=900)
      results[name] = process.returncode, stderr
  return results


def no_output(path):
  """Neither the output nor a temporary sibling of it exists."""
  folder, name = os.path.split(path)
  return not os.path.exists(path) and not [n for n in os.listdir(folder) if name in n]


# ------------------------------------------------------------------------------------------
# Data and a trained video-level model.

def video_example(video_id, labels, mean_rgb=None, mean_audio=None):
  example = tf.train.Example()
  example.features.feature["id"].bytes_list.value.append(video_id)
  example.features.feature["labels"].int64_list.value.extend(labels)
  example.features.feature["mean_rgb"].float_list.value.extend(
      [0.01] * 1024 if mean_rgb is None else mean_rgb)
  example.features.feature["mean_audio"].float_list.value.extend(
      [0.02] * 128 if mean_audio is None else mean_audio)
  return example.SerializeToString()


def record_offsets(path):
  """Byte offset of each record of a TFRecord file (from the length fields)."""
  data, offsets, position = open(path, "rb").read(), [], 0
  while position < len(data):
    offsets.append(position)
    position += int.from_bytes(data[position:position + 8], "little") + 16
  return offsets


def corrupt_record(path, index):
  """Flips a byte inside the data of record `index` (its checksum no longer matches)."""
  offset = record_offsets(path)[index] + 12 + 5
  with open(path, "r+b") as f:
    f.seek(offset)
    byte = f.read(1)
    f.seek(offset)
    f.write(bytes([byte[0] ^ 0x5A]))


def truncate(path, drop_bytes):
  data = open(path, "rb").read()
  with open(path, "wb") as f:
    f.write(data[:-drop_bytes])


@pytest.fixture(scope="module")
def trained_dir(video_level_dir, tmp_path_factory):
  """A video-level MoE trained for 2 steps (in-process: cheaper than a subprocess)."""
  train_dir = str(tmp_path_factory.mktemp("trained") / "train")
  config = models.ModelConfig(model="MoeModel", feature_names=("mean_rgb", "mean_audio"),
                              feature_sizes=(1024, 128), num_classes=NUM_CLASSES)
  options = training.TrainOptions(
      train_dir=train_dir, data_pattern=os.path.join(video_level_dir, "train*.tfrecord"),
      batch_size=8, num_readers=1, max_steps=2, export_model_steps=0, log_steps=1,
      jit_compile="false")
  training.Trainer(config, options, tf.distribute.get_strategy()).run()
  assert tf.train.latest_checkpoint(train_dir).endswith("model.ckpt-2")
  return train_dir


@pytest.fixture(scope="module")
def bad_sets(video_level_dir, tmp_path_factory):
  """Input directories of the script-level cases, each a good file plus bad ones."""
  root = tmp_path_factory.mktemp("bad_sets")
  good = [video_example(b"good%d" % i, [i % NUM_CLASSES]) for i in range(10)]
  sets = {}
  # A truncated file.
  sets["truncated"] = str(root / "truncated")
  os.makedirs(sets["truncated"])
  write_records(os.path.join(sets["truncated"], "a_good.tfrecord"), good)
  path = write_records(os.path.join(sets["truncated"], "b_cut.tfrecord"), good[:4])
  truncate(path, 100)
  # A record with a bad checksum in the middle of a file, and a file with undecodable records
  # between good ones.
  sets["mixed"] = str(root / "mixed")
  os.makedirs(sets["mixed"])
  write_records(os.path.join(sets["mixed"], "a_good.tfrecord"), good)
  path = write_records(os.path.join(sets["mixed"], "b_crc.tfrecord"),
                       [video_example(b"crc%d" % i, [1]) for i in range(5)])
  corrupt_record(path, 2)
  write_records(os.path.join(sets["mixed"], "c_records.tfrecord"), [
      video_example(b"ok1", [1]), b"not a protocol buffer \xff\xff",
      video_example(b"short", [1], mean_rgb=[0.1] * 1000), video_example(b"ok2", [2])])
  # A training file with a label outside [0, NUM_CLASSES).
  sets["label"] = str(root / "label")
  os.makedirs(sets["label"])
  write_records(os.path.join(sets["label"], "train_labels.tfrecord"),
                good[:3] + [video_example(b"v25", [3, 25])] + good[3:])
  # Directories only.
  sets["dirs"] = str(root / "dirs")
  os.makedirs(os.path.join(sets["dirs"], "train0.tfrecord"))
  return sets


# ------------------------------------------------------------------------------------------
# The scripts: bad data, bad flags, unwritable outputs, --skip_corrupt_records.

def test_scripts_fail_with_one_line_naming_the_file_and_leave_no_output(
    video_level_dir, trained_dir, bad_sets, tmp_path):
  """Bad data through the scripts, end to end."""
  out = lambda name: str(tmp_path / (name + ".csv"))
  infer = lambda name, pattern: ("inference.py", [
      "--train_dir=" + trained_dir, "--output_file=" + out(name),
      "--input_data_pattern=" + pattern, "--batch_size=4"])
  results = run_concurrently({
      "truncated": infer("truncated", os.path.join(bad_sets["truncated"], "*.tfrecord")),
      "label": ("train.py", [
          "--train_dir=" + str(tmp_path / "label"), "--batch_size=4", "--max_steps=50",
          "--train_data_pattern=" + os.path.join(bad_sets["label"], "*.tfrecord"),
          "--export_model_steps=0"] + VIDEO_FLAGS + FAST_ARGS),
      # A CSV of 24 videos does not fit in 1000 bytes: a write fails as on a full disk.
      "full_disk": infer("full_disk", os.path.join(video_level_dir, "test*.tfrecord")) + (
          limit_file_size(1000),),
  })
  errors = {name: one_line_error(*result) for name, result in results.items()}
  for name, error in sorted(errors.items()):
    print("%-10s %s" % (name, error))
  cut = os.path.join(bad_sets["truncated"], "b_cut.tfrecord")
  assert errors["truncated"].startswith(
      "error: %s: not a valid TFRecord file: truncated record at byte " % cut)
  assert "(record 3 of the file;" in errors["truncated"]
  assert errors["label"] == (
      "error: %s: video v25: label 25 is outside [0, %d) (check --num_classes)"
      % (os.path.join(bad_sets["label"], "train_labels.tfrecord"), NUM_CLASSES))
  assert errors["full_disk"] == "error: cannot write %s: File too large (it was left " \
                                "unchanged)" % out("full_disk")
  for name in ("truncated", "full_disk"):
    assert no_output(out(name)), name
  # The failed training run left no checkpoint behind.
  assert not tf.io.gfile.glob(str(tmp_path / "label" / "model.ckpt-*"))


def test_bad_flags_and_patterns(monkeypatch, video_level_dir, trained_dir, bad_sets, tmp_path):
  import eval as eval_script
  import train as train_script
  test = os.path.join(video_level_dir, "test*.tfrecord")
  output = str(tmp_path / "out.csv")
  infer = ["--train_dir=" + trained_dir, "--output_file=" + output, "--input_data_pattern=" + test]
  unknown_saved_model = str(tmp_path / "unknown_saved_model")
  shutil.copytree(trained_dir, unknown_saved_model)
  with open(os.path.join(unknown_saved_model, "model_config.json"), "w") as f:
    f.write(models.ModelConfig(model="NoSuchModel").to_json())
  cases = [
      (inference, "inference", infer + ["--batch_size=0"],
       "--batch_size=0: 0 is not a positive integer"),
      (eval_script, "eval", ["--train_dir=" + trained_dir, "--eval_data_pattern=" + test,
                             "--top_k=-1"], "--top_k=-1: -1 is not a positive integer"),
      (inference, "inference", infer + ["--top_k=0"], "--top_k=0: 0 is not a positive integer"),
      (inference, "inference", infer + ["--top_k=%d" % (NUM_CLASSES + 1)],
       "--top_k=%d exceeds the model's %d classes" % (NUM_CLASSES + 1, NUM_CLASSES)),
      (inference, "inference", infer + ["--model=NoSuchModel"],
       "--model=NoSuchModel is not one of DbofModel, "),
      (inference, "inference", infer + ["--feature_names=a,b", "--feature_sizes=1"],
       "--feature_names has 2 entries (a,b) but --feature_sizes has 1 (1); they must match"),
      # Flags that contradict the saved model in a way that cannot work: the data flags.
      (inference, "inference", infer + ["--feature_names=mean_rgb", "--feature_sizes=1024"],
       "--feature_names=mean_rgb (saved: mean_rgb,mean_audio), --feature_sizes=1024 (saved: "
       "1024,128) contradicts the model configuration saved in %s" % trained_dir),
      (inference, "inference", infer + ["--frame_features=True"],
       "--frame_features=True (saved: False) contradicts the model configuration"),
      (inference, "inference", infer + ["--num_classes=3862"],
       "--num_classes=3862 (saved: %d) contradicts" % NUM_CLASSES),
      (inference, "inference", ["--train_dir=" + unknown_saved_model, "--output_file=" + output,
                                "--input_data_pattern=" + test],
       "%s: unknown model 'NoSuchModel'" % os.path.join(unknown_saved_model,
                                                       "model_config.json")),
      (train_script, "train", ["--train_dir=" + str(tmp_path / "t"), "--batch_size=-4",
                               "--train_data_pattern=" + test],
       "--batch_size=-4: -4 is not a positive integer"),
      (train_script, "train", ["--train_dir=" + str(tmp_path / "t"),
                               "--train_data_pattern=" + os.path.join(bad_sets["dirs"], "*")],
       "matches only directories"),
      (inference, "inference", ["--train_dir=" + trained_dir, "--output_file=" + output,
                                "--input_data_pattern=" + os.path.join(video_level_dir, "no*.tfr")],
       "no files match %s" % os.path.join(video_level_dir, "no*.tfr")),
  ]
  for module, script, argv, message in cases:
    with pytest.raises(utils.InputError) as info:
      call_main(monkeypatch, module, script, argv)
    assert message in str(info.value) and "\n" not in str(info.value), (argv, info.value)
    assert no_output(output)
  # Explicit architecture flags that differ from the saved model are only a warning.
  call_main(monkeypatch, inference, "inference", infer + ["--moe_num_mixtures=7", "--top_k=3"])
  assert len(open(output).read().splitlines()) == 25


def test_skip_corrupt_records_keeps_every_readable_video_and_counts_the_rest(
    monkeypatch, trained_dir, bad_sets, tmp_path, caplog):
  output = str(tmp_path / "skipped.csv")
  with caplog.at_level("INFO"):
    call_main(monkeypatch, inference, "inference", [
        "--train_dir=" + trained_dir, "--output_file=" + output, "--batch_size=4",
        "--input_data_pattern=" + os.path.join(bad_sets["mixed"], "*.tfrecord"),
        "--skip_corrupt_records"])
  ids = [line.split(",")[0] for line in open(output).read().splitlines()[1:]]
  # The good file, the records of b_crc before its corrupted one, the decodable records of
  # c_records, in file order.
  assert ids == ["good%d" % i for i in range(10)] + ["crc0", "crc1", "ok1", "ok2"]
  assert ("--skip_corrupt_records: skipped 2 record(s) that could not be decoded and the "
          "unreadable rest of 1 file(s) (%s); 14 record(s) decoded"
          % os.path.join(bad_sets["mixed"], "b_crc.tfrecord")) in caplog.text


def test_skip_corrupt_records_is_off_by_default_and_counts_at_the_reader(bad_sets, caplog):
  reader = readers.YT8MAggregatedFeatureReader(NUM_CLASSES, [1024, 128],
                                               ["mean_rgb", "mean_audio"])
  pattern = os.path.join(bad_sets["mixed"], "*.tfrecord")
  with pytest.raises(tf.errors.OpError) as info:
    for _ in readers.get_input_dataset(reader, pattern, 4, num_epochs=1):
      pass
  assert str(readers.describe_data_error(info.value, pattern)).startswith(
      "%s: not a valid TFRecord file: corrupted record at byte " % os.path.join(
          bad_sets["mixed"], "b_crc.tfrecord"))
  dataset = readers.get_input_dataset(reader, pattern, 4, num_epochs=1,
                                      skip_corrupt_records=True)
  with caplog.at_level("INFO"):
    ids = [v.decode() for batch in dataset for v in batch["video_ids"].numpy()]
  assert len(ids) == 14 and ids[-2:] == ["ok1", "ok2"]
  assert "skipped 2 record(s)" in caplog.text and "rest of 1 file(s)" in caplog.text
  with pytest.raises(utils.InputError, match="finite num_epochs"):
    readers.get_input_dataset(reader, pattern, 4, num_epochs=None, skip_corrupt_records=True)


def test_unwritable_output_file_in_process(trained_dir, video_level_dir, tmp_path):
  model, config, _ = configuration.load_trained_model(
      trained_dir, -1, models.ModelConfig(), [])
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  pattern = os.path.join(video_level_dir, "test*.tfrecord")
  for output, problem in [(str(blocker / "out.csv"), "does not exist"),
                          (str(tmp_path), "it is a directory"),
                          ("/proc/willow_out.csv", "cannot write /proc/willow_out.csv")]:
    with pytest.raises(utils.InputError, match=problem):
      inference.run_inference(model, config, pattern, output, 8, 3, 1)


# ------------------------------------------------------------------------------------------
# Each bad record through the reader pipeline: the message names the file and the record.

def sequence_example(video_id=b"vid", labels=(1,), rgb=None, audio=None):
  example = tf.train.SequenceExample()
  example.context.feature["id"].bytes_list.value.append(video_id)
  example.context.feature["labels"].int64_list.value.extend(labels)
  for name, frames in (("rgb", rgb), ("audio", audio)):
    if frames is None:
      continue
    feature_list = example.feature_lists.feature_list[name]
    for frame in frames:
      feature_list.feature.add().bytes_list.value.append(bytes(frame))
  return example.SerializeToString(deterministic=True)


def good_record(video_id=b"vid"):
  return sequence_example(video_id, rgb=[[1] * 4] * 3, audio=[[2] * 2] * 3)


def small_reader():
  return readers.YT8MFrameFeatureReader(num_classes=10, feature_sizes=[4, 2],
                                        feature_names=["rgb", "audio"], max_frames=5)


BAD_FILES = [
    # (name, writes the bad file at path, expected message after "<path>: ")
    ("truncated", lambda p: truncate(write_records(p, [good_record()] * 3), 7),
     "not a valid TFRecord file: truncated record at byte "),
    ("bad_crc", lambda p: corrupt_record(write_records(p, [good_record()] * 3), 1),
     "not a valid TFRecord file: corrupted record at byte "),
    ("random_bytes", lambda p: open(p, "wb").write(np.random.default_rng(5).bytes(300)),
     "not a valid TFRecord file: corrupted record at byte 0 (record 0 of the file"),
    ("not_a_sequence_example", lambda p: write_records(p, [good_record(), b"\x0a\xff\x01x"]),
     "a record is not a tf.train.SequenceExample / tf.train.Example (cannot parse it)"),
    ("missing_feature_list",
     lambda p: write_records(p, [sequence_example(b"v2", rgb=[[1] * 4])]),
     "a record has no frame-level feature list audio"),
    ("wrong_frame_length",
     lambda p: write_records(p, [sequence_example(b"v3", rgb=[[1] * 4, [1] * 5],
                                                  audio=[[2] * 2] * 2)]),
     "video v3: frame 1 of feature rgb has 5 bytes, expected 4 (check --feature_sizes)"),
    ("label_out_of_range",
     lambda p: write_records(p, [good_record(), sequence_example(
         b"v4", labels=(3, 10), rgb=[[1] * 4], audio=[[2] * 2])]),
     "video v4: label 10 is outside [0, 10) (check --num_classes)"),
    # An id that is not UTF-8 (found by the fuzzer) is shown with replacement characters:
    # raw, it made TensorFlow's error itself fail to decode (UnicodeDecodeError).
    ("id_not_utf8",
     lambda p: write_records(p, [sequence_example(b"v\xb05", labels=(10,), rgb=[[1] * 4],
                                                  audio=[[2] * 2])]),
     "video v\ufffd5: label 10 is outside [0, 10) (check --num_classes)"),
]


def test_each_bad_record_is_one_line_naming_file_and_record(tmp_path):
  write_records(tmp_path / "a_good.tfrecord", [good_record(b"g%d" % i) for i in range(3)])
  bad = write_records(tmp_path / "b_bad.tfrecord", [])
  pattern = str(tmp_path / "*.tfrecord")
  # One pipeline for all cases (building one traces the reader): it re-reads its files on
  # every pass, and b_bad.tfrecord is rewritten between passes.
  dataset = readers.get_input_dataset(small_reader(), pattern, 2, num_epochs=1)
  for name, write, problem in BAD_FILES:
    write(bad)
    with pytest.raises(tf.errors.OpError) as info:
      for _ in dataset:
        pass
    message = str(readers.describe_data_error(info.value, pattern))
    assert message.startswith(bad + ": " + problem), (name, message)
    assert "\n" not in message and "{{" not in message and "[[" not in message, message
  write_records(bad, [])
  assert sum(int(b["num_frames"].shape[0]) for b in dataset) == 3


# ------------------------------------------------------------------------------------------
# Fuzzing the reader: runs in a subprocess, so that a crash or a hang fails the test instead
# of taking pytest down.

FUZZ_GOOD, FUZZ_BAD = "/data/good.tfrecord", "/data/fuzz.tfrecord"
FUZZ_MAX_FRAMES = 5


def dequantize(levels):
  return np.asarray(levels, np.float32) * np.float32(4.0 / 255.0) + np.float32(-1.9921875)


def canonical_message(message_class, serialized):
  """The parsed message, or None when the bytes do not parse or are not as a protobuf writer
  encodes them (unknown or repeated fields, ...): there the parsers legitimately differ
  (TensorFlow's rejects unknown fields the protobuf library keeps; of repeated fields
  TensorFlow keeps the first, protobuf the last)."""
  from google.protobuf import message
  try:
    parsed = message_class.FromString(serialized)
  except message.DecodeError:
    return None
  parsed.DiscardUnknownFields()
  return parsed if parsed.SerializeToString(deterministic=True) == serialized else None


def reference_decode(serialized):
  """What the frame reader must return for a record, decoded with the protobuf library:
  ("ok", outputs), ("error", None) when the reader must refuse it, or ("either", None) for
  wire-format corner cases where TensorFlow's parser and the protobuf library may differ."""
  example = canonical_message(tf.train.SequenceExample, serialized)
  if example is None:
    return "either", None
  context = example.context.feature

  def single(feature, kind):
    if feature.WhichOneof("kind") is None:
      return "either"
    if feature.WhichOneof("kind") != kind or len(getattr(feature, kind).value) != 1:
      return "error"
    return getattr(feature, kind).value[0]

  ids = {}
  for key in ("id", "video_id"):
    if key in context:
      value = single(context[key], "bytes_list")
      if value in ("either", "error"):
        return value, None
      ids[key] = value
  labels = []
  if "labels" in context:
    kind = context["labels"].WhichOneof("kind")
    if kind is None:
      return "either", None
    if kind != "int64_list":
      return "error", None
    labels = list(context["labels"].int64_list.value)
  frames = {}
  for name in ("rgb", "audio"):
    if name not in example.feature_lists.feature_list:
      return "error", None
    values = []
    for feature in example.feature_lists.feature_list[name].feature:
      value = single(feature, "bytes_list")
      if value in ("either", "error"):
        return value, None
      values.append(value)
    frames[name] = values
  if any(len(f) != size for name, size in (("rgb", 4), ("audio", 2)) for f in frames[name]):
    return "error", None
  if any(not 0 <= label < 10 for label in labels):
    return "error", None
  num_frames = min(len(frames["rgb"]), len(frames["audio"]), FUZZ_MAX_FRAMES)
  matrix = np.zeros([FUZZ_MAX_FRAMES, 6], np.float32)
  for t in range(num_frames):
    matrix[t] = dequantize(list(frames["rgb"][t]) + list(frames["audio"][t]))
  multi_hot = np.zeros([10], np.float32)
  multi_hot[labels] = 1.0
  return "ok", dict(video_ids=ids.get("id") or ids.get("video_id") or b"",
                    video_matrix=matrix, labels=multi_hot, num_frames=num_frames)


def frame_level_mutation(rng, record):
  """A protobuf-level mutation of a frame-level record."""
  example = tf.train.SequenceExample.FromString(record)
  context, lists = example.context.feature, example.feature_lists.feature_list
  choice = rng.integers(0, 12)
  if choice == 0:    # a frame one byte too long or too short
    frames = lists[rng.choice(["rgb", "audio"])].feature
    if len(frames):
      frame = frames[int(rng.integers(0, len(frames)))].bytes_list
      frame.value[0] = frame.value[0] + b"x" if rng.random() < 0.5 else frame.value[0][:-1]
  elif choice == 1:  # a feature list dropped
    del lists[rng.choice(["rgb", "audio"])]
  elif choice == 2:  # a label out of range, negative or huge
    context["labels"].int64_list.value.append(int(rng.choice([10, -1, 2 ** 62, 11])))
  elif choice == 3:  # labels of the wrong type
    del context["labels"]
    context["labels"].float_list.value.append(1.0)
  elif choice == 4:  # an id of the wrong type, or two ids
    del context["id"]
    if rng.random() < 0.5:
      context["id"].int64_list.value.append(7)
    else:
      context["id"].bytes_list.value.extend([b"a", b"b"])
  elif choice == 5:  # a frame holding two byte strings, or none
    frames = lists["rgb"].feature
    if len(frames):
      if rng.random() < 0.5:
        frames[0].bytes_list.value.append(b"1234")
      else:
        frames[0].bytes_list.ClearField("value")
  elif choice == 6:  # more frames than max_frames
    for _ in range(int(rng.integers(1, 9))):
      lists["rgb"].feature.add().bytes_list.value.append(rng.bytes(4))
      lists["audio"].feature.add().bytes_list.value.append(rng.bytes(2))
  elif choice == 7:  # unequal frame counts, or an empty list
    name = rng.choice(["rgb", "audio"])
    del lists[name].feature[int(rng.integers(0, len(lists[name].feature) + 1)):]
  elif choice == 8:  # unknown context features and feature lists (ignored)
    context["extra"].float_list.value.append(1.5)
    lists["extra"].feature.add().int64_list.value.append(3)
  elif choice == 9:  # the old id key, non-UTF-8 bytes
    del context["id"]
    context["video_id"].bytes_list.value.append(b"\xff\xfe" + rng.bytes(3))
  elif choice == 10:  # no labels at all, or duplicates
    if rng.random() < 0.5:
      del context["labels"]
    else:
      context["labels"].int64_list.value.extend([1, 1, 2])
  else:              # a frame of the wrong kind
    lists["audio"].feature.add().float_list.value.append(0.5)
  return example.SerializeToString(deterministic=True)


def video_level_mutation(rng, record):
  """A protobuf-level mutation of a video-level record."""
  example = tf.train.Example.FromString(record)
  features = example.features.feature
  choice = rng.integers(0, 9)
  name = rng.choice(["mean_rgb", "mean_audio"])
  if choice == 0:    # NaN or Inf in a feature
    values = features[name].float_list.value
    values[int(rng.integers(0, len(values)))] = float(rng.choice([np.nan, np.inf, -np.inf]))
  elif choice == 1:  # one value too many or too few
    values = features[name].float_list.value
    values.append(0.5) if rng.random() < 0.5 else values.pop()
  elif choice == 2:  # a feature missing
    del features[name]
  elif choice == 3:  # a feature of the wrong type
    del features[name]
    features[name].int64_list.value.extend([1, 2, 3])
  elif choice == 4:  # a label out of range
    features["labels"].int64_list.value.append(int(rng.choice([10, -1, 2 ** 40])))
  elif choice == 5:  # two ids
    features["id"].bytes_list.value.append(b"second")
  elif choice == 6:  # unknown features (ignored)
    features["extra"].bytes_list.value.append(b"x")
  else:              # other values, extreme but finite
    values = features[name].float_list.value
    values[int(rng.integers(0, len(values)))] = float(rng.choice([0.0, -0.0, 3e38, -1e-45]))
  return example.SerializeToString(deterministic=True)


def mutations(rng, seeds, protobuf_mutation):
  """Yields (kind, mutated record): byte-level and protobuf-level mutations of valid records."""
  while True:
    record = seeds[int(rng.integers(0, len(seeds)))]
    choice = rng.integers(0, 8)
    if choice == 0:
      data = bytearray(record)
      for _ in range(int(rng.integers(1, 9))):
        position = int(rng.integers(0, len(data)))
        data[position] ^= 1 << int(rng.integers(0, 8))
      yield "bit flips", bytes(data)
    elif choice == 1:
      yield "truncation", record[:int(rng.integers(0, len(record)))]
    elif choice == 2:
      yield "random bytes", rng.bytes(int(rng.integers(0, 200)))
    elif choice == 3:
      position = int(rng.integers(0, len(record) + 1))
      yield "insertion", record[:position] + rng.bytes(int(rng.integers(1, 10))) + record[
          position:]
    elif choice == 4:
      start = int(rng.integers(0, len(record)))
      yield "deletion", record[:start] + record[start + int(rng.integers(1, 20)):]
    elif choice == 5:
      yield "two records spliced", record + seeds[int(rng.integers(0, len(seeds)))]
    else:
      yield "protobuf field", protobuf_mutation(rng, record)


def video_reference_decode(serialized):
  """reference_decode for the video-level reader (mean_rgb 3 floats, mean_audio 2)."""
  example = canonical_message(tf.train.Example, serialized)
  if example is None:
    return "either", None
  features = example.features.feature
  kinds = {key: features[key].WhichOneof("kind") for key in features}
  if None in kinds.values():
    return "either", None
  if kinds.get("id", "bytes_list") != "bytes_list" or len(
      features["id"].bytes_list.value) > 1 or kinds.get("labels", "int64_list") != "int64_list":
    return "error", None
  columns = []
  for name, size in (("mean_rgb", 3), ("mean_audio", 2)):
    if kinds.get(name) != "float_list" or len(features[name].float_list.value) != size:
      return "error", None
    columns.extend(features[name].float_list.value)
  labels = list(features["labels"].int64_list.value) if "labels" in features else []
  if not np.all(np.isfinite(columns)) or any(not 0 <= label < 10 for label in labels):
    return "error", None
  multi_hot = np.zeros([10], np.float32)
  multi_hot[labels] = 1.0
  ids = features["id"].bytes_list.value if "id" in features else []
  return "ok", dict(video_ids=ids[0] if ids else b"",
                    video_matrix=np.asarray(columns, np.float32), labels=multi_hot,
                    num_frames=1)


# TensorFlow's batch parser reports a few wire-format inconsistencies without the record's
# name: the message then cannot name the file either (scripts name their data pattern).
UNNAMED_PARSER_ERRORS = ("a record file holds a record that cannot be parsed (Unexpected "
                         "total number of elements in feature ",)


def fuzz_reader(reader, seeds, mutate, reference, num_mutations, rng):
  """Feeds mutated records to the reader, each in a batch after a valid record from another
  file; checks each outcome against `reference`. Returns counts by outcome."""
  decode = tf.function(
      lambda records, sources: reader.prepare_serialized_examples(records, source=sources),
      input_signature=[tf.TensorSpec([None], tf.string)] * 2)
  good = seeds[-1]
  _, good_expected = reference(good)
  counts = {}
  generator = mutations(rng, seeds, mutate)
  for _ in range(num_mutations):
    kind, record = next(generator)
    expected, outputs = reference(record)
    try:
      result = {k: v.numpy() for k, v in decode(tf.constant([good, record]),
                                                tf.constant([FUZZ_GOOD, FUZZ_BAD])).items()}
    except tf.errors.OpError as e:
      message = str(readers.describe_data_error(e))
      assert message and "\n" not in message and "{{" not in message, (kind, record, message)
      assert expected != "ok", (kind, record, message)
      if message.startswith(FUZZ_BAD + ": "):
        outcome = "clean error"
      else:
        assert message.startswith(UNNAMED_PARSER_ERRORS), (kind, record, message)
        outcome = "clean error, file not named by TensorFlow"
    else:
      assert expected != "error", (kind, record, result)
      check_batch(result, [good_expected, outputs if expected == "ok" else None])
      outcome = "parsed" if expected == "ok" else "parsed (wire-format corner case)"
    counts[outcome] = counts.get(outcome, 0) + 1
  return counts


def fuzz_records(num_mutations, seed):
  """Both readers, half of the mutations each."""
  rng = np.random.default_rng(seed)
  frame_seeds = [sequence_example(b"s%d" % i, labels=list(range(i % 4)),
                                  rgb=[rng.integers(0, 256, 4, dtype=np.uint8) for _ in range(n)],
                                  audio=[rng.integers(0, 256, 2, dtype=np.uint8)
                                         for _ in range(n)])
                 for i, n in enumerate([0, 1, 5, 8, 3])]
  video_seeds = [small_video_example(b"w%d" % i, list(range(i % 3)), rng) for i in range(4)]
  video_reader = readers.YT8MAggregatedFeatureReader(10, [3, 2], ["mean_rgb", "mean_audio"])
  counts = {}
  for prefix, args in (
      ("frame level: ", (small_reader(), frame_seeds, frame_level_mutation, reference_decode)),
      ("video level: ", (video_reader, video_seeds, video_level_mutation,
                         video_reference_decode))):
    for outcome, count in fuzz_reader(*args, num_mutations // 2, rng).items():
      counts[prefix + outcome] = count
  return counts


def small_video_example(video_id, labels, rng):
  example = tf.train.Example()
  example.features.feature["id"].bytes_list.value.append(video_id)
  example.features.feature["labels"].int64_list.value.extend(labels)
  example.features.feature["mean_rgb"].float_list.value.extend(rng.normal(size=3))
  example.features.feature["mean_audio"].float_list.value.extend(rng.normal(size=2))
  return example.SerializeToString(deterministic=True)


def check_batch(result, expected):
  """Exact match with the reference where there is one; invariants everywhere."""
  frame_level = result["video_matrix"].ndim == 3
  assert result["video_matrix"].shape == ((2, FUZZ_MAX_FRAMES, 6) if frame_level else (2, 5))
  assert np.all(np.isfinite(result["video_matrix"]))
  assert result["labels"].shape == (2, 10) and set(np.unique(result["labels"])) <= {0.0, 1.0}
  for row, reference in enumerate(expected):
    num_frames = int(result["num_frames"][row])
    assert 0 <= num_frames <= (FUZZ_MAX_FRAMES if frame_level else 1)
    if frame_level:
      assert not result["video_matrix"][row, num_frames:].any()
    if reference is not None:
      assert result["video_ids"][row] == reference["video_ids"]
      assert num_frames == reference["num_frames"]
      np.testing.assert_array_equal(result["video_matrix"][row], reference["video_matrix"])
      np.testing.assert_array_equal(result["labels"][row], reference["labels"])


def fuzz_files(num_mutations, seed, directory):
  """Mutated TFRecord files through the pipeline: a clean error naming the file, or (a file
  truncated exactly between records) its first records."""
  rng = np.random.default_rng(seed)
  records = [good_record(b"r%d" % i) for i in range(4)]
  pristine = open(write_records(os.path.join(directory, "f.tfrecord"), records), "rb").read()
  boundaries = set(record_offsets(os.path.join(directory, "f.tfrecord")) + [len(pristine)])
  pattern = os.path.join(directory, "*.tfrecord")
  counts = {}
  for _ in range(num_mutations):
    data = bytearray(pristine)
    if rng.random() < 0.5:
      position = int(rng.integers(0, len(data)))
      data[position] ^= 1 << int(rng.integers(0, 8))
      truncated_at = None
    else:
      truncated_at = int(rng.choice(sorted(boundaries))) if rng.random() < 0.3 else int(
          rng.integers(0, len(data)))
      data = data[:truncated_at]
    with open(os.path.join(directory, "f.tfrecord"), "wb") as f:
      f.write(bytes(data))
    # A pipeline reads the sizes of its files when it is built.
    dataset = readers.get_input_dataset(small_reader(), pattern, 3, num_epochs=1)
    try:
      ids = [v for batch in dataset for v in batch["video_ids"].numpy()]
    except tf.errors.OpError as e:
      message = str(readers.describe_data_error(e, pattern))
      assert message.startswith(os.path.join(directory, "f.tfrecord") + ": not a valid "
                                "TFRecord file: "), message
      assert truncated_at not in boundaries, message
      counts["clean error"] = counts.get("clean error", 0) + 1
    else:
      assert truncated_at in boundaries
      assert ids == [b"r%d" % i for i in range(len(ids))]
      counts["read to a record boundary"] = counts.get("read to a record boundary", 0) + 1
  return counts


def fuzz_main(num_mutations, num_file_mutations, seed, directory):
  """Entry point of the fuzz subprocess: prints the counts as JSON."""
  counts = fuzz_records(num_mutations, seed)
  counts.update(("file: " + k, v) for k, v in
                fuzz_files(num_file_mutations, seed + 1, directory).items())
  print(json.dumps(counts, sort_keys=True))


def run_fuzz(num_mutations, num_file_mutations, seed, directory, timeout):
  code = ("import sys; sys.path[:0] = [%r, %r]; import test_reliability as t; "
          "t.fuzz_main(%d, %d, %d, %r)" % (ROOT, os.path.join(ROOT, "tests"), num_mutations,
                                           num_file_mutations, seed, directory))
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=script_environment(), timeout=timeout)
  assert result.returncode == 0, result.stderr[-5000:]
  counts = json.loads(result.stdout.strip().splitlines()[-1])
  print("\nfuzz (seed %d): %s" % (seed, counts))
  return counts


def check_fuzz_counts(counts, num_mutations, num_file_mutations):
  for level in ("frame level: ", "video level: "):
    assert sum(v for k, v in counts.items() if k.startswith(level)) == num_mutations // 2
    # Both outcomes occur often: the mutations reach past the first checks.
    assert counts[level + "clean error"] >= num_mutations // 20, counts
    assert counts[level + "parsed"] >= num_mutations // 100, counts
  assert sum(v for k, v in counts.items() if k.startswith("file: ")) == num_file_mutations


def test_fuzzed_records_give_a_clean_error_or_a_correct_parse(tmp_path):
  counts = run_fuzz(200, 30, seed=7, directory=str(tmp_path), timeout=600)
  check_fuzz_counts(counts, 200, 30)


@pytest.mark.slow
def test_fuzz_longer(tmp_path):
  counts = run_fuzz(1000, 100, seed=11, directory=str(tmp_path), timeout=3000)
  check_fuzz_counts(counts, 1000, 100)
