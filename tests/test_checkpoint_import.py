"""Loading checkpoints of the original TF1 code (and ours): names, shapes, values, errors.

The TF1 checkpoints are written here the way the original's train.py wrote them (a v1 Saver
over variables named as the original named them, with Adam slots and global_step), filled with
random values; predictions after loading are compared with tf1_reference.py, an independent
numpy statement of the original's models that reads the weights by their original names.
"""
import dataclasses
import logging
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import losses
import inference
import tf1_reference as ref
from conftest import call_main
from utils import InputError
from willow import checkpoint_import
from willow import checkpoints
from willow import configuration
from willow import models
from willow import readme_configs
from willow import training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRAMES = 300
NUM_FRAMES = np.array([300, 300, 217], np.int32)  # the short video exercises masking/sampling

# Small sizes for the fast tests; everything else comes from the README command lines.
SCALED = dict(num_classes=10, netvlad_cluster_size=8, netvlad_hidden_size=16, fv_cluster_size=8,
              fv_hidden_size=16, dbof_cluster_size=64, dbof_hidden_size=16, gru_cells=12,
              lstm_cells=12)


def config_from_args(args, **overrides) -> models.ModelConfig:
  """The ModelConfig a README command line asks for (model flags only)."""
  defaults = models.ModelConfig()
  values = {}
  for arg in args:
    name, _, text = arg.lstrip("-").partition("=")
    if name not in models.CONFIG_FIELDS:
      continue
    default = getattr(defaults, name)
    if isinstance(default, tuple):
      values[name] = tuple(text.split(","))
    elif isinstance(default, bool):
      values[name] = {"True": True, "False": False}[text]
    else:
      values[name] = type(default)(text)
  return dataclasses.replace(models.ModelConfig(**values), **overrides)


def readme_config(key, **overrides):
  return config_from_args(readme_configs.CONFIGS_BY_KEY[key].train_args, **overrides)


def scaled_config(key, **overrides):
  return readme_config(key, **dict(SCALED, **overrides))


# Beyond the seven README configurations: the other variants whose names the original fixed.
VARIANTS = {
    "netvlagd": dict(key="netvlad", vlagd=True, gating_remove_diag=True),
    "netvlad_relu_low_rank": dict(key="netvlad", netvlad_relu=True, moe_low_rank_gating=5,
                                  moe_prob_gating_input="input"),
    "netfv_coupled": dict(key="netfv", fv_couple_weights=True, fv_relu=True),
    "gated_dbof_prob_gating": dict(key="gated_dbof", moe_prob_gating=True),
    "soft_dbof_maxpool": dict(key="soft_dbof", softdbof_maxpool=True, dbof_relu=True),
    "gru_backward": dict(key="gru", gru_backward=True, gru_layers=3),
    "lstm_backward_one_layer": dict(key="lstm", lstm_layers=1, lstm_backward=True,
                                    lstm_random_sequence=False),
}


def variant_config(name):
  overrides = dict(VARIANTS[name])
  return scaled_config(overrides.pop("key"), **overrides)


ALL_CASES = [c.key for c in readme_configs.WILLOW_CONFIGS] + sorted(VARIANTS)


def case_config(case):
  return variant_config(case) if case in VARIANTS else scaled_config(case)


def random_levels(config, num_frames=NUM_FRAMES, frames=FRAMES, seed=0):
  """uint8 quantization levels [B, frames, D], as the records store them."""
  rng = np.random.RandomState(seed)
  return rng.randint(0, 256, size=(len(num_frames), frames, config.input_size)).astype(np.uint8)


def random_videos(config, num_frames=NUM_FRAMES, frames=FRAMES, seed=0):
  """Dequantized features [B, frames, D] (as the original's readers.py) with zero padding after
  num_frames."""
  levels = random_levels(config, num_frames, frames, seed)
  raw = (levels * 4.0 / 255 - 1.9921875).astype(np.float32)
  raw[np.arange(frames)[None, :] >= np.asarray(num_frames)[:, None]] = 0.0
  return raw, np.asarray(num_frames, np.int32)


