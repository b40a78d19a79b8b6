"""Tests of utils.py: dequantization, frame samplers, pooling, normalisation, summaries."""
import glob

import numpy as np
import pytest
import tensorflow as tf

import utils


def _frame_index_input(num_videos, num_frames_axis=12, width=3):
  """[B, T, width] input whose frame t holds the value t + 1 (0 marks padding)."""
  frames = np.arange(1, num_frames_axis + 1, dtype=np.float32)[None, :, None]
  return tf.constant(np.broadcast_to(frames, (num_videos, num_frames_axis, width)).copy())


def _indices(sampled):
  """Recovers the sampled frame indices from _frame_index_input values."""
  return sampled.numpy()[:, :, 0].astype(np.int64) - 1


# ----------------------------------------------------------------------------------------------
# Dequantize / l2 normalisation.


def test_dequantize_matches_spec_formula_exactly():
  levels = np.arange(256, dtype=np.float32)
  got = utils.Dequantize(tf.constant(levels)).numpy()
  expected = levels * np.float32(4.0 / 255.0) + np.float32(-1.9921875)
  np.testing.assert_array_equal(got, expected)
  assert got[0] == np.float32(-1.9921875)
  assert got[255] == pytest.approx(2.0078125, abs=1e-6)
  assert got.dtype == np.float32


def test_dequantize_custom_range():
  got = utils.Dequantize(tf.constant([0.0, 255.0]), max_quantized_value=1,
                         min_quantized_value=-1).numpy()
  np.testing.assert_allclose(got, [-1 + 2 / 512, 1 + 2 / 512], atol=1e-6)
  with pytest.raises(ValueError):
    utils.Dequantize(tf.constant([0.0]), max_quantized_value=-1, min_quantized_value=1)


