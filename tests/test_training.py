"""Training loop pieces: schedule, optimizers, the step's arithmetic, precise BN, resume."""
import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import inference
import make_synthetic_data
import readers
from tests.test_metrics import reference_gap_and_aps
from tests.test_models import TINY, TINY_MODELS
from willow import configuration
from willow import evaluation
from willow import models
from willow import train_step
from willow import training

NUM_CLASSES = 7


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """Small learnable train/validate/test partitions (rgb 1024 + audio 128, short videos)."""
  directory = str(tmp_path_factory.mktemp("data"))
  # One seed for every partition: they then share the class prototypes.
  for partition, count, labels in (
      [("train", 96, True), ("validate", 48, True), ("test", 40, False)]):
    make_synthetic_data.generate_partition(
        directory, partition, num_videos=count, num_shards=2, num_classes=NUM_CLASSES,
        seed=0, with_labels=labels, min_frames=5, max_frames_gen=40)
  return directory


def tiny_config(name, **overrides):
  values = dict(TINY, num_classes=NUM_CLASSES, feature_sizes=(1024, 128))
  values.update(TINY_MODELS[name])
  values.update(overrides)
  return models.ModelConfig(**values)


def options(train_dir, data_dir, **overrides):
  values = dict(train_dir=train_dir, data_pattern=os.path.join(data_dir, "*a*??.tfrecord"),
                batch_size=8, num_readers=2, max_steps=3, base_learning_rate=0.01,
                bn_calibration_batches=2, export_model_steps=0, log_steps=1, seed=1)
  values.update(overrides)
  return training.TrainOptions(**values)


def test_learning_rate_staircase_counts_examples():
  schedule = train_step.ExampleStaircaseDecay(0.0002, 0.8, 4000000, 80)
  # Batch 80: a decay every 50,000 steps.
  assert float(schedule(49999)) == pytest.approx(0.0002)
  assert float(schedule(50000)) == pytest.approx(0.0002 * 0.8)
  assert float(schedule(700000)) == pytest.approx(0.0002 * 0.8 ** 14, rel=1e-5)


def test_optimizer_names_map_to_tf1_defaults():
  adam = train_step.make_optimizer("AdamOptimizer", 0.1)
  assert adam.epsilon == 1e-8 and adam.beta_1 == 0.9 and adam.beta_2 == 0.999
  assert type(train_step.make_optimizer("GradientDescentOptimizer", 0.1)).__name__ == "SGD"
  assert type(train_step.make_optimizer("Adam", 0.1)) is train_step.FusedAdam
  with pytest.raises(ValueError, match="unknown --optimizer 'Nope'"):
    train_step.make_optimizer("Nope", 0.1)


