"""Tests of make_synthetic_data.py: format, determinism, naming, labels and learnability."""
import fnmatch
import glob
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import make_synthetic_data as synth

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def records(path):
  return [r.numpy() for r in tf.data.TFRecordDataset(path)]


def parse_frame_records(directory, partition):
  """[(SequenceExample, serialized)] of all shards of a partition, in file order."""
  out = []
  for path in sorted(glob.glob(os.path.join(directory, partition + "*.tfrecord"))):
    out += [(tf.train.SequenceExample.FromString(r), r) for r in records(path)]
  return out


def frames_of(example, name):
  return np.stack([np.frombuffer(f.bytes_list.value[0], np.uint8)
                   for f in example.feature_lists.feature_list[name].feature])


def dequantize(levels):
  return levels.astype(np.float64) * (4.0 / 255.0) + (4.0 / 512.0 - 2.0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("synthetic"))
  truth = {}
  for partition, count in (("train", 30), ("validate", 11), ("test", 9)):
    truth[partition] = synth.generate_partition(
        directory, partition, count, num_shards=3, num_classes=20, seed=4, video_level=True)
  return directory, truth


# ----------------------------------------------------------------------------------------------
# Wire format and file layout.


def test_varint():
  assert synth._varint(0) == b"\x00"
  assert synth._varint(127) == b"\x7f"
  assert synth._varint(128) == b"\x80\x01"
  assert synth._varint(300) == b"\xac\x02"


def test_frame_records_are_canonical_sequence_examples(dataset):
  directory, truth = dataset
  parsed = parse_frame_records(directory, "train")
  assert [p.context.feature["id"].bytes_list.value[0].decode() for p, _ in parsed] == \
      list(truth["train"])
  for (example, serialized), labels in zip(parsed, truth["train"].values()):
    # Our hand-written bytes are exactly what protobuf itself would serialize.
    assert example.ByteSize() == len(serialized)
    assert set(example.context.feature) == {"id", "labels"}
    assert list(example.context.feature["labels"].int64_list.value) == labels
    rgb, audio = frames_of(example, "rgb"), frames_of(example, "audio")
    assert rgb.shape[1] == 1024 and audio.shape[1] == 128
    assert rgb.shape[0] == audio.shape[0]
    assert 10 <= rgb.shape[0] <= 360


def test_video_level_records_hold_the_dequantized_frame_means(dataset):
  directory, _ = dataset
  frame_records = parse_frame_records(directory, "validate")
  video_records = []
  for path in sorted(glob.glob(os.path.join(directory, "video_level", "validate*.tfrecord"))):
    video_records += [tf.train.Example.FromString(r) for r in records(path)]
  assert len(video_records) == len(frame_records) == 11
  for (sequence, _), video in zip(frame_records, video_records):
    features = video.features.feature
    assert features["id"].bytes_list.value == sequence.context.feature["id"].bytes_list.value
    assert (features["labels"].int64_list.value
            == sequence.context.feature["labels"].int64_list.value)
    for frame_name, mean_name, size in (("rgb", "mean_rgb", 1024), ("audio", "mean_audio", 128)):
      mean = np.array(features[mean_name].float_list.value)
      assert mean.shape == (size,)
      np.testing.assert_allclose(mean, dequantize(frames_of(sequence, frame_name)).mean(0),
                                 atol=1e-6)


def test_file_names_and_readme_globs(dataset):
  directory, _ = dataset
  names = sorted(n for n in os.listdir(directory) if n.endswith(".tfrecord"))
  assert names == ["test0000.tfrecord", "test0001.tfrecord", "test0002.tfrecord",
                   "train0000.tfrecord", "train0001.tfrecord", "train0002.tfrecord",
                   "validate0000.tfrecord", "validate0001.tfrecord", "validate0002.tfrecord"]
  assert fnmatch.filter(names, "*a*??.tfrecord") == [n for n in names if n[:2] in ("tr", "va")]
  assert fnmatch.filter(names, "test*.tfrecord") == names[:3]
  assert sorted(os.listdir(os.path.join(directory, "video_level"))) == names


def test_test_partition_has_no_labels_but_ground_truth_csv(dataset):
  directory, truth = dataset
  for example, _ in parse_frame_records(directory, "test"):
    assert set(example.context.feature) == {"id"}
  for partition in ("train", "validate", "test"):
    loaded = synth.load_ground_truth(os.path.join(directory, partition + "_ground_truth.csv"))
    assert loaded == truth[partition]
  with open(os.path.join(directory, "test_ground_truth.csv")) as f:
    header, first = f.readline().strip(), f.readline().strip()
  assert header == "VideoId,Labels"
  video_id, labels = first.split(",")
  assert labels == " ".join(str(l) for l in truth["test"][video_id])


def test_video_id_key_and_forced_labels(tmp_path):
  truth = synth.generate_partition(str(tmp_path), "test", 3, num_classes=5, seed=1,
                                   id_key="video_id", with_labels=True, max_frames_gen=12)
  for (example, _), labels in zip(parse_frame_records(str(tmp_path), "test"), truth.values()):
    assert set(example.context.feature) == {"video_id", "labels"}
    assert list(example.context.feature["labels"].int64_list.value) == labels


