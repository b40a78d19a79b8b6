"""Segment-rated data (--segment_labels): the reader, the loss weights, the metrics against
plain-Python references, the bounded per-class top lists, the submission and its merge, and
train -> eval -> inference on generated data."""
import os
import re
import stat
import tracemalloc

import numpy as np
import pytest
import tensorflow as tf

import losses
import make_synthetic_data
import readers
from willow import configuration
from willow import models
from willow import segments
from willow import training

FRAME_SIZES = (4, 2)


def rated_record(video_id, num_frames, ratings=(), ends=True, **overrides):
  """A segment-rated SequenceExample. Frame t of rgb holds bytes t, of audio 100 + t; ratings
  are (start, class, score); overrides replace a rating list (e.g. segment_labels=[1, 2])."""
  example = tf.train.SequenceExample()
  context = example.context.feature
  context["id"].bytes_list.value.append(video_id)
  lists = {"segment_start_times": [r[0] for r in ratings],
           "segment_labels": [r[1] for r in ratings],
           "segment_scores": [r[2] for r in ratings]}
  if ends:
    lists["segment_end_times"] = [r[0] + 5 for r in ratings]
  lists.update(overrides)
  for key, values in lists.items():
    if key == "segment_scores":
      context[key].float_list.value.extend(values)
    else:
      context[key].int64_list.value.extend(values)
  for name, size, base in (("rgb", FRAME_SIZES[0], 0), ("audio", FRAME_SIZES[1], 100)):
    feature_list = example.feature_lists.feature_list[name]
    for t in range(num_frames):
      feature_list.feature.add().bytes_list.value.append(bytes([(base + t) % 256] * size))
  return example.SerializeToString()


def reader(**kwargs):
  args = dict(num_classes=10, feature_sizes=list(FRAME_SIZES), feature_names=["rgb", "audio"])
  args.update(kwargs)
  return segments.SegmentReader(**args)


def decode(records, **kwargs):
  out = reader(**kwargs).prepare_serialized_examples(tf.constant(records))
  return {k: v.numpy() for k, v in out.items()}


def dequantized(level):
  return np.float32(level) * np.float32(4.0 / 255.0) + np.float32(-1.9921875)


def expected_frames(start, num_frames):
  """[5, 6] frames of the segment at `start` of a rated_record of num_frames frames."""
  rows = [[dequantized(t)] * 4 + [dequantized(100 + t)] * 2 if t < num_frames else [0.0] * 6
          for t in range(start, start + 5)]
  return np.array(rows, np.float32)


# ----------------------------------------------------------------------------------------------
# The reader.


def test_one_example_per_rated_start_with_weights_on_rated_pairs_only():
  records = [
      rated_record(b"A", 12, [(5, 2, 1.0), (5, 3, 0.0), (0, 2, 0.0), (10, 7, 1.0),
                              (5, 2, 1.0)]),   # a repeated rating collapses
      rated_record(b"B", 7),                    # no ratings: no example
      rated_record(b"C", 9, [(0, 1, 1.0)], ends=False),
  ]
  out = decode(records)
  assert out["video_ids"].tolist() == [b"A", b"A", b"A", b"C"]
  assert out["segment_start_times"].tolist() == [0, 5, 10, 0]
  assert out["num_frames"].tolist() == [5, 5, 2, 5]   # the rating at 10 runs past frame 11
  weights = np.zeros((4, 10), np.float32)
  labels = np.zeros((4, 10), np.float32)
  for row, (label, score) in [(0, (2, 0)), (1, (2, 1)), (1, (3, 0)), (2, (7, 1)), (3, (1, 1))]:
    weights[row, label], labels[row, label] = 1.0, score
  np.testing.assert_array_equal(out["label_weights"], weights)
  np.testing.assert_array_equal(out["labels"], labels)
  for row, (start, length) in enumerate([(0, 12), (5, 12), (10, 12), (0, 9)]):
    np.testing.assert_array_equal(out["video_matrix"][row], expected_frames(start, length))