def test_fused_adam_is_tf1_adam():
  """FusedAdam (ResourceApplyAdam) against the TF1 AdamOptimizer equation in float64 and
  against Keras's Adam, over steps of different gradients, slots in the same places."""
  rng = np.random.default_rng(0)
  start = rng.normal(size=(7, 5)).astype(np.float32)
  grads = [rng.normal(scale=s, size=(7, 5)).astype(np.float32) for s in (1.0, 0.1, 3.0, 1e-4)]
  finals = {}
  for cls in (keras.optimizers.Adam, train_step.FusedAdam):
    variable = tf.Variable(start)
    optimizer = cls(0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-8)
    optimizer.build([variable])
    step = tf.function(lambda g: optimizer.apply_gradients([(g, variable)]))
    for g in grads:
      step(tf.constant(g))
    finals[cls] = (variable.numpy(), optimizer._momentums[0].numpy(),
                   optimizer._velocities[0].numpy())
  w, m, v = start.astype(np.float64), 0.0, 0.0
  for t, g in enumerate(grads, 1):
    m = 0.9 * m + 0.1 * g
    v = 0.999 * v + 0.001 * g.astype(np.float64) ** 2
    w = w - 0.01 * np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t) * m / (np.sqrt(v) + 1e-8)
  fused = finals[train_step.FusedAdam]
  for got, want in zip(fused, (w, m, v)):
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-7)
  for got, keras_value in zip(fused, finals[keras.optimizers.Adam]):
    np.testing.assert_allclose(got, keras_value, rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("scale", [0.3, 1.0, 40.0])
def test_clip_by_norm_equals_tf_clip_by_norm(scale):
  g = tf.constant(np.random.default_rng(1).normal(size=(300, 17)) * scale / 300, tf.float32)
  norm = float(tf.norm(g))
  got = train_step.clip_by_norm(g, 0.5).numpy()
  np.testing.assert_allclose(got, tf.clip_by_norm(g, 0.5).numpy(), rtol=1e-6, atol=1e-9)
  np.testing.assert_allclose(np.linalg.norm(got), min(norm, 0.5), rtol=1e-5)
  if norm <= 0.5:
    assert np.array_equal(got, g.numpy())  # within the norm: untouched


def test_step_clips_each_gradient_tensor_and_adds_l2(tmp_path, data_dir):
  """One SGD step of a video-level MoE on a fixed batch equals the hand-made update:
  w <- w - lr * clip(d(total)/dw, 0.45) per tensor, total = penalty * l2 + label loss."""
  tf.random.set_seed(0)  # an initialization where 0.45 clips some gradient tensors, not all
  config = models.ModelConfig(model="MoeModel", feature_names=("f",), feature_sizes=(6,),
                              num_classes=NUM_CLASSES, moe_l2=0.05)
  trainer = training.Trainer(config, options(str(tmp_path), data_dir, batch_size=4,
                                             optimizer="GradientDescentOptimizer",
                                             base_learning_rate=0.5,
                                             regularization_penalty=2.0,
                                             clip_gradient_norm=0.45),
                             tf.distribute.get_strategy())
  model = trainer.model
  rng = np.random.RandomState(0)
  batch = dict(video_matrix=tf.constant(rng.rand(4, 6).astype(np.float32) * 5),
               num_frames=tf.ones([4], tf.int32),
               labels=tf.constant((rng.rand(4, NUM_CLASSES) > 0.6).astype(np.float32)))
  before = [v.numpy().astype(np.float64) for v in model.trainable_variables]
  with tf.GradientTape() as tape:
    p = model(batch["video_matrix"], batch["num_frames"], training=True)["predictions"]
    y = batch["labels"]
    label_loss = tf.reduce_mean(tf.reduce_sum(
        -2 * (0.5 * y * tf.math.log(p + 1e-5) + 0.5 * (1 - y) * tf.math.log(1 - p + 1e-5)), 1))
    l2 = 0.05 * 0.5 * (tf.reduce_sum(model.classifier.gate_weights[0] ** 2)
                       + tf.reduce_sum(model.classifier.expert_weights ** 2))
    total = 2.0 * l2 + label_loss
  gradients = tape.gradient(total, model.trainable_variables)
  norms = [np.linalg.norm(g.numpy()) for g in gradients]
  assert min(norms) < 0.45 < max(norms)  # some tensors are clipped, some are not
  expected = [w - 0.5 * g.numpy() * min(1.0, 0.45 / n)
              for w, g, n in zip(before, gradients, norms)]
  outputs = trainer.train_step(batch)
  assert float(outputs["total_loss"]) == pytest.approx(float(total), rel=1e-5)
  for variable, want in zip(model.trainable_variables, expected):
    np.testing.assert_allclose(variable.numpy(), want, rtol=1e-5, atol=1e-6)


def test_precise_batch_norm_is_the_population_statistic():
  bn_model = models.build_model(models.ModelConfig(
      model="NetVLADModelLF", feature_names=("f",), feature_sizes=(3,), frame_features=True,
      num_classes=4, iterations=2, sample_random_frames=False, netvlad_cluster_size=2,
      netvlad_hidden_size=2))
  rng = np.random.RandomState(0)
  frames = [rng.rand(4, 2, 3).astype(np.float32) * (i + 1) for i in range(3)]
  batches = tf.data.Dataset.from_tensor_slices(dict(
      video_matrix=np.stack(frames), num_frames=np.full((3, 4), 2, np.int32)))
  used = training.calibrate_batch_norm(bn_model, batches, 10)
  assert used == 3
  # A full-length contiguous clip is every frame: the input batch norm sees all of them.
  x = np.concatenate([f.reshape(-1, 3) for f in frames])
  x = x / np.linalg.norm(x, axis=1, keepdims=True)
  np.testing.assert_allclose(bn_model.input_norm.moving_mean.numpy(), x.mean(0), rtol=1e-5)
  np.testing.assert_allclose(bn_model.input_norm.moving_variance.numpy(), x.var(0), rtol=1e-4)


# Three representative models in the quick group, the rest with the slow tests.
QUICK_PIPELINE = ("NetVLAD", "GatedDbof", "LSTM")
FRAME_LEVEL = [n for n in sorted(TINY_MODELS) if TINY_MODELS[n].get("frame_features", True)]


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=() if n in QUICK_PIPELINE else pytest.mark.slow) for n in FRAME_LEVEL])
def test_every_model_trains_resumes_evaluates_and_infers(tmp_path, data_dir, name):
  config = tiny_config(name)
  train_dir = str(tmp_path / "train")
  training.Trainer(config, options(train_dir, data_dir), tf.distribute.get_strategy()).run()
  assert os.path.exists(os.path.join(train_dir, "model.ckpt-3.index"))
  resumed = training.Trainer(config, options(train_dir, data_dir, max_steps=5),
                             tf.distribute.get_strategy())
  resumed.restore_or_initialize()
  assert resumed.step == 3
  resumed.run()
  assert resumed.step == 5
  model, config, path = configuration.load_trained_model(train_dir, -1, config, [])
  assert path.endswith("model.ckpt-5")
  # The reported GAP is the plain-Python GAP of the predictions evaluate made (frames are
  # sampled at random, so they are recorded rather than recomputed).
  seen = []
  predict = evaluation.prediction_function(model)

  def recording_predict(video_matrix, num_frames, labels):
    predictions, loss = predict(video_matrix, num_frames, labels)
    seen.append((predictions.numpy(), labels.numpy()))
    return predictions, loss
  results = evaluation.evaluate(model, config, os.path.join(data_dir, "validate*.tfrecord"), 16,
                                2, top_k=5, predict=recording_predict)
  predictions, labels = (np.concatenate(arrays) for arrays in zip(*seen))
  assert results["num_examples"] == len(predictions) == 48 and labels.sum() > 0
  expected_gap, _ = reference_gap_and_aps(predictions, labels, 5)
  assert results["gap"] == pytest.approx(expected_gap, rel=1e-12)
  output = str(tmp_path / "out.csv")
  assert inference.run_inference(model, config, os.path.join(data_dir, "test*.tfrecord"), output,
                                 16, 3, 2) == 40
  lines = open(output).read().splitlines()
  assert lines[0] == "VideoId,LabelConfidencePairs" and len(lines) == 41
  assert len(lines[1].split(",")[1].split()) == 6