def test_l2_normalize_frames_unit_norm_and_zero_padding_stays_zero():
  x = tf.constant([[[3.0, 4.0], [0.0, 0.0], [1e-8, 0.0]]])
  got = utils.l2_normalize_frames(x).numpy()
  np.testing.assert_allclose(got[0, 0], [0.6, 0.8], rtol=1e-6)
  assert np.all(got[0, 1] == 0.0)
  # Tiny frames are divided by sqrt(1e-12) = 1e-6, not blown up to unit norm.
  np.testing.assert_allclose(got[0, 2], [1e-2, 0.0], rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# Evenly spaced sampler.


def test_evenly_spaced_hand_computed_indices():
  model_input = _frame_index_input(3)
  num_frames = tf.constant([10, 4, 1], tf.int32)
  got = _indices(utils.SampleEvenlySpacedFrames(model_input, num_frames, 4))
  # floor((j + 0.5) * 10 / 4) = floor(1.25, 3.75, 6.25, 8.75)
  np.testing.assert_array_equal(got[0], [1, 3, 6, 8])
  np.testing.assert_array_equal(got[1], [0, 1, 2, 3])   # identity when num_frames == n
  np.testing.assert_array_equal(got[2], [0, 0, 0, 0])


def test_evenly_spaced_more_samples_than_frames_and_zero_frames():
  model_input = _frame_index_input(2)
  got = utils.SampleEvenlySpacedFrames(model_input, tf.constant([3, 0]), 6)
  # floor((2j + 1) * 3 / 12) for j = 0..5
  np.testing.assert_array_equal(_indices(got)[0], [0, 0, 1, 1, 2, 2])
  np.testing.assert_array_equal(_indices(got)[1], [0] * 6)


def test_evenly_spaced_identity_for_300_frames():
  indices = utils.evenly_spaced_frame_indices(tf.constant([300]), 300).numpy()
  np.testing.assert_array_equal(indices[0], np.arange(300))


def test_evenly_spaced_same_video_same_frames_in_any_batch():
  video = np.random.default_rng(0).normal(size=(1, 12, 5)).astype(np.float32)
  other = np.random.default_rng(1).normal(size=(2, 12, 5)).astype(np.float32)
  alone = utils.SampleEvenlySpacedFrames(tf.constant(video), tf.constant([9]), 5)
  batch = utils.SampleEvenlySpacedFrames(
      tf.constant(np.concatenate([other, video])), tf.constant([12, 3, 9]), 5)
  np.testing.assert_array_equal(alone.numpy()[0], batch.numpy()[2])


# ----------------------------------------------------------------------------------------------
# Random samplers.


def test_random_frames_stay_in_valid_range_and_zero_frames_gathers_padding():
  tf.random.set_seed(1)
  model_input = _frame_index_input(4)
  num_frames = tf.constant([12, 5, 1, 0])
  got = _indices(utils.SampleRandomFrames(model_input, num_frames, 200))
  assert got.shape == (4, 200)
  for row, count in zip(got, [12, 5, 1, 0]):
    assert row.min() >= 0
    assert row.max() <= max(count - 1, 0)
  assert set(got[0]) == set(range(12))  # all frames reachable
  assert np.all(got[3] == 0)


def test_random_frames_roughly_uniform():
  tf.random.set_seed(2)
  model_input = _frame_index_input(1, num_frames_axis=10, width=1)
  got = _indices(utils.SampleRandomFrames(model_input, tf.constant([10]), 20000))[0]
  counts = np.bincount(got, minlength=10)
  # Expected 2000 each; 4 standard deviations (~170) of slack.
  assert np.all(np.abs(counts - 2000) < 200), counts


def test_random_frames_respect_global_seed_under_tf_function():
  model_input = _frame_index_input(2)
  sample = tf.function(lambda x, n: utils.SampleRandomFrames(x, n, 7))
  tf.random.set_seed(123)
  first = sample(model_input, tf.constant([12, 6])).numpy()
  tf.random.set_seed(123)
  second = sample(model_input, tf.constant([12, 6])).numpy()
  np.testing.assert_array_equal(first, second)
  assert first.shape == (2, 7, 3)


def test_random_sequence_is_contiguous_clip():
  tf.random.set_seed(3)
  model_input = _frame_index_input(1)
  starts = []
  for _ in range(60):
    got = _indices(utils.SampleRandomSequence(model_input, tf.constant([12]), 5))[0]
    np.testing.assert_array_equal(np.diff(got), np.ones(4))
    starts.append(got[0])
  assert min(starts) >= 0 and max(starts) <= 7       # 12 - 5
  assert len(set(starts)) >= 5                         # the start is random


def test_random_sequence_short_video_repeats_last_frame():
  model_input = _frame_index_input(2)
  got = _indices(utils.SampleRandomSequence(model_input, tf.constant([3, 0]), 6))
  np.testing.assert_array_equal(got[0], [0, 1, 2, 2, 2, 2])
  np.testing.assert_array_equal(got[1], [0] * 6)


def test_random_sequence_exact_length_is_identity():
  got = _indices(utils.SampleRandomSequence(_frame_index_input(1), tf.constant([12]), 12))
  np.testing.assert_array_equal(got[0], np.arange(12))


# ----------------------------------------------------------------------------------------------
# Pooling, feature flags, summaries.


def test_frame_pooling():
  frames = tf.constant([[[1.0, 5.0], [3.0, -1.0]]])
  np.testing.assert_array_equal(utils.FramePooling(frames, "average").numpy(), [[2.0, 2.0]])
  np.testing.assert_array_equal(utils.FramePooling(frames, "max").numpy(), [[3.0, 5.0]])
  np.testing.assert_array_equal(utils.FramePooling(frames, "none").numpy(),
                                [[1.0, 5.0], [3.0, -1.0]])
  with pytest.raises(ValueError, match="median"):
    utils.FramePooling(frames, "median")


def test_parse_feature_list():
  assert utils.parse_feature_list("rgb, audio", "1024,128") == (["rgb", "audio"], [1024, 128])
  with pytest.raises(utils.InputError, match="2 entries"):
    utils.parse_feature_list("rgb,audio", "1024")


def test_write_scalars_round_trip(tmp_path):
  writer = tf.summary.create_file_writer(str(tmp_path))
  utils.write_scalars(writer, 7, {"model/Training_GAP": 0.25, "skipped": None}, flush=True)
  events = glob.glob(str(tmp_path / "events.out.tfevents.*"))
  assert len(events) == 1
  found = {}
  for record in tf.data.TFRecordDataset(events[0]):
    event = tf.compat.v1.Event.FromString(record.numpy())
    for value in event.summary.value:
      found[value.tag] = (event.step, tf.make_ndarray(value.tensor).item())
  assert found == {"model/Training_GAP": (7, 0.25)}
