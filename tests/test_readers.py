"""Tests of readers.py: decoding, the tf.data pipeline and the error messages."""
import os

import numpy as np
import pytest
import tensorflow as tf

import make_synthetic_data
import readers
import utils

BIAS = np.float32(-1.9921875)
SCALE = np.float32(4.0 / 255.0)


def dequantized(levels):
  return np.asarray(levels, np.float32) * SCALE + BIAS


def sequence_example(video_id=b"vid", labels=None, id_key="id", **frames_by_feature):
  """Serialized SequenceExample; each keyword is a feature list given as a list of bytes."""
  example = tf.train.SequenceExample()
  if video_id is not None:
    example.context.feature[id_key].bytes_list.value.append(video_id)
  if labels is not None:
    example.context.feature["labels"].int64_list.value.extend(labels)
  for name, frames in frames_by_feature.items():
    feature_list = example.feature_lists.feature_list[name]
    for frame in frames:
      feature_list.feature.add().bytes_list.value.append(bytes(frame))
  return example.SerializeToString()


def video_example(video_id=b"vid", labels=None, id_key="id", **floats_by_feature):
  example = tf.train.Example()
  example.features.feature[id_key].bytes_list.value.append(video_id)
  if labels is not None:
    example.features.feature["labels"].int64_list.value.extend(labels)
  for name, values in floats_by_feature.items():
    example.features.feature[name].float_list.value.extend(values)
  return example.SerializeToString()


def write_records(path, records):
  with tf.io.TFRecordWriter(str(path)) as writer:
    for record in records:
      writer.write(record)
  return str(path)


def small_reader(**kwargs):
  args = dict(num_classes=10, feature_sizes=[4, 2], feature_names=["rgb", "audio"],
              max_frames=5)
  args.update(kwargs)
  return readers.YT8MFrameFeatureReader(**args)


def decode(reader, records, source=None):
  return {k: v.numpy() for k, v in
          reader.prepare_serialized_examples(tf.constant(records), source=source).items()}


def read_all(dataset):
  batches = list(dataset)
  return {key: np.concatenate([b[key].numpy() for b in batches]) for key in batches[0]}


def first_error(dataset, data_pattern=None):
  """Iterates the dataset; returns describe_data_error's message of the error raised."""
  with pytest.raises(tf.errors.OpError) as info:
    for _ in dataset:
      pass
  message = str(readers.describe_data_error(info.value, data_pattern))
  assert "\n" not in message and "{{" not in message and "[[" not in message, message
  return message


# ----------------------------------------------------------------------------------------------
# Frame-level decoding.


def test_exact_dequantized_values_and_exact_zero_padding():
  rgb = [[0, 1, 128, 255], [7, 8, 9, 10], [255, 254, 0, 3]]
  audio = [[0, 255], [100, 200], [1, 2]]
  out = decode(small_reader(), [sequence_example(rgb=rgb, audio=audio)])
  matrix = out["video_matrix"]
  assert matrix.shape == (1, 5, 6) and matrix.dtype == np.float32
  np.testing.assert_array_equal(matrix[0, :3, :4], dequantized(rgb))
  np.testing.assert_array_equal(matrix[0, :3, 4:], dequantized(audio))
  assert matrix[0, 0, 0] == np.float32(-1.9921875)
  # Padding is exactly +0.0, not the dequantized level 0.
  assert np.all(matrix[0, 3:] == 0.0) and not np.any(np.signbit(matrix[0, 3:]))
  np.testing.assert_array_equal(out["num_frames"], [3])
  assert out["num_frames"].dtype == np.int32


def test_truncation_to_max_frames():
  rgb = [[t] * 4 for t in range(8)]
  audio = [[t, t] for t in range(8)]
  out = decode(small_reader(), [sequence_example(rgb=rgb, audio=audio)])
  np.testing.assert_array_equal(out["num_frames"], [5])
  np.testing.assert_array_equal(out["video_matrix"][0, :, 0], dequantized(range(5)))
  np.testing.assert_array_equal(out["video_matrix"][0, :, 5], dequantized(range(5)))