def test_the_epoch_limit_gives_the_eta_and_the_message_that_ends_training(tmp_path, data_dir,
                                                                          caplog):
  files = readers.match_files(os.path.join(data_dir, "*a*??.tfrecord"))
  records = sum(1 for path in files for _ in tf.data.TFRecordDataset(path))  # the reference
  assert records == 96 + 48 and readers.count_records(files) == (records, True)
  estimate, exact = readers.count_records(files * 50, max_seconds=0)  # extrapolated from one
  assert not exact and abs(estimate - 50 * records) < 0.25 * 50 * records
  assert training.steps_for_epochs(144, 1, 8, 1) == 18
  assert training.steps_for_epochs(145, 2, 8, 1) == 37  # the last batch is partial
  assert training.steps_for_epochs(145, 2, 8, 2) == 36  # each worker drops its partial one
  config = tiny_config("NetVLAD")
  train_dir = str(tmp_path / "train")
  make = lambda **o: training.Trainer(config, options(train_dir, data_dir, **o),
                                      tf.distribute.get_strategy())
  assert make(max_steps=10, num_epochs=1).step_limit() == (10, "--max_steps=10")
  trainer = make(max_steps=None, num_epochs=1, log_steps=5)
  assert trainer.step_limit() == (18, "--num_epochs=1")
  with caplog.at_level("INFO"):
    trainer.run()
  assert trainer.step == 18
  progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step 10 |")]
  assert len(progress) == 1 and re.search(r"\| ETA \d+:\d\d:\d\d \(--num_epochs=1\)$",
                                          progress[0]), progress
  assert "training finished at step 18 (--num_epochs=1 reached)" in caplog.text
  resumed = make(max_steps=1000, num_epochs=2)  # each run makes its --num_epochs passes
  resumed.restore_or_initialize()
  assert resumed.step_limit() == (18 + 36, "--num_epochs=2")