def test_every_segment_mode_covers_each_video_with_its_last_partial_segment():
  records = [rated_record(b"A", 12, [(5, 2, 1.0)]), rated_record(b"E", 0),
             rated_record(b"B", 7)]
  out = decode(records, every_segment=True)
  assert out["video_ids"].tolist() == [b"A", b"A", b"A", b"B", b"B"]
  assert out["segment_start_times"].tolist() == [0, 5, 10, 0, 5]
  assert out["num_frames"].tolist() == [5, 5, 2, 5, 2]
  assert not out["label_weights"].any() and not out["labels"].any()
  np.testing.assert_array_equal(out["video_matrix"][4], expected_frames(5, 7))


def test_pipeline_batches_count_segments_in_file_then_record_order(tmp_path):
  for name, videos in (("a.tfrecord", [(b"A", [(0, 1, 1.0), (5, 1, 0.0), (10, 1, 1.0)])]),
                       ("b.tfrecord", [(b"B", [(5, 2, 1.0)]), (b"C", [(0, 3, 1.0), (5, 3, 0.0)])])):
    with tf.io.TFRecordWriter(str(tmp_path / name)) as writer:
      for video_id, ratings in videos:
        writer.write(rated_record(video_id, 15, ratings))
  dataset = readers.get_input_dataset(reader(), str(tmp_path / "*.tfrecord"), 4, num_epochs=1)
  batches = [(b["video_ids"].numpy().tolist(), b["segment_start_times"].numpy().tolist())
             for b in dataset]
  assert batches == [([b"A", b"A", b"A", b"B"], [0, 5, 10, 5]), ([b"C", b"C"], [0, 5])]


@pytest.mark.parametrize("bad, problem", [
    (dict(segment_labels=[1, 2]),
     "segment_labels has 2 values but segment_start_times has 1 (one value per rating)"),
    (dict(segment_scores=[]),
     "segment_labels has 1 values but segment_scores has 0 (one value per rating)"),
    (dict(segment_labels=[12]), "segment label 12 is outside [0, 10) (check --num_classes)"),
    (dict(segment_start_times=[12], segment_end_times=[17]),
     "segment start time 12 is outside the video's 12 frames"),
    (dict(segment_start_times=[-5], segment_end_times=[0]),
     "segment start time -5 is outside the video's 12 frames"),
    (dict(segment_end_times=[12]), "segment end time 12 is not its start time 5 + "
                                   "--segment_size=5"),
    (dict(segment_scores=[2.5]), "segment score 2.5 is not in [0, 1]"),
])
def test_bad_ratings_fail_in_one_line_naming_file_and_video(bad, problem):
  # Decoded directly (a pipeline passes each record's file name as `source` the same way).
  batch = [rated_record(b"good", 12, [(0, 1, 1.0)]), rated_record(b"v7", 12, [(5, 1, 1.0)], **bad),
           rated_record(b"v8", 12, [(5, 1, 1.0)], segment_labels=[99])]
  with pytest.raises(tf.errors.InvalidArgumentError) as info:
    reader().prepare_serialized_examples(
        tf.constant(batch), source=tf.constant(["/d/a.tfrecord", "/d/b.tfrecord", "/d/c"]))
  assert str(readers.describe_data_error(info.value)) == "/d/b.tfrecord: video v7: " + problem


def test_bad_rating_in_the_pipeline_names_its_file(tmp_path):
  path = str(tmp_path / "bad0003.tfrecord")
  with tf.io.TFRecordWriter(path) as writer:
    writer.write(rated_record(b"good", 12, [(0, 1, 1.0)]))
    writer.write(rated_record(b"v7", 12, [(5, 1, 1.0), (15, 2, 0.0)]))
  dataset = readers.get_input_dataset(reader(), path, 4, num_epochs=1)
  with pytest.raises(tf.errors.OpError) as info:
    for _ in dataset:
      pass
  assert str(readers.describe_data_error(info.value)) == (
      path + ": video v7: segment start time 15 is outside the video's 12 frames")