def original_values(config, raw, num_frames, seed=0, rnn_names=("kernel", "bias")):
  values = ref.random_values(ref.original_variable_shapes(config, rnn_names), seed)
  return ref.calibrate_statistics(config, values, raw, num_frames)


# ----------------------------------------------------------------------------------------
# Writing checkpoints as the original did (TF1 graph, v1 Saver).

def write_tf1_checkpoint(train_dir, values, step=1234, adam_slots=True):
  """Saves `values` ({original name: array}) as the original's train.py did: a v1 Saver
  over all global variables, with Adam's slots and beta powers and global_step."""
  v1 = tf.compat.v1
  os.makedirs(train_dir, exist_ok=True)
  with tf.Graph().as_default():
    variables = {}
    for name, value in values.items():
      variables[name] = v1.get_variable(name, value.shape, tf.float32, v1.zeros_initializer(),
                                        trainable=not ref.is_statistic(name))
    if adam_slots:
      for name, value in values.items():
        if not ref.is_statistic(name):
          for slot in ("Adam", "Adam_1"):
            v1.get_variable("%s/%s" % (name, slot), value.shape, tf.float32,
                            v1.zeros_initializer(), trainable=False)
      v1.get_variable("beta1_power", [], tf.float32, v1.constant_initializer(0.9),
                      trainable=False)
      v1.get_variable("beta2_power", [], tf.float32, v1.constant_initializer(0.999),
                      trainable=False)
    v1.train.get_or_create_global_step()
    saver = v1.train.Saver(max_to_keep=0)
    loaded = set(variables.values())
    with v1.Session() as session:
      session.run(v1.variables_initializer([v for v in v1.global_variables()
                                            if v not in loaded]))
      for name, variable in variables.items():  # fed, so that no value enters the graph
        session.run(variable.initializer, {variable.initial_value: values[name]})
      return saver.save(session, os.path.join(train_dir, "model.ckpt"), global_step=step)


def predict(model, raw, num_frames):
  @tf.function  # as inference.py runs it (eager RNN loops are slow)
  def predictions(video_matrix, frame_counts):
    return model(video_matrix, frame_counts, training=False)["predictions"]
  return predictions(tf.constant(raw), tf.constant(num_frames)).numpy()


def model_values(model):
  """Our model's variables by original name."""
  return {name: variable.numpy()
          for name, (variable, _) in checkpoint_import.tf1_variable_map(model).items()}


# ----------------------------------------------------------------------------------------
# Names and shapes.

@pytest.mark.parametrize("case", ALL_CASES)
def test_names_and_shapes_are_the_originals(case):
  config = case_config(case)
  mapping = checkpoint_import.tf1_variable_map(models.build_model(config))
  ours = {name: tuple(v.shape.as_list()) for name, (v, _) in mapping.items()}
  assert ours == ref.original_variable_shapes(config)


def test_readme_gated_netvlad_names_at_full_size():
  config = readme_config("netvlad")
  shapes = ref.original_variable_shapes(config)
  assert shapes["video_VLAD/cluster_weights2"] == (1, 1024, 256)
  assert shapes["audio_VLAD/cluster_weights"] == (128, 128)
  assert shapes["hidden1_weights"] == (1024 * 256 + 128 * 128, 1024)
  assert shapes["gating_prob_weights"] == (4716, 4716)
  trainable = sum(np.prod(s) for n, s in shapes.items() if not ref.is_statistic(n))
  assert trainable == readme_configs.CONFIGS_BY_KEY["netvlad"].trainable_parameters


def test_models_the_original_never_had_are_refused():
  model = models.build_model(models.ModelConfig(model="LogisticModel"))
  with pytest.raises(InputError, match="LogisticModel.*classifier/weights"):
    checkpoint_import.tf1_variable_map(model)


# ----------------------------------------------------------------------------------------
# Predictions after loading equal the numpy reference.