def test_feature_concatenation_follows_feature_names_order():
  record = sequence_example(rgb=[[1, 2, 3, 4]], audio=[[5, 6]])
  rgb_first = decode(small_reader(), [record])["video_matrix"][0, 0]
  audio_first = decode(small_reader(feature_sizes=[2, 4], feature_names=["audio", "rgb"]),
                       [record])["video_matrix"][0, 0]
  np.testing.assert_array_equal(rgb_first, dequantized([1, 2, 3, 4, 5, 6]))
  np.testing.assert_array_equal(audio_first, dequantized([5, 6, 1, 2, 3, 4]))


def test_features_with_different_frame_counts_use_the_minimum():
  record = sequence_example(rgb=[[9] * 4] * 4, audio=[[9, 9]] * 2)
  out = decode(small_reader(), [record])
  np.testing.assert_array_equal(out["num_frames"], [2])
  assert np.all(out["video_matrix"][0, 2:] == 0.0)   # rgb frames 2 and 3 are dropped too
  np.testing.assert_array_equal(out["video_matrix"][0, :2, 0], dequantized([9, 9]))


def test_zero_frame_video():
  out = decode(small_reader(), [sequence_example(rgb=[], audio=[])])
  np.testing.assert_array_equal(out["num_frames"], [0])
  assert np.all(out["video_matrix"] == 0.0)


def test_id_keys_old_new_and_mixed_in_one_batch():
  frames = dict(rgb=[[1] * 4], audio=[[1, 1]])
  records = [sequence_example(b"new", id_key="id", **frames),
             sequence_example(b"old", id_key="video_id", **frames),
             sequence_example(None, **frames)]
  out = decode(small_reader(), records)
  assert list(out["video_ids"]) == [b"new", b"old", b""]


def test_labels_multi_hot_duplicates_collapse_and_missing_labels_are_zero():
  frames = dict(rgb=[[1] * 4], audio=[[1, 1]])
  records = [sequence_example(b"a", labels=[3, 3, 9, 0], **frames),
             sequence_example(b"b", labels=None, **frames),
             sequence_example(b"c", labels=[], **frames)]
  labels = decode(small_reader(), records)["labels"]
  assert labels.dtype == np.float32 and labels.shape == (3, 10)
  expected = np.zeros((3, 10), np.float32)
  expected[0, [0, 3, 9]] = 1.0
  np.testing.assert_array_equal(labels, expected)


def test_works_inside_tf_function():
  reader = small_reader()
  decode_fn = tf.function(reader.prepare_serialized_examples)
  record = sequence_example(labels=[1], rgb=[[4] * 4] * 2, audio=[[4, 4]] * 2)
  out = decode_fn(tf.constant([record, record]), tf.constant(["f", "f"]))
  assert out["video_matrix"].shape == (2, 5, 6)
  np.testing.assert_array_equal(out["num_frames"].numpy(), [2, 2])


def test_static_shapes_in_graph():
  reader = readers.YT8MFrameFeatureReader(feature_sizes=[1024, 128],
                                          feature_names=["rgb", "audio"])
  spec = tf.TensorSpec([None], tf.string)
  graph = tf.function(reader.prepare_serialized_examples).get_concrete_function(spec)
  shapes = {k: v.shape.as_list() for k, v in graph.structured_outputs.items()}
  assert shapes == {"video_ids": [None], "video_matrix": [None, 300, 1152],
                    "labels": [None, 4716], "num_frames": [None]}


# ----------------------------------------------------------------------------------------------
# Video-level decoding.


