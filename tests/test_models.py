"""Model registry, per-model behaviour and the parameter counts of the seven configurations."""
import numpy as np
import pytest
import tensorflow as tf

from utils import InputError
from willow import models
from willow import readme_configs
from willow.script_flags import expand_flag_prefixes

TINY = dict(feature_names=("rgb", "audio"), feature_sizes=(16, 8), frame_features=True,
            num_classes=7, iterations=6, netvlad_cluster_size=4, netvlad_hidden_size=8,
            fv_cluster_size=4, fv_hidden_size=8, dbof_cluster_size=16, dbof_hidden_size=8,
            lstm_cells=5, gru_cells=5)

TINY_MODELS = {
    "NetVLAD": dict(model="NetVLADModelLF", gating=True, moe_prob_gating=True,
                    netvlad_relu=False),
    "NetRVLAD": dict(model="NetVLADModelLF", lightvlad=True, gating=True),
    "NetVLAGD": dict(model="NetVLADModelLF", vlagd=True, gating_remove_diag=True, gating=True),
    "NetFV": dict(model="NetFVModelLF", gating=True, fv_couple_weights=False, fv_relu=False),
    "GatedDbof": dict(model="GatedDbofModelLF", dbof_relu=False, moe_prob_gating=True),
    "SoftDbof": dict(model="SoftDbofModelLF", softdbof_maxpool=True),
    "DbofLF": dict(model="DbofModelLF"),
    "DbofLF-glu": dict(model="DbofModelLF", dbof_activation="glu"),
    "StarterDbof": dict(model="DbofModel"),
    "FrameLogistic": dict(model="FrameLevelLogisticModel"),
    "LSTM": dict(model="LstmModel", lstm_random_sequence=True),
    "GRU": dict(model="GruModel"),
    "GRU-backward": dict(model="GruModel", gru_backward=True),
    "Logistic": dict(model="LogisticModel", frame_features=False),
    "Moe": dict(model="MoeModel", frame_features=False, moe_prob_gating=True),
}


def tiny_config(**overrides):
  values = dict(TINY)
  values.update(overrides)
  return models.ModelConfig(**values)


def tiny_batch(config, batch=4, frames=10, seed=0):
  rng = np.random.RandomState(seed)
  if config.frame_features:
    x = rng.rand(batch, frames, config.input_size).astype(np.float32)
    num_frames = np.array([frames, 3, 7, 1][:batch], np.int32)
    x[np.arange(frames)[None, :] >= num_frames[:, None]] = 0.0  # zero padding
  else:
    x = rng.rand(batch, config.input_size).astype(np.float32)
    num_frames = np.ones(batch, np.int32)
  return tf.constant(x), tf.constant(num_frames)