@pytest.mark.parametrize("case", ALL_CASES)
def test_tf1_checkpoint_predictions_match_numpy(case, tmp_path):
  config = case_config(case)
  raw, num_frames = random_videos(config)
  values = original_values(config, raw, num_frames)
  train_dir = str(tmp_path / "original")
  write_tf1_checkpoint(train_dir, values)
  expected, _ = ref.forward(config, values, raw, num_frames)
  assert expected.std() > 0.05, "the reference predictions should depend on the input"

  fresh = predict(models.build_model(config), raw, num_frames)
  # The inference.py / eval.py path: no saved configuration, so the flags' model is built.
  model, loaded_config, path = configuration.load_trained_model(train_dir, -1, config, [])
  assert loaded_config == config and path.endswith("model.ckpt-1234")
  ours = predict(model, raw, num_frames)
  np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-6)
  assert np.abs(fresh - expected).max() > 1e-2


@pytest.mark.parametrize("key", ["gru", "lstm"])
def test_tf_1_0_rnn_names_weights_biases_load_too(key, tmp_path):
  config = scaled_config(key)
  raw, num_frames = random_videos(config)
  legacy = ("weights", "biases")
  values = original_values(config, raw, num_frames, rnn_names=legacy)
  assert any(n.endswith("/weights") and n.startswith("RNN/") for n in values)
  path = write_tf1_checkpoint(str(tmp_path), values)
  model = models.build_model(config)
  checkpoint_import.load_tf1_checkpoint(model, path)
  expected, _ = ref.forward(config, values, raw, num_frames)
  np.testing.assert_allclose(predict(model, raw, num_frames), expected, rtol=1e-4, atol=1e-6)


def test_check_point_selects_the_step(tmp_path):
  config = scaled_config("gated_dbof")
  raw, num_frames = random_videos(config)
  train_dir = str(tmp_path)
  first = original_values(config, raw, num_frames, seed=1)
  write_tf1_checkpoint(train_dir, first, step=10)
  write_tf1_checkpoint(train_dir, original_values(config, raw, num_frames, seed=2), step=20)
  model, _, path = configuration.load_trained_model(train_dir, 10, config, [])
  assert path.endswith("model.ckpt-10")
  expected, _ = ref.forward(config, first, raw, num_frames)
  np.testing.assert_allclose(predict(model, raw, num_frames), expected, rtol=1e-4, atol=1e-6)
  _, _, latest = configuration.load_trained_model(train_dir, -1, config, [])
  assert latest.endswith("model.ckpt-20")


# ----------------------------------------------------------------------------------------
# Refusals: a clear one-line error naming the checkpoint and every problem; nothing assigned.

@pytest.fixture(scope="module")
def netvlad_original(tmp_path_factory):
  """(config, values, train_dir, checkpoint path) of a scaled Gated NetVLAD, written once."""
  config = scaled_config("netvlad")
  values = ref.random_values(ref.original_variable_shapes(config))
  train_dir = str(tmp_path_factory.mktemp("netvlad_original"))
  return config, values, train_dir, write_tf1_checkpoint(train_dir, values, step=77)


def expect_refusal(model, path, *fragments):
  before = [v.numpy() for v in model.variables]
  with pytest.raises(InputError) as error:
    checkpoint_import.load_tf1_checkpoint(model, path)
  message = str(error.value)
  assert "\n" not in message and path in message
  for fragment in fragments:
    assert fragment in message
  for old, variable in zip(before, model.variables):
    np.testing.assert_array_equal(old, variable.numpy())


def test_missing_variable_is_named(netvlad_original, tmp_path):
  config, values, _, _ = netvlad_original
  values = dict(values)
  del values["video_VLAD/cluster_weights2"]
  path = write_tf1_checkpoint(str(tmp_path), values)
  expect_refusal(models.build_model(config), path, "missing from the checkpoint",
                 "video_VLAD/cluster_weights2")