def test_skipping_corrupt_records_counts_records_not_segments(tmp_path, caplog):
  path = str(tmp_path / "mixed.tfrecord")
  with tf.io.TFRecordWriter(path) as writer:
    writer.write(rated_record(b"A", 12))
    writer.write(b"not a SequenceExample")
    writer.write(rated_record(b"B", 23))
  dataset = readers.get_input_dataset(reader(every_segment=True), path, 4, num_epochs=1,
                                      skip_corrupt_records=True)
  with caplog.at_level("INFO"):
    ids = [i for batch in dataset for i in batch["video_ids"].numpy().tolist()]
  assert ids == [b"A"] * 3 + [b"B"] * 5
  assert ("--skip_corrupt_records: skipped 1 record(s) that could not be decoded; 2 record(s) "
          "decoded") in caplog.text


def test_segment_reader_needs_frame_level_features():
  config = models.ModelConfig(model="LogisticModel", frame_features=False)
  with pytest.raises(ValueError, match="--segment_labels reads frame-level records"):
    segments.segment_reader(config, 5)


# ----------------------------------------------------------------------------------------------
# Loss weights and frame sampling.


def test_weighted_losses_count_rated_pairs_only():
  rng = np.random.default_rng(0)
  predictions = rng.uniform(0.05, 0.95, (6, 5)).astype(np.float32)
  labels = (rng.random((6, 5)) < 0.4).astype(np.float32)
  weights = (rng.random((6, 5)) < 0.5).astype(np.float32)
  p, y, w = (x.astype(np.float64) for x in (predictions, labels, weights))
  cross_entropy = -(y * np.log(p + 1e-5) + (1 - y) * np.log(1 - p + 1e-5))
  hinge = np.maximum(0.0, 1.0 - (2 * y - 1) * p)
  expected = {"CrossEntropyLoss": np.mean(np.sum(cross_entropy * w, axis=1)),
              "HingeLoss": np.mean(np.sum(hinge * w, axis=1))}
  softmax = []
  for row in range(6):   # softmax over the rated classes of each segment
    rated = np.flatnonzero(w[row])
    if not y[row, rated].any():
      softmax.append(0.0)
      continue
    log_softmax = p[row, rated] - np.log(np.sum(np.exp(p[row, rated])))
    softmax.append(-np.sum(y[row, rated] / y[row, rated].sum() * log_softmax))
  expected["SoftmaxLoss"] = np.mean(softmax)
  for name, value in expected.items():
    prediction_tensor = tf.constant(predictions)
    with tf.GradientTape() as tape:
      tape.watch(prediction_tensor)
      loss = losses.get_loss(name).calculate_loss(prediction_tensor, labels,
                                                  label_weights=weights)
    assert float(loss) == pytest.approx(value, rel=1e-5), name
    # Unrated classes are unknown: the loss does not push them anywhere.
    assert not tape.gradient(loss, prediction_tensor).numpy()[weights == 0].any(), name


def test_segments_are_read_whole_not_resampled():
  config = models.ModelConfig(model="NetVLADModelLF", feature_names=("rgb", "audio"),
                              feature_sizes=(16, 8), frame_features=True, num_classes=7,
                              netvlad_cluster_size=4, netvlad_hidden_size=8, iterations=30)
  model = models.build_model(config)
  assert model.frame_sampling() == (30, True)
  model.segment_size = 5
  assert model.frame_sampling() == (5, False)
  model.segment_size = 50   # --iterations below the segment: the flags' sampler
  assert model.frame_sampling() == (30, True)
  model.segment_size = 5
  frames = tf.random.stateless_normal([4, 5, 24], seed=[1, 2])
  num_frames = tf.constant([5, 5, 3, 5])
  first = model(frames, num_frames, training=True)["predictions"]
  # In training mode too: the same segment gives the same output (no random draw of frames).
  np.testing.assert_array_equal(model(frames, num_frames, training=True)["predictions"], first)


# ----------------------------------------------------------------------------------------------
# Metrics against plain-Python loops.


def reference_aps(pairs, max_pred):
  """{class: AP}: each class's pairs sorted by score (best first), ties by segment id, cut at
  max_pred; the precision at each positive, summed, over all the class's positives."""
  aps = {}
  for c in sorted({pair[0] for pair in pairs}):
    ranked = sorted([pair for pair in pairs if pair[0] == c], key=lambda p: (-p[1], p[3]))
    num_positives = sum(1 for pair in ranked if pair[2])
    if not num_positives:
      continue
    hits, total = 0, 0.0
    for rank, pair in enumerate(ranked[:max_pred], 1):
      if pair[2]:
        hits += 1
        total += hits / rank
    aps[c] = total / num_positives
  return aps