def test_registry_lists_every_model_and_rejects_unknown_names():
  names = set(models.registered_models())
  assert {"NetVLADModelLF", "NetFVModelLF", "GatedDbofModelLF", "SoftDbofModelLF",
          "DbofModelLF", "LstmModel", "GruModel", "DbofModel", "FrameLevelLogisticModel",
          "LogisticModel", "MoeModel"} <= names
  with pytest.raises(InputError, match="unknown model 'NoSuchModel'.*NetVLADModelLF"):
    models.get_model_class("NoSuchModel")


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_model_forward_gradients_and_inference_mode(name):
  tf.random.set_seed(0)
  config = tiny_config(**TINY_MODELS[name])
  model = models.build_model(config)
  x, num_frames = tiny_batch(config)
  with tf.GradientTape() as tape:
    predictions = model(x, num_frames, training=True)["predictions"]
    loss = tf.reduce_sum(predictions) + model.regularization_loss()
  assert predictions.shape == (4, 7)
  assert np.all((predictions.numpy() >= 0) & (predictions.numpy() <= 1))
  gradients = tape.gradient(loss, model.trainable_variables)
  missing = [v.name for v, g in zip(model.trainable_variables, gradients)
             if g is None or not np.any(g.numpy())]
  assert not missing, "no gradient reaches %s" % missing
  # Inference: each video's prediction is independent of the rest of the batch and of runs.
  full = model(x, num_frames, training=False)["predictions"].numpy()
  single = model(x[1:2], num_frames[1:2], training=False)["predictions"].numpy()
  np.testing.assert_allclose(full[1:2], single, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(full, model(x, num_frames, training=False)["predictions"].numpy())


@pytest.mark.parametrize("name", ["NetVLAD", "GatedDbof"])
def test_batch_norm_uses_moving_statistics_at_inference(name):
  config = tiny_config(**TINY_MODELS[name])
  model = models.build_model(config)
  x, num_frames = tiny_batch(config)
  before = model(x, num_frames, training=False)["predictions"].numpy()
  model.input_norm.moving_mean.assign(tf.fill(model.input_norm.moving_mean.shape, 0.3))
  after = model(x, num_frames, training=False)["predictions"].numpy()
  assert np.abs(before - after).max() > 1e-4


def test_audio_gets_integer_division_of_clusters():
  model = models.build_model(tiny_config(model="NetVLADModelLF", netvlad_cluster_size=5))
  assert [p.output_size for p in model.poolings] == [16 * 5, 8 * 2]  # 5 // 2 = 2
  model = models.build_model(tiny_config(model="SoftDbofModelLF", dbof_cluster_size=20))
  assert [p.output_size for p in model.poolings] == [20, 2]  # 20 // 8 = 2


def test_single_and_three_feature_models():
  rgb_only = tiny_config(model="NetVLADModelLF", feature_names=("rgb",), feature_sizes=(16,))
  model = models.build_model(rgb_only)
  assert len(model.poolings) == 1
  x, num_frames = tiny_batch(rgb_only)
  assert model(x, num_frames)["predictions"].shape == (4, 7)
  three = tiny_config(model="NetFVModelLF", feature_names=("rgb", "audio", "flow"),
                      feature_sizes=(16, 8, 4))
  model = models.build_model(three)
  assert [p.output_size for p in model.poolings] == [2 * 16 * 4, 2 * 8 * 2, 2 * 4 * 2]


def test_evenly_spaced_sampling_is_identity_at_full_length():
  """With iterations == num_frames the inference sampler takes every frame once, so the
  prediction equals that of the model applied to the frames in order."""
  config = tiny_config(model="NetVLADModelLF", lightvlad=True, iterations=10)
  model = models.build_model(config)
  x, _ = tiny_batch(config)
  full = tf.fill([4], 10)
  out = model(x, full, training=False)["predictions"].numpy()
  shuffled = tf.gather(x, np.random.RandomState(0).permutation(10), axis=1)
  # NetRVLAD pooling is order-invariant: any permutation of all frames gives the same output.
  np.testing.assert_allclose(out, model(shuffled, full)["predictions"].numpy(), rtol=1e-5,
                             atol=1e-6)


def config_from_command(args):
  """A ModelConfig from README-style arguments (as the scripts' flags would give)."""
  values = {}
  defaults = models.ModelConfig()
  for arg in expand_flag_prefixes(["x"] + list(args), models.CONFIG_FIELDS + ("max_steps",))[1:]:
    name, _, value = arg[2:].partition("=")
    if name not in models.CONFIG_FIELDS:
      continue
    default = getattr(defaults, name)
    if isinstance(default, bool):
      values[name] = value == "True"
    elif isinstance(default, tuple):
      values[name] = tuple(value.split(","))
    else:
      values[name] = type(default)(value)
  return models.ModelConfig(**values)


@pytest.mark.parametrize("willow", readme_configs.WILLOW_CONFIGS, ids=lambda c: c.key)
def test_parameter_counts_of_the_seven_configurations(willow):
  # Built in a graph, the variables are only declared (their initializers never run): the
  # shapes of the 333M-parameter models without allocating them.
  with tf.Graph().as_default():
    model = models.build_model(config_from_command(willow.train_args))
    assert model.num_trainable_parameters == willow.trainable_parameters