def test_checkpoint_variable_without_model_variable_is_named(netvlad_original):
  config, _, _, path = netvlad_original
  model = models.build_model(config.replace(moe_prob_gating=False))  # flag forgotten
  expect_refusal(model, path, "the model does not have", "gating_prob_weights",
                 "gating_prob_bn/moving_mean")


def test_shape_mismatch_gives_both_shapes(netvlad_original):
  config, _, _, path = netvlad_original
  model = models.build_model(config.replace(netvlad_hidden_size=12))
  expect_refusal(model, path, "hidden1_weights (checkpoint [8704, 16], model [8704, 12])",
                 "gates/weights (checkpoint [16, 30], model [12, 30])")


def test_wrong_model_class_is_refused(netvlad_original):
  _, _, _, path = netvlad_original
  model = models.build_model(scaled_config("netfv"))
  expect_refusal(model, path, "NetFVModelLF model", "missing from the checkpoint: audio_FV/",
                 "the model does not have: audio_VLAD/", "(2 more)",
                 "hidden1_weights (checkpoint [8704, 16], model [17408, 16])")


def test_refusal_through_load_trained_model_and_initialize_from(netvlad_original):
  config, _, train_dir, _ = netvlad_original
  other = config.replace(gating=False)
  with pytest.raises(InputError, match="gating_weights_2"):
    configuration.load_trained_model(train_dir, -1, other, [])
  with pytest.raises(InputError, match="gating_bn/beta"):
    checkpoints.initialize_from(models.build_model(other), train_dir)


def test_directory_without_checkpoint_is_refused(tmp_path):
  model = models.build_model(scaled_config("gru"))
  with pytest.raises(InputError, match="holds no checkpoint"):
    checkpoints.initialize_from(model, str(tmp_path))
  with pytest.raises(InputError, match="neither a train_dir"):
    checkpoints.initialize_from(model, str(tmp_path / "model.ckpt-5"))


# ----------------------------------------------------------------------------------------
# --init_from_checkpoint: train_dirs of the original and of ours, and checkpoint prefixes.

def test_initialize_from_tf1_train_dir_and_prefix(netvlad_original):
  config, values, train_dir, path = netvlad_original
  assert checkpoint_import.is_tf1_checkpoint(checkpoints.find_checkpoint(train_dir))
  for source in (train_dir, path):
    model = models.build_model(config)
    assert checkpoints.initialize_from(model, source) == path
    loaded = model_values(model)
    assert set(loaded) == set(values)
    for name, value in values.items():
      np.testing.assert_array_equal(loaded[name], value, err_msg=name)


def test_initialize_from_moved_tf1_train_dir(netvlad_original, tmp_path):
  """TF1 Savers wrote absolute paths of the training machine into the state file."""
  config, values, _, _ = netvlad_original
  path = write_tf1_checkpoint(str(tmp_path), values, step=300000)
  with open(os.path.join(str(tmp_path), "checkpoint"), "w") as f:
    f.write('model_checkpoint_path: "/home/willow/gatednetvladLF/model.ckpt-300000"\n'
            'all_model_checkpoint_paths: "/home/willow/gatednetvladLF/model.ckpt-300000"\n')
  model = models.build_model(config)
  assert checkpoints.initialize_from(model, str(tmp_path)) == path
  np.testing.assert_array_equal(model_values(model)["gates/weights"], values["gates/weights"])


def save_our_train_dir(train_dir, config, step=7, seed=3):
  """A train_dir as training.Trainer writes it: model and (used) Adam optimizer."""
  model = models.build_model(config)
  rng = np.random.RandomState(seed)
  for variable in model.variables:
    variable.assign(rng.normal(1.0, 0.5, variable.shape).astype(np.float32))
  optimizer = keras.optimizers.Adam(1e-3, epsilon=1e-8)
  optimizer.apply_gradients([(tf.ones_like(v), v) for v in model.trainable_variables])
  manager = tf.train.CheckpointManager(
      tf.train.Checkpoint(model=model, optimizer=optimizer), train_dir, max_to_keep=2,
      checkpoint_name="model.ckpt")
  return model, manager.save(checkpoint_number=step)