# ----------------------------------------------------------------------------------------------
# Determinism, ids, labels, lengths.


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
  def make(name, seed):
    directory = str(tmp_path / name)
    synth.generate_partition(directory, "train", 12, num_shards=2, num_classes=9, seed=seed,
                             video_level=True, max_frames_gen=40)
    files = sorted(glob.glob(os.path.join(directory, "**", "*.*"), recursive=True))
    return {os.path.relpath(f, directory): open(f, "rb").read() for f in files}

  first, again, other = make("a", 3), make("b", 3), make("c", 4)
  assert len(first) == 5   # 2 frame shards, 2 video-level shards, 1 CSV
  assert first == again
  assert all(first[name] != other[name] for name in first)


def test_ids_are_youtube_like_and_unique_across_partitions():
  ids = []
  for partition in ("train", "validate", "test", "custom"):
    ids += synth.video_ids(0, partition, 3000)
  assert len(set(ids)) == len(ids)
  assert all(len(i) == 11 and set(i) <= set(synth._ID_ALPHABET) for i in ids)
  assert synth.video_ids(0, "train", 5) == synth.video_ids(0, "train", 5)
  assert synth.video_ids(0, "train", 5) != synth.video_ids(1, "train", 5)


def test_labels_cover_every_class_with_zipf_like_frequencies():
  rng = np.random.default_rng(0)
  labels = synth.assign_labels(rng, 2000, 300, max_labels=4)
  counts = np.bincount(np.concatenate(labels), minlength=300)
  assert np.all(counts >= 1)
  assert {len(l) for l in labels} == {1, 2, 3, 4}
  assert all(l == sorted(set(l)) for l in labels)
  assert counts[:10].mean() > 5 * counts[-100:].mean()   # frequent head, rare tail
  # More classes than label slots: still every class, some videos get extra labels.
  few = synth.assign_labels(rng, 5, 30, max_labels=4)
  assert sorted(set(np.concatenate(few))) == list(range(30))


def test_video_lengths_cover_both_sides_of_300(dataset):
  directory, _ = dataset
  lengths = [frames_of(example, "rgb").shape[0]
             for example, _ in parse_frame_records(directory, "train")]
  assert min(lengths) < 300 < max(lengths)


def test_invalid_arguments(tmp_path):
  with pytest.raises(ValueError, match="id_key"):
    synth.generate_partition(str(tmp_path), "train", 2, id_key="vid")
  with pytest.raises(ValueError, match="min_frames"):
    synth.generate_partition(str(tmp_path), "train", 2, min_frames=20, max_frames_gen=10)


# ----------------------------------------------------------------------------------------------
# Learnability.


def mean_features(directory, partition, num_classes):
  """Video-level mean features and multi-hot labels from the ground truth."""
  features = []
  for path in sorted(glob.glob(os.path.join(directory, partition + "*.tfrecord"))):
    for record in records(path):
      f = tf.train.Example.FromString(record).features.feature
      features.append(np.concatenate([f["mean_rgb"].float_list.value,
                                      f["mean_audio"].float_list.value]))
  truth = synth.load_ground_truth(os.path.join(directory, partition + "_ground_truth.csv"))
  labels = np.zeros((len(truth), num_classes))
  for row, classes in enumerate(truth.values()):
    labels[row, classes] = 1.0
  return np.array(features), labels


def test_labels_are_learnable_from_mean_features(tmp_path):
  num_classes, directory = 40, str(tmp_path)
  for partition, count in (("train", 800), ("validate", 400)):
    synth.generate_partition(directory, partition, count, num_classes=num_classes, seed=0,
                             frame_level=False, video_level=True, max_frames_gen=120)
  x_train, y_train = mean_features(directory, "train", num_classes)
  x_valid, y_valid = mean_features(directory, "validate", num_classes)
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  centroids = unit(y_train.T @ unit(x_train))
  top1 = np.argmax(unit(x_valid) @ centroids.T, axis=1)
  hit_at_1 = y_valid[np.arange(len(y_valid)), top1].mean()
  chance = y_valid[:, y_train.sum(0).argmax()].mean()   # always guess the most frequent class
  print("nearest-centroid hit@1 %.3f, most-frequent-class hit@1 %.3f" % (hit_at_1, chance))
  assert chance < 0.4
  assert hit_at_1 > 0.9


# ----------------------------------------------------------------------------------------------
# Command line.


def test_command_line(tmp_path):
  command = [sys.executable, os.path.join(ROOT, "make_synthetic_data.py"),
             "--output_dir=%s" % tmp_path, "--partition=train,test", "--num_videos=4",
             "--num_shards=2", "--num_classes=6", "--max_frames_gen=20", "--with_labels=false",
             "--id_key=video_id"]
  done = subprocess.run(command, capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr
  assert "wrote 4 train videos" in done.stdout
  assert sorted(os.listdir(str(tmp_path))) == [
      "test0000.tfrecord", "test0001.tfrecord", "test_ground_truth.csv",
      "train0000.tfrecord", "train0001.tfrecord", "train_ground_truth.csv"]
  example, _ = parse_frame_records(str(tmp_path), "train")[0]
  assert set(example.context.feature) == {"video_id"}

  bad = subprocess.run(command + ["--min_frames=30"], capture_output=True, text=True,
                       timeout=120)
  assert bad.returncode != 0
  assert "error: need 0 <= min_frames <= max_frames_gen" in bad.stderr