def random_pairs(seed, count=400, num_classes=6):
  """(class, score, positive, segment id) with many tied scores."""
  rng = np.random.default_rng(seed)
  ids = [b"v%03d:%d" % (v, 5 * s) for v, s in zip(rng.integers(0, 80, count),
                                                   rng.integers(0, 12, count))]
  pairs = {(int(rng.integers(num_classes)), i) for i in ids}
  return [(c, float(rng.integers(0, 8)) / 7, bool(rng.random() < 0.3), i) for c, i in pairs]


@pytest.mark.parametrize("max_pred", [1, 4, 10 ** 6])
def test_segment_average_precisions_against_a_plain_loop(max_pred):
  pairs = random_pairs(max_pred)
  classes, scores, positive, ids = (np.array(column, dtype=object if k == 3 else None)
                                    for k, column in enumerate(zip(*pairs)))
  aps = segments.class_average_precisions(classes.astype(np.int64), scores.astype(float),
                                          positive.astype(bool), lambda i: ids[i], max_pred)
  expected = reference_aps(pairs, max_pred)
  assert aps.keys() == expected.keys()
  for c in expected:
    assert aps[c] == pytest.approx(expected[c], abs=1e-12)


def test_average_precision_by_hand():
  # Class 0 ranked pos, neg, pos, pos with a cut at 3: (1/1 + 2/3) / 3 positives.
  aps = segments.class_average_precisions(
      [0, 0, 0, 0, 1], [0.9, 0.8, 0.7, 0.6, 0.5], [True, False, True, True, False],
      lambda i: [b"s%d" % j for j in i], 3)
  assert aps == {0: pytest.approx((1 + 2 / 3) / 3)}


def test_rated_pairs_gap_against_a_plain_loop():
  rng = np.random.default_rng(5)
  predictions = rng.random((30, 7))
  labels = (rng.random((30, 7)) < 0.3).astype(np.float32)
  weights = (rng.random((30, 7)) < 0.4).astype(np.float32)
  rated = sorted(((predictions[s, c], labels[s, c]) for s in range(30) for c in range(7)
                  if weights[s, c]), key=lambda pair: -pair[0])
  hits, total = 0, 0.0
  for rank, (_, label) in enumerate(rated, 1):
    if label:
      hits += 1
      total += hits / rank
  assert segments.rated_pairs_gap(predictions, labels, weights) == pytest.approx(total / hits)