@pytest.mark.parametrize("case", ALL_CASES)
def test_initialize_from_our_train_dir(case, tmp_path):
  config = case_config(case)
  trained, path = save_our_train_dir(str(tmp_path), config)
  assert not checkpoint_import.is_tf1_checkpoint(checkpoints.find_checkpoint(str(tmp_path)))
  for source in (str(tmp_path), path):
    model = models.build_model(config)
    assert checkpoints.initialize_from(model, source) == path
    for mine, theirs in zip(model.variables, trained.variables):
      np.testing.assert_array_equal(mine.numpy(), theirs.numpy(), err_msg=mine.name)


def test_our_train_dir_of_another_architecture_is_refused(tmp_path):
  config = scaled_config("netvlad")
  _, path = save_our_train_dir(str(tmp_path), config)
  model = models.build_model(config.replace(moe_prob_gating=False, netvlad_hidden_size=8))
  with pytest.raises(InputError) as error:
    checkpoints.initialize_from(model, str(tmp_path))
  message = str(error.value)
  assert "\n" not in message and path in message
  assert "the model does not have: classifier/prob_gate/norm/beta" in message
  assert "hidden/weights (checkpoint [8704, 16], model [8704, 8])" in message


def test_our_train_dir_trained_with_other_settings_warns(tmp_path, caplog):
  """A setting that changes no shape cannot be checked on the variables."""
  config = scaled_config("netvlad")
  save_our_train_dir(str(tmp_path), config)
  (tmp_path / checkpoints.CONFIG_FILE).write_text(config.to_json())
  model = models.build_model(config.replace(gating_remove_diag=True))
  with caplog.at_level(logging.WARNING):
    configuration.warn_if_trained_differently(str(tmp_path), model.config)
    checkpoints.initialize_from(model, str(tmp_path))
  assert "gating_remove_diag=True (saved: False)" in caplog.text


# ----------------------------------------------------------------------------------------
# One training step from an original checkpoint moves the weights as the original's train.py did.

TINY_TRAINING = {
    # Identity sampling in training mode needs contiguous clips of the whole video.
    "netvlad": dict(feature_sizes=(6, 4), netvlad_cluster_size=4, netvlad_hidden_size=3,
                    iterations=5, sample_random_frames=False),
    "netfv": dict(feature_sizes=(5, 3), fv_cluster_size=4, fv_hidden_size=3, iterations=4,
                  sample_random_frames=False),
    "gated_dbof": dict(feature_sizes=(5, 3), dbof_cluster_size=8, dbof_hidden_size=3,
                       iterations=4, sample_random_frames=False),
    # More classes, so that some RNN gradients exceed the clip norm.
    "gru": dict(feature_sizes=(5, 3), gru_cells=3, num_classes=24),
    "lstm": dict(feature_sizes=(5, 3), lstm_cells=2, lstm_random_sequence=False,
                 num_classes=24),
}
LEARNING_RATE = 0.1


def tiny_training_setup(key, tmp_path):
  overrides = dict(dict(num_classes=3), **TINY_TRAINING[key])
  frames = overrides.get("iterations", 5)
  # A large moe_l2 so that a wrong l2 factor would show; prob gating wherever possible.
  config = readme_config(key, moe_l2=0.05, **overrides)
  if config.model in ("NetVLADModelLF", "GatedDbofModelLF"):
    config = config.replace(moe_prob_gating=True)
  rnn = config.model in ("GruModel", "LstmModel")
  num_frames = [frames, frames - 2, frames, frames - 1] if rnn else [frames] * 4
  raw, num_frames = random_videos(config, num_frames, frames, seed=5)
  labels = (np.random.RandomState(6).rand(4, config.num_classes) < 0.4).astype(np.float32)
  values = original_values(config, raw, num_frames, seed=7)
  write_tf1_checkpoint(str(tmp_path / "original"), values)
  return config, values, raw, num_frames, labels, str(tmp_path / "original")