def test_video_level_reader():
  reader = readers.YT8MAggregatedFeatureReader(
      num_classes=5, feature_sizes=[3, 2], feature_names=["mean_rgb", "mean_audio"])
  records = [video_example(b"x", [4, 4, 1], mean_rgb=[0.5, -1.25, 2.0], mean_audio=[7.0, 8.0]),
             video_example(b"y", None, "video_id", mean_rgb=[1, 2, 3], mean_audio=[4, 5])]
  out = decode(reader, records)
  np.testing.assert_array_equal(out["video_matrix"],
                                np.float32([[0.5, -1.25, 2.0, 7.0, 8.0], [1, 2, 3, 4, 5]]))
  assert list(out["video_ids"]) == [b"x", b"y"]
  np.testing.assert_array_equal(out["labels"], [[0, 1, 0, 0, 1], [0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(out["num_frames"], [1, 1])
  assert out["num_frames"].dtype == np.int32


# ----------------------------------------------------------------------------------------------
# Round trip with the synthetic generator.


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
  root = tmp_path_factory.mktemp("synthetic")
  truth = {}
  for seed, id_key in enumerate(("id", "video_id")):   # distinct seeds: distinct video ids
    directory = str(root / id_key)
    truth[id_key] = make_synthetic_data.generate_partition(
        directory, "train", 23, num_shards=3, num_classes=12, seed=seed, id_key=id_key,
        video_level=True, min_frames=280, max_frames_gen=320)
    truth[id_key + "_test"] = make_synthetic_data.generate_partition(
        directory, "test", 7, num_shards=1, num_classes=12, seed=seed, id_key=id_key,
        min_frames=1, max_frames_gen=20)
  return root, truth


def frame_reader_1152(num_classes=12):
  return readers.YT8MFrameFeatureReader(num_classes=num_classes, feature_sizes=[1024, 128],
                                        feature_names=["rgb", "audio"])


def test_round_trip_generator_to_reader_with_both_id_keys(synthetic):
  root, truth = synthetic
  # One pipeline over both directories: .../id/train* (key `id`) sorts before
  # .../video_id/train* (key `video_id`); the batches of 5 mix the two keys at the boundary.
  pattern = ",".join(os.path.join(str(root), key, "train*.tfrecord") for key in ("id", "video_id"))
  out = read_all(readers.get_input_dataset(frame_reader_1152(), pattern, 5, num_epochs=1))
  expected = dict(truth["id"], **truth["video_id"])
  assert len(expected) == 46
  assert [v.decode() for v in out["video_ids"]] == list(expected)   # file x record order
  for row, labels in zip(out["labels"], expected.values()):
    assert np.flatnonzero(row).tolist() == labels
  assert out["num_frames"].max() == 300 and out["num_frames"].min() >= 280
  # Frame means equal the video-level mean features wherever no frame was truncated.
  video_pattern = ",".join(os.path.join(str(root), key, "video_level", "train*.tfrecord")
                           for key in ("id", "video_id"))
  video = read_all(readers.get_input_dataset(
      readers.YT8MAggregatedFeatureReader(12, [1024, 128], ["mean_rgb", "mean_audio"]),
      video_pattern, 5, num_epochs=1))
  assert list(video["video_ids"]) == list(out["video_ids"])
  np.testing.assert_array_equal(video["labels"], out["labels"])
  np.testing.assert_array_equal(video["num_frames"], np.ones(46))
  checked = 0
  for i, count in enumerate(out["num_frames"]):
    if count < 300:
      np.testing.assert_allclose(out["video_matrix"][i, :count].mean(0), video["video_matrix"][i],
                                 atol=2e-5)
      checked += 1
  assert checked >= 10


def test_unlabeled_test_partition_and_mixed_id_keys(synthetic):
  root, truth = synthetic
  pattern = ",".join(os.path.join(str(root), key, "test*.tfrecord") for key in ("id", "video_id"))
  out = read_all(readers.get_input_dataset(frame_reader_1152(), pattern, 14, num_epochs=1))
  assert len(out["video_ids"]) == 14
  # Sorted file list: .../id/test0000 then .../video_id/test0000, in one batch.
  assert [v.decode() for v in out["video_ids"]] == (list(truth["id_test"])
                                                    + list(truth["video_id_test"]))
  assert np.all(out["labels"] == 0.0)


# ----------------------------------------------------------------------------------------------
# Pipeline order, epochs and sharding.


@pytest.fixture
def numbered_files(tmp_path):
  """5 files of 1..5 records; video ids f<file>r<record>."""
  frames = dict(rgb=[[1] * 4], audio=[[1, 1]])
  ids = []
  for f in range(5):
    records = []
    for r in range(f + 1):
      ids.append("f%dr%d" % (f, r))
      records.append(sequence_example(ids[-1].encode(), labels=[f], **frames))
    write_records(tmp_path / ("part%d.tfrecord" % f), records)
  return str(tmp_path / "part*.tfrecord"), ids


class IdsOnlyReader(readers.BaseReader):
  """Decodes just the ids: the pipeline tests below are about order, not decoding, and this
  keeps each pipeline cheap to build."""

  def prepare_serialized_examples(self, serialized, source=None):
    context = tf.io.parse_example(serialized, {"id": tf.io.FixedLenFeature([], tf.string)})
    return {"video_ids": context["id"]}


def ids_of(dataset):
  return [v.decode() for b in dataset for v in b["video_ids"].numpy()]


def test_unshuffled_order_is_file_then_record_order(numbered_files):
  pattern, ids = numbered_files
  for num_readers in (1, 3, 8):
    got = ids_of(readers.get_input_dataset(IdsOnlyReader(), pattern, 4,
                                           num_readers=num_readers, num_epochs=1))
    assert got == ids
  # The same with the real reader.
  assert ids_of(readers.get_input_dataset(small_reader(), pattern, 4, num_epochs=1)) == ids


def test_epochs_and_drop_remainder(numbered_files):
  pattern, ids = numbered_files
  got = ids_of(readers.get_input_dataset(IdsOnlyReader(), pattern, 4, num_epochs=2))
  assert got == ids + ids
  batches = list(readers.get_input_dataset(IdsOnlyReader(), pattern, 4, num_epochs=1,
                                           drop_remainder=True))
  assert [len(b["video_ids"]) for b in batches] == [4, 4, 4]   # 15 records
  forever = readers.get_input_dataset(IdsOnlyReader(), pattern, 4, num_epochs=None)
  assert len(ids_of(forever.take(10))) == 40


def test_shuffle_is_seeded_and_complete(numbered_files):
  pattern, ids = numbered_files
  run = lambda seed: ids_of(readers.get_input_dataset(IdsOnlyReader(), pattern, 4, shuffle=True,
                                                      seed=seed, num_epochs=2))
  first, second = run(7), run(7)
  assert first == second
  assert sorted(first) == sorted(ids + ids)
  assert first[:15] != ids   # actually shuffled


@pytest.mark.parametrize("num_shards", [2, 7])
def test_sharding_covers_every_record_exactly_once(numbered_files, num_shards):
  # 5 files: 2 shards split by file, 7 by record.
  pattern, ids = numbered_files
  got = []
  for index in range(num_shards):
    got += ids_of(readers.get_input_dataset(IdsOnlyReader(), pattern, 3, num_epochs=1,
                                            num_shards=num_shards, shard_index=index,
                                            shuffle=True, seed=index))
  assert sorted(got) == sorted(ids)


def test_sharding_by_file_gives_whole_files(numbered_files):
  pattern, _ = numbered_files
  got = ids_of(readers.get_input_dataset(IdsOnlyReader(), pattern, 3, num_epochs=1,
                                         num_shards=2, shard_index=1))
  assert got == ["f1r0", "f1r1", "f3r0", "f3r1", "f3r2", "f3r3"]


def test_match_files_sorted_union_of_comma_patterns(tmp_path):
  for name in ("b.tfrecord", "a.tfrecord", "c.other"):
    (tmp_path / name).write_bytes(b"")
  (tmp_path / "sub.tfrecord").mkdir()
  pattern = "%s/*.tfrecord, %s/a*" % (tmp_path, tmp_path)
  assert readers.match_files(pattern) == [str(tmp_path / "a.tfrecord"),
                                          str(tmp_path / "b.tfrecord")]


# ----------------------------------------------------------------------------------------------
# Errors name the file and the problem.


def test_empty_glob(tmp_path):
  pattern = str(tmp_path / "nothing*.tfrecord")
  with pytest.raises(utils.InputError, match="no files match .*nothing\\*\\.tfrecord"):
    readers.get_input_dataset(small_reader(), pattern, 2)
  with pytest.raises(utils.InputError, match="empty"):
    readers.match_files(" , ")


def test_glob_matching_only_directories(tmp_path):
  (tmp_path / "train_dir").mkdir()
  with pytest.raises(utils.InputError, match="train\\*.*only directories.*train_dir"):
    readers.match_files(str(tmp_path / "train*"))


def test_feature_names_and_sizes_mismatch():
  with pytest.raises(utils.InputError, match="2 entries.*has 1"):
    readers.YT8MFrameFeatureReader(feature_names=["rgb", "audio"], feature_sizes=[1024])
  with pytest.raises(utils.InputError, match="2 entries"):
    readers.YT8MAggregatedFeatureReader(feature_names="mean_rgb,mean_audio",
                                        feature_sizes="1024")
  with pytest.raises(utils.InputError, match="positive"):
    readers.YT8MFrameFeatureReader(feature_sizes=[0])
  with pytest.raises(utils.InputError, match="max_frames"):
    readers.YT8MFrameFeatureReader(max_frames=0)


def test_bad_arguments_of_the_pipeline(numbered_files):
  pattern, _ = numbered_files
  with pytest.raises(utils.InputError, match="shard_index"):
    readers.get_input_dataset(small_reader(), pattern, 2, num_shards=2, shard_index=2)
  with pytest.raises(utils.InputError, match="batch_size"):
    readers.get_input_dataset(small_reader(), pattern, 0)


def dataset_of(tmp_path, records, reader=None, name="bad0007.tfrecord", good_first=True):
  """A pipeline over one good file and one file holding `records`."""
  good = sequence_example(b"good", labels=[1], rgb=[[1] * 4], audio=[[1, 1]])
  if good_first:
    write_records(tmp_path / "aaa.tfrecord", [good])
  path = write_records(tmp_path / name, records)
  dataset = readers.get_input_dataset(reader or small_reader(), str(tmp_path / "*.tfrecord"), 4,
                                      num_epochs=1)
  return dataset, path


def test_error_record_lacks_feature(tmp_path):
  dataset, path = dataset_of(tmp_path, [sequence_example(b"v1", rgb=[[1] * 4])])
  message = first_error(dataset)
  assert message.startswith(path + ": ")
  assert "feature list audio" in message


def direct_error(records, reader=None):
  """describe_data_error's message for a direct (eager) call on a batch from /d/bad.tfrecord.

  Cheaper than a pipeline; the file names are what get_input_dataset would pass as `source`.
  """
  good = sequence_example(b"good", labels=[1], rgb=[[1] * 4], audio=[[1, 1]])
  batch = [good] + list(records)
  source = ["/d/good.tfrecord"] + ["/d/bad.tfrecord"] * len(records)
  with pytest.raises(tf.errors.InvalidArgumentError) as info:
    (reader or small_reader()).prepare_serialized_examples(tf.constant(batch),
                                                           source=tf.constant(source))
  message = str(readers.describe_data_error(info.value))
  assert "\n" not in message and "{{" not in message, message
  return message


def test_error_wrong_frame_byte_length(tmp_path):
  # The first bad frame of the first bad record is reported.
  records = [sequence_example(b"v1", rgb=[[1] * 4] * 2, audio=[[1, 1]] * 2),
             sequence_example(b"v2", rgb=[[1] * 4, [1, 2, 3], [1]], audio=[[1, 1]] * 3)]
  assert direct_error(records) == (
      "/d/bad.tfrecord: video v2: frame 1 of feature rgb has 3 bytes, expected 4 "
      "(check --feature_sizes)")
  audio = [sequence_example(b"v3", rgb=[[1] * 4] * 2, audio=[[1, 1], [1, 1, 1]])]
  assert direct_error(audio) == (
      "/d/bad.tfrecord: video v3: frame 1 of feature audio has 3 bytes, expected 2 "
      "(check --feature_sizes)")


def test_error_label_out_of_range(tmp_path):
  record = sequence_example(b"v3", labels=[2, 12], rgb=[[1] * 4], audio=[[1, 1]])
  dataset, path = dataset_of(tmp_path, [record])
  assert first_error(dataset) == (
      path + ": video v3: label 12 is outside [0, 10) (check --num_classes)")
  negative = sequence_example(b"v4", labels=[-1], rgb=[[1] * 4], audio=[[1, 1]])
  with pytest.raises(tf.errors.InvalidArgumentError) as info:
    small_reader().prepare_serialized_examples(tf.constant([negative]))
  assert str(readers.describe_data_error(info.value)) == (
      "batch record 0: video v4: label -1 is outside [0, 10) (check --num_classes)")


def test_error_not_a_sequence_example():
  message = direct_error([b"this is not a protocol buffer"])
  assert message == ("/d/bad.tfrecord: a record is not a tf.train.SequenceExample / "
                     "tf.train.Example (cannot parse it)")


def test_error_video_level_records_given_to_frame_reader():
  message = direct_error([video_example(b"v5", [1], mean_rgb=[0.0] * 4)])
  assert message.startswith("/d/bad.tfrecord: a record has no frame-level feature list ")


def test_video_level_errors(tmp_path):
  reader = readers.YT8MAggregatedFeatureReader(10, [3, 2], ["mean_rgb", "mean_audio"])
  cases = [
      (video_example(b"w1", [1], mean_rgb=[0.0] * 3), "video w1: the record lacks feature "
       "mean_audio"),
      (video_example(b"w2", [1], mean_rgb=[0.0] * 4, mean_audio=[0.0] * 2),
       "video w2: feature mean_rgb has 4 values, expected 3 (check --feature_sizes)"),
      (video_example(b"w3", [10], mean_rgb=[0.0] * 3, mean_audio=[0.0] * 2),
       "video w3: label 10 is outside [0, 10)"),
      (b"\xff\xff not a proto", "is not a tf.train.SequenceExample / tf.train.Example"),
  ]
  good = video_example(b"ok", [1], mean_rgb=[0.0] * 3, mean_audio=[0.0] * 2)
  for record, problem in cases:
    # Direct calls (cheap) with the file names a pipeline would pass.
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
      reader.prepare_serialized_examples(tf.constant([good, record]),
                                         source=tf.constant(["/d/ok.tfrecord", "/d/v.tfrecord"]))
    message = str(readers.describe_data_error(info.value))
    assert message.startswith("/d/v.tfrecord: ") and problem in message, message
  # And once through the pipeline.
  path = write_records(tmp_path / "v.tfrecord", [cases[1][0]])
  dataset = readers.get_input_dataset(reader, str(tmp_path / "*.tfrecord"), 2, num_epochs=1)
  assert first_error(dataset) == path + ": " + cases[1][1]


def test_error_truncated_file_names_the_pattern(tmp_path):
  path = write_records(tmp_path / "t.tfrecord",
                       [sequence_example(b"v", rgb=[[1] * 4], audio=[[1, 1]])])
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[:-10])
  pattern = str(tmp_path / "*.tfrecord")
  message = first_error(readers.get_input_dataset(small_reader(), pattern, 2, num_epochs=1),
                        pattern)
  assert pattern in message and "truncated record" in message


def test_describe_data_error_fallback_strips_clutter():
  message = "{{function_node __wrapped__X}} something odd [Op:IteratorGetNext]"
  error = tf.errors.UnknownError(None, None, message)
  assert str(readers.describe_data_error(error, "p*")) == "something odd (reading p*)"


def test_an_error_with_the_nodes_stack_is_reported_by_its_message_not_a_frame():
  # TensorFlow separates the frames of "Detected at node" with blank lines.
  message = ('Graph execution error:\n\nDetected at node CheckNumerics defined at (most recent '
             'call last):\n  File "train.py", line 80, in <module>\n\n  File ".../app.py", '
             'line 316, in run\n\n  File ".../script_flags.py", line 241, in run\n\n'
             'something odd\n\t [[{{node CheckNumerics}}]] [Op:__inference_f_6]')
  error = tf.errors.InvalidArgumentError(None, None, message)
  assert str(readers.describe_data_error(error, "p*")) == "something odd (reading p*)"