def test_segment_metrics_do_not_depend_on_batches_and_honour_class_ids():
  rng = np.random.default_rng(2)
  video_ids = np.array([b"v%02d" % (i // 3) for i in range(24)], dtype=object)
  starts = np.array([5 * (i % 3) for i in range(24)])
  predictions = np.round(rng.random((24, 5)), 1)   # ties, broken by segment id
  labels = (rng.random((24, 5)) < 0.4).astype(np.float32)
  weights = (rng.random((24, 5)) < 0.5).astype(np.float32)
  results = []
  for bounds in ([0, 24], [0, 5, 6, 17, 24]):
    metrics = segments.SegmentMetrics(5, 3)
    for a, b in zip(bounds[:-1], bounds[1:]):
      metrics.accumulate(video_ids[a:b], starts[a:b], predictions[a:b], labels[a:b],
                         weights[a:b], mean_loss=1.0)
    results.append(metrics.get())
  assert results[0]["aps"] == results[1]["aps"] and results[0]["gap"] == results[1]["gap"]
  pairs = [(c, predictions[s, c], bool(labels[s, c]), b"%s:%d" % (video_ids[s], starts[s]))
           for s in range(24) for c in range(5) if weights[s, c]]
  expected = reference_aps(pairs, 3)
  assert results[0]["segment_map"] == pytest.approx(np.mean(list(expected.values())))
  restricted = segments.SegmentMetrics(5, 3, class_ids=[1, 3])
  restricted.accumulate(video_ids, starts, predictions, labels, weights, mean_loss=1.0)
  assert set(restricted.get()["aps"]) == {1, 3} & set(expected)


# ----------------------------------------------------------------------------------------------
# Per-class top lists.


def test_top_lists_match_a_full_sort_with_ties_whatever_the_batches():
  rng = np.random.default_rng(3)
  num_segments, class_ids = 90, [0, 2, 5]
  video_ids = [b"%c%d" % (b"qazwsx"[i // 15], i // 15) for i in range(num_segments)]
  starts = [5 * (i % 15) for i in range(num_segments)]
  scores = np.round(rng.random((num_segments, 3)), 1)
  ids = segments.segment_ids(video_ids, starts)
  expected = []
  for column, c in enumerate(class_ids):
    ranked = sorted(zip(scores[:, column], ids), key=lambda pair: (-pair[0], pair[1]))[:7]
    expected.append((c, [i for _, i in ranked], [s for s, _ in ranked]))
  for bounds, min_candidates in (([0, 90], 1 << 20), ([0, 1, 13, 40, 41, 77, 90], 4)):
    top = segments.ClassTopLists(class_ids, 7, min_candidates=min_candidates)
    for a, b in zip(bounds[:-1], bounds[1:]):
      top.add(video_ids[a:b], starts[a:b], scores[a:b])
    assert top.result() == expected


def test_top_lists_memory_is_bounded_where_the_score_matrix_would_not_fit():
  """3.3e9 (segment, class) scores: 13 GB as a float32 matrix, 26 GB in float64 (inference's
  default precision; the machine has 24 GB). The top lists' allocations stay below 1% of the
  float32 matrix. Every score is below 0.5 except 2 x max_pred planted per class (the first
  max_pred in the first batch, the others anywhere), so the expected lists are known."""
  num_classes, max_pred, batch, num_batches = 4000, 10, 1024, 800
  rng = np.random.default_rng(4)
  pool = (rng.random((batch, num_classes)) * 0.5).astype(np.float32)  # reused: costs nothing
  planted = {}   # (batch index, row, class) -> score
  for c in range(num_classes):
    for row in rng.choice(batch, max_pred, replace=False):
      planted[0, int(row), c] = np.float32(0.5 + 0.5 * rng.random())
    for b, row in zip(rng.integers(1, num_batches, max_pred), rng.integers(0, batch, max_pred)):
      planted[int(b), int(row), c] = np.float32(0.5 + 0.5 * rng.random())
  by_batch = {}
  for (b, row, c), score in planted.items():
    by_batch.setdefault(b, []).append((row, c, score))
  videos = [b"-%03d" % (row // 8) for row in range(batch)]   # 8 segments a video
  starts = [5 * (row % 8) for row in range(batch)]

  tracemalloc.start()
  top = segments.ClassTopLists(list(range(num_classes)), max_pred)
  for b in range(num_batches):
    scores = pool
    if b in by_batch:
      scores = pool.copy()
      rows, classes, values = zip(*by_batch[b])
      scores[list(rows), list(classes)] = values
    prefix = b"v%03d" % b
    top.add([prefix + v for v in videos], starts, scores)
  result = top.result()
  peak = tracemalloc.get_traced_memory()[1]
  tracemalloc.stop()
  dense_float32 = num_batches * batch * num_classes * 4
  assert 2 * dense_float32 > 24e9 and peak < dense_float32 / 100, peak
  expected = {c: [] for c in range(num_classes)}
  for (b, row, c), score in planted.items():
    expected[c].append((-float(score), b"v%03d%s:%d" % (b, videos[row], starts[row])))
  assert [c for c, _, _ in result] == list(range(num_classes))
  for c, ids, scores in result:
    best = sorted(expected[c])[:max_pred]
    assert ids == [i for _, i in best] and scores == [-s for s, _ in best]


# ----------------------------------------------------------------------------------------------
# The submission, its parts and the class ids file.


def write_part(path, rows):
  top = [(c, [i.encode() for i in ids], scores) for c, ids, scores in rows]
  segments.write_top_lists(str(path), top, with_scores=True)
  return str(path)


def test_parts_merge_by_score_then_segment_id_and_cut_at_max_pred(tmp_path):
  first = write_part(tmp_path / "p0", [(2, ["a:5", "b:0"], [0.9, 0.25]), (7, [], [])])
  second = write_part(tmp_path / "p1", [(2, ["c:10", "a:0", "d:0"], [0.5, 0.25, 0.1]),
                                        (7, ["c:0"], [1 / 3])])
  assert open(second, "rb").read() == (b"Class,SegmentScorePairs\n2,c:10 0.5 a:0 0.25 d:0 0.1\n"
                                       b"7,c:0 0.3333333333333333\n")
  merged = str(tmp_path / "merged.csv")
  segments.merge_parts(merged, [first, second], 4)
  # 0.25 twice: a:0 before b:0.
  assert open(merged, "rb").read() == b"Class,Segments\n2,a:5 c:10 a:0 b:0\n7,c:0\n"
  assert segments.is_segment_part(first) and not segments.is_segment_part(merged)


def test_merge_errors(tmp_path):
  first = write_part(tmp_path / "p0", [(2, ["a:5"], [0.9]), (3, ["a:5"], [0.9])])
  other_classes = write_part(tmp_path / "p1", [(2, ["b:5"], [0.9]), (4, ["b:5"], [0.9])])
  short = write_part(tmp_path / "p2", [(2, ["b:5"], [0.9])])
  out = str(tmp_path / "out.csv")
  with pytest.raises(ValueError, match="line 3 of the parts holds different classes .3, 4."):
    segments.merge_parts(out, [first, other_classes], 10)
  with pytest.raises(ValueError, match="p2 ends before the other parts"):
    segments.merge_parts(out, [first, short], 10)
  with pytest.raises(ValueError, match="out.csv: not a segment inference part"):
    segments.write_top_lists(out, [], with_scores=False)
    segments.merge_parts(str(tmp_path / "x.csv"), [out], 10)
  assert not os.path.exists(str(tmp_path / "x.csv"))


def test_class_ids_file(tmp_path):
  path = tmp_path / "ids.csv"
  path.write_text("Index\n3\n\n7\n3\n0\n")
  assert segments.read_class_ids(str(path), 10) == [0, 3, 7]
  for text, problem in (("3\nx\n", "line 2: 'x' is not a class id"),
                        ("3\n10\n", "line 2: class 10 is outside [0, 10)"),
                        ("Index\n", "holds no class id")):
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(problem)):
      segments.read_class_ids(str(path), 10)


# ----------------------------------------------------------------------------------------------
# Train -> eval -> inference on generated segment-rated data.

NUM_CLASSES = 6
SMALL_MODEL = dict(model="NetVLADModelLF", feature_names=("rgb", "audio"),
                   feature_sizes=(1024, 128), frame_features=True, num_classes=NUM_CLASSES,
                   netvlad_cluster_size=4, netvlad_hidden_size=16, iterations=30)


@pytest.fixture(scope="module")
def segment_data(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("segments"))
  for partition, count in (("train", 160), ("validate", 60), ("test", 8)):
    make_synthetic_data.generate_partition(
        directory, partition, num_videos=count, num_shards=2, num_classes=NUM_CLASSES, seed=0,
        min_frames=15, max_frames_gen=45, segment_labels=True)
  return directory


def train(train_dir, data_dir, **overrides):
  values = dict(train_dir=train_dir, data_pattern=os.path.join(data_dir, "train*.tfrecord"),
                batch_size=32, num_readers=2, max_steps=3, base_learning_rate=0.01,
                bn_calibration_batches=2, export_model_steps=0, log_steps=10, seed=1,
                jit_compile="false", segment_labels=True)
  values.update(overrides)
  trainer = training.Trainer(models.ModelConfig(**SMALL_MODEL), training.TrainOptions(**values),
                             tf.distribute.get_strategy())
  trainer.run()
  return trainer


@pytest.fixture(scope="module")
def fine_tuned(tmp_path_factory, segment_data):
  """A video-level model (3 steps on the videos' labels), fine-tuned on segments."""
  video_dir = str(tmp_path_factory.mktemp("video_level"))
  train(video_dir, segment_data, segment_labels=False, bn_calibration_batches=0)
  segment_dir = str(tmp_path_factory.mktemp("segment_level"))
  trainer = train(segment_dir, segment_data, init_from_checkpoint=video_dir, max_steps=80)
  return video_dir, segment_dir, trainer


def read_truth(data_dir, partition):
  return make_synthetic_data.load_segment_ground_truth(
      make_synthetic_data.segment_ground_truth_path(data_dir, partition))


def map_from_submission(path, truth):
  """The challenge's metric from a Class,Segments file, in plain Python: per class, walk its
  segments in order, keep the rated ones, sum the precision at each positive, divide by the
  class's positives; the mean over the classes that have a positive."""
  positives = {}
  for (_, c), score in truth.items():
    positives[c] = positives.get(c, 0) + (score > 0)
  aps = []
  with open(path) as f:
    assert f.readline() == "Class,Segments\n"
    for line in f:
      c, listed = line.rstrip("\n").split(",")
      if not positives.get(int(c)):
        continue
      hits, rank, total = 0, 0, 0.0
      for segment in listed.split(" "):
        if (segment, int(c)) in truth:
          rank += 1
          if truth[segment, int(c)] > 0:
            hits += 1
            total += hits / rank
      aps.append(total / positives[int(c)])
  return sum(aps) / len(aps)


def chance_map(truth, draws=200):
  """The expected segment MAP of random scores (the rated segments in a random order)."""
  rng = np.random.default_rng(0)
  by_class = {}
  for (_, c), score in truth.items():
    by_class.setdefault(c, []).append(score > 0)
  maps = []
  for _ in range(draws):
    aps = []
    for labels in by_class.values():
      if any(labels):
        ranked = rng.permutation(np.array(labels))
        hits = np.cumsum(ranked)
        aps.append(np.sum(hits[ranked] / (np.flatnonzero(ranked) + 1.0)) / hits[-1])
    maps.append(np.mean(aps))
  return float(np.mean(maps))


def test_fine_tuned_on_segments_eval_agrees_with_the_submission_and_beats_chance(
    fine_tuned, segment_data, tmp_path):
  _, segment_dir, trainer = fine_tuned
  assert trainer.step == 80
  model, config, _ = configuration.load_trained_model(
      segment_dir, -1, models.ModelConfig(**SMALL_MODEL), [])
  pattern = os.path.join(segment_data, "validate*.tfrecord")
  results = segments.evaluate(model, config, pattern, 64, 2, 5, 100000)
  truth = read_truth(segment_data, "validate")
  assert results["num_rated_pairs"] == len(truth)
  chance = chance_map(truth)
  assert results["segment_map"] > chance + 0.25, (results["segment_map"], chance)
  submission = str(tmp_path / "segments.csv")
  segments.predict(model, config, pattern, submission, 64, 2, 5, list(range(NUM_CLASSES)),
                   100000)
  assert map_from_submission(submission, truth) == pytest.approx(results["segment_map"],
                                                                 abs=1e-12)
  # A sharded run, merged, writes the same bytes as one run.
  parts = [str(tmp_path / ("part%d" % i)) for i in range(2)]
  for i, part in enumerate(parts):
    segments.predict(model, config, pattern, part, 64, 2, 5, list(range(NUM_CLASSES)), 100000,
                     task_index=i, num_tasks=2)
  merged = str(tmp_path / "merged.csv")
  segments.merge_parts(merged, parts, 100000)
  with open(submission, "rb") as a, open(merged, "rb") as b:
    assert a.read() == b.read()
  umask = os.umask(0)
  os.umask(umask)
  for path in [submission, merged] + parts:   # the mode a plain open(path, "w") gives
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask


def test_resuming_a_video_level_train_dir_on_segments(fine_tuned, segment_data):
  video_dir, _, _ = fine_tuned
  trainer = train(video_dir, segment_data, max_steps=5, bn_calibration_batches=0)
  assert trainer.step == 5 and os.path.exists(os.path.join(video_dir, "model.ckpt-5.index"))


def test_training_on_records_without_ratings_is_a_one_line_error(segment_data, tmp_path):
  pattern = os.path.join(segment_data, "test*.tfrecord")   # the test partition has no ratings
  with pytest.raises(ValueError, match="^%s: no rated segment to train on" % re.escape(pattern)):
    train(str(tmp_path), segment_data, data_pattern=pattern, num_epochs=1)