def sgd_step_with_project_pieces(model, raw, num_frames, labels):
  """The original train.py's step with the project's loss, regularization and per-tensor
  clipping."""
  variables = model.trainable_variables
  loss = losses.get_loss("CrossEntropyLoss", 0.5)
  with tf.GradientTape() as tape:
    predictions = model(tf.constant(raw), tf.constant(num_frames), training=True)["predictions"]
    total = model.regularization_loss() + loss.calculate_loss(predictions, tf.constant(labels))
  gradients = [tf.clip_by_norm(g, 1.0) for g in tape.gradient(total, variables)]
  keras.optimizers.SGD(LEARNING_RATE).apply_gradients(zip(gradients, variables))


def sgd_step_with_trainer(config, original_dir, train_dir, raw, num_frames, labels):
  """The same step through training.Trainer: --init_from_checkpoint, then one train_step."""
  options = training.TrainOptions(
      train_dir=train_dir, data_pattern="unused", optimizer="GradientDescentOptimizer",
      base_learning_rate=LEARNING_RATE, init_from_checkpoint=original_dir)
  trainer = training.Trainer(config, options, tf.distribute.get_strategy())
  trainer.restore_or_initialize()
  assert trainer.step == 0
  trainer.train_step({"video_matrix": tf.constant(raw), "num_frames": tf.constant(num_frames),
                      "labels": tf.constant(labels)})
  assert trainer.step == 1
  return trainer.model


def check_moved_as_expected(model, config, values, raw, num_frames, labels):
  expected, gradients, clipped = ref.expected_sgd_step(config, values, raw, num_frames, labels,
                                                       LEARNING_RATE)
  # Both branches of the per-tensor clip are exercised.
  assert clipped and len(clipped) < len(gradients)
  after = model_values(model)
  assert set(after) == set(expected)
  for name, new in expected.items():
    old = np.asarray(values[name], np.float64)
    # The update itself is compared (not the weights, which would hide it). Two float32
    # errors, both far below what a missing clip, a wrong l2 factor or a moving average off
    # by one step would change: the gradients (relative ~1e-5 on these tiny sums; 2e-3 of
    # the update's largest entry leaves a wide margin) and the rounding of the stored value
    # (a few float32 ulps of the weight, which dominates for the 0.001-sized moving-average
    # steps).
    moved, want = after[name] - old, new - old
    atol = 2e-3 * np.abs(want).max() + 4 * np.finfo(np.float32).eps * np.abs(old).max()
    np.testing.assert_allclose(moved, want, rtol=2e-3, atol=atol, err_msg=name)


@pytest.mark.parametrize("key", sorted(TINY_TRAINING))
def test_one_sgd_step_from_tf1_checkpoint(key, tmp_path):
  config, values, raw, num_frames, labels, original_dir = tiny_training_setup(key, tmp_path)
  model = models.build_model(config)
  checkpoints.initialize_from(model, original_dir)
  sgd_step_with_project_pieces(model, raw, num_frames, labels)
  check_moved_as_expected(model, config, values, raw, num_frames, labels)


@pytest.mark.parametrize("key", ["netvlad", "gru"])
def test_one_trainer_step_from_tf1_checkpoint(key, tmp_path):
  config, values, raw, num_frames, labels, original_dir = tiny_training_setup(key, tmp_path)
  model = sgd_step_with_trainer(config, original_dir, str(tmp_path / "ours"), raw, num_frames,
                                labels)
  check_moved_as_expected(model, config, values, raw, num_frames, labels)


# ----------------------------------------------------------------------------------------
# Full size and end to end.

@pytest.mark.slow
def test_full_size_gated_netvlad(tmp_path):
  """The released pretrained model's configuration: 333M parameters (~1.3 GB per copy)."""
  config = readme_config("netvlad")
  raw, num_frames = random_videos(config, NUM_FRAMES[:2])
  values = original_values(config, raw, num_frames)
  train_dir = str(tmp_path / "gatednetvladLF-256k-1024-80-0002-300iter-norelu-basic-gatedmoe")
  write_tf1_checkpoint(train_dir, values, step=300000, adam_slots=False)
  expected, _ = ref.forward(config, values, raw, num_frames)
  model, _, _ = configuration.load_trained_model(train_dir, -1, config, [])
  del values
  assert model.num_trainable_parameters == 333_229_888
  np.testing.assert_allclose(predict(model, raw, num_frames), expected, rtol=1e-4, atol=1e-6)


def write_frame_records(path, config, levels, num_frames):
  """Frame-level SequenceExamples as the original read them: context id and labels, one bytes
  entry per frame and feature."""
  splits = np.cumsum(config.feature_sizes)[:-1]
  with tf.io.TFRecordWriter(path) as writer:
    for index, (video, count) in enumerate(zip(levels, num_frames)):
      parts = np.split(video[:count], splits, axis=1)
      feature_lists = {
          name: tf.train.FeatureList(feature=[
              tf.train.Feature(bytes_list=tf.train.BytesList(value=[row.tobytes()]))
              for row in part])
          for name, part in zip(config.feature_names, parts)}
      context = {
          "id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"vid%d" % index])),
          "labels": tf.train.Feature(int64_list=tf.train.Int64List(value=[index % 3])),
      }
      example = tf.train.SequenceExample(
          context=tf.train.Features(feature=context),
          feature_lists=tf.train.FeatureLists(feature_list=feature_lists))
      writer.write(example.SerializeToString())


def read_scores(csv_path, num_classes):
  with open(csv_path) as f:
    assert f.readline() == "VideoId,LabelConfidencePairs\n"
    rows = {}
    for line in f:
      video_id, pairs = line.rstrip("\n").split(",")
      tokens = pairs.split(" ")
      scores = np.full(num_classes, np.nan)
      for cls, score in zip(tokens[0::2], tokens[1::2]):
        scores[int(cls)] = float(score)
      rows[video_id] = scores
  return rows


@pytest.mark.parametrize("key", [
    c.key if c.key == "netvlad" else pytest.param(c.key, marks=pytest.mark.slow)
    for c in readme_configs.WILLOW_CONFIGS])
def test_readme_inference_command_on_original_train_dir(key, tmp_path, monkeypatch):
  """inference.py's main on the README's inference line, on a train_dir of the original
  (in-process: test_scripts.py runs each inference line as a command, once)."""
  willow = readme_configs.CONFIGS_BY_KEY[key]
  args = willow.corrected_inference_args
  for name, value in dict(SCALED, train_dir=tmp_path / "train_dir", batch_size=2,
                          input_data_pattern=tmp_path / "test*.tfrecord",
                          output_file=tmp_path / "out.csv", top_k=SCALED["num_classes"]).items():
    args = readme_configs.with_flag(args, name, value)
  # The inference line's model flags (configuration 3 adds --moe_prob_gating there).
  config = config_from_args(args)
  levels = random_levels(config)
  raw, num_frames = random_videos(config)
  write_frame_records(str(tmp_path / "test-0000.tfrecord"), config, levels, num_frames)
  values = original_values(config, raw, num_frames)
  write_tf1_checkpoint(str(tmp_path / "train_dir"), values, step=99)
  expected, _ = ref.forward(config, values, raw, num_frames)

  call_main(monkeypatch, inference, "inference", [str(a) for a in args])
  scores = read_scores(str(tmp_path / "out.csv"), config.num_classes)
  assert sorted(scores) == ["vid0", "vid1", "vid2"]
  for index in range(len(num_frames)):
    # Six decimals are written: half a unit of the last place, plus the model's float32 error.
    np.testing.assert_allclose(scores["vid%d" % index], expected[index], rtol=1e-4,
                               atol=6e-7)
