"""Frame-level models: WILLOW's cluster and recurrent models, plus the starter code's.

Each cluster model is a recipe over the shared blocks of model_blocks.py:
sample frames -> input batch norm -> one pooling layer per feature -> hidden layer ->
optional context gating -> classifier head (the original's NetVLADModelLF and siblings).

Features: the first feature of --feature_names (rgb) gets the full cluster count; every
further feature (audio) gets its own pooling layer with cluster_size // 2 (NetVLAD family,
NetFV) or cluster_size // 8 (DBoF family), at least 1. With rgb,audio / 1024,128 this is
exactly the original's split at column 1024.
"""
import math
from typing import Callable, List

import tensorflow as tf

import utils
from willow import model_blocks as blocks
from willow.model_base import BaseModel, ModelConfig, register


def sample_frames(frames, num_frames, num_samples: int, training: bool,
                  random_frames: bool = True):
  """The original's training-time samplers; deterministic evenly spaced frames otherwise.

  The original sampled randomly at inference too, so its predictions changed from run to
  run; evenly spaced frames match the expectation of its i.i.d. sampler and are the identity
  when a video has exactly num_samples frames.
  """
  if not training:
    return utils.SampleEvenlySpacedFrames(frames, num_frames, num_samples)
  if random_frames:
    return utils.SampleRandomFrames(frames, num_frames, num_samples)
  return utils.SampleRandomSequence(frames, num_frames, num_samples)


def normalize_each_frame(norm, frames, training: bool):
  """The input batch norm (or nothing, if None) over the frames of every video, as
  AffineFrames: standardized frames with the norm's scale and offset left to the products
  that consume them."""
  if norm is None:
    return blocks.AffineFrames(frames)
  shape = tf.shape(frames)
  standardized = norm.standardize(tf.reshape(frames, [shape[0] * shape[1], -1]), training)
  return blocks.AffineFrames(tf.reshape(standardized, shape), norm.gamma, norm.beta)


def branch_cluster_sizes(cluster_size: int, num_features: int, divisor: int) -> List[int]:
  """Clusters per feature: the first feature gets them all, the others 1/divisor."""
  return [cluster_size] + [max(cluster_size // divisor, 1)] * (num_features - 1)


def branch_scope(index: int, feature_name: str) -> str:
  # The original named its rgb branch "video" and its audio branch "audio".
  return "video" if index == 0 else feature_name.replace("mean_", "")


class ClusterModel(BaseModel):
  """Skeleton shared by every cluster model (the original's NetVLADModelLF, NetFVModelLF,
  GatedDbofModelLF, SoftDbofModelLF and DbofModelLF)."""

  def __init__(self, config: ModelConfig, cluster_size: int, audio_divisor: int,
               add_batch_norm: bool, make_pooling: Callable, hidden_size: int = None,
               relu: bool = False, gating: bool = False, remove_diag: bool = False):
    super().__init__(config)
    self.add_batch_norm = add_batch_norm
    sizes = config.feature_sizes
    with self.name_scope:
      self.input_norm = blocks.BatchNorm(config.input_size, "input_bn") if add_batch_norm else None
      clusters = branch_cluster_sizes(cluster_size, len(sizes), audio_divisor)
      self.poolings = [make_pooling(index, size, k, branch_scope(index, name))
                       for index, (name, size, k)
                       in enumerate(zip(config.feature_names, sizes, clusters))]
      pooled_size = sum(p.output_size for p in self.poolings)
      self.hidden = None
      if hidden_size is not None:
        self.hidden = blocks.HiddenLayer(pooled_size, hidden_size,
                                         init_stddev=1 / math.sqrt(cluster_size),
                                         add_batch_norm=add_batch_norm, relu=relu)
        pooled_size = hidden_size
      self.gate = (blocks.ContextGate(pooled_size, add_batch_norm, remove_diag)
                   if gating else None)
      self.classifier = self.build_classifier(pooled_size)

  def forward(self, model_input, num_frames, training: bool):
    c = self.config
    num_samples, random_frames = self.frame_sampling()
    frames = sample_frames(model_input, num_frames, num_samples, training, random_frames)
    frames = normalize_each_frame(self.input_norm, frames, training)
    features = frames.split(list(c.feature_sizes))
    h = tf.concat([pool(x, training) for pool, x in zip(self.poolings, features)], axis=1)
    if self.hidden is not None:
      h = self.hidden(h, training)
    if self.gate is not None:
      h = self.gate(h, training)
    return self.classify(h, training)


@register
class NetVLADModelLF(ClusterModel):
  """NetVLAD (default), NetRVLAD (--lightvlad) or NetVLAGD (--vlagd) pooling."""

  def __init__(self, config: ModelConfig):
    variant = "rvlad" if config.lightvlad else ("vlagd" if config.vlagd else "vlad")
    add_bn = config.netvlad_add_batch_norm

    def pooling(index, size, clusters, scope):
      return blocks.NetVLAD(size, clusters, add_bn, variant, name=scope + "_VLAD")

    super().__init__(config, cluster_size=config.netvlad_cluster_size, audio_divisor=2,
                     add_batch_norm=add_bn, make_pooling=pooling,
                     hidden_size=config.netvlad_hidden_size, relu=config.netvlad_relu,
                     gating=config.gating, remove_diag=config.gating_remove_diag)


@register
class NetFVModelLF(ClusterModel):
  """NetFV pooling. Its batch-norm switch is --netvlad_add_batch_norm, as in the original."""

  def __init__(self, config: ModelConfig):
    add_bn = config.netvlad_add_batch_norm

    def pooling(index, size, clusters, scope):
      return blocks.NetFV(size, clusters, add_bn, config.fv_couple_weights,
                          config.fv_coupling_factor, name=scope + "_FV")

    super().__init__(config, cluster_size=config.fv_cluster_size, audio_divisor=2,
                     add_batch_norm=add_bn, make_pooling=pooling,
                     hidden_size=config.fv_hidden_size, relu=config.fv_relu,
                     gating=config.gating)


def _dbof_hidden_size(config: ModelConfig):
  return config.dbof_hidden_size if config.fc_dimred else None


@register
class GatedDbofModelLF(ClusterModel):
  """Gated Soft-DBoW on the first feature, Soft-DBoW on the others."""

  def __init__(self, config: ModelConfig):
    add_bn = config.dbof_add_batch_norm

    def pooling(index, size, clusters, scope):
      if index == 0:
        return blocks.GatedDBoF(size, clusters, add_bn, name=scope + "_DBOF")
      return blocks.SoftDBoF(size, clusters, add_bn, config.softdbof_maxpool,
                             name=scope + "_DBOF")

    super().__init__(config, cluster_size=config.dbof_cluster_size, audio_divisor=8,
                     add_batch_norm=add_bn, make_pooling=pooling,
                     hidden_size=_dbof_hidden_size(config), relu=config.dbof_relu)


@register
class SoftDbofModelLF(ClusterModel):
  """Soft-DBoW on every feature."""

  def __init__(self, config: ModelConfig):
    add_bn = config.dbof_add_batch_norm

    def pooling(index, size, clusters, scope):
      return blocks.SoftDBoF(size, clusters, add_bn, config.softdbof_maxpool,
                             name=scope + "_DBOF")

    super().__init__(config, cluster_size=config.dbof_cluster_size, audio_divisor=8,
                     add_batch_norm=add_bn, make_pooling=pooling,
                     hidden_size=_dbof_hidden_size(config), relu=config.dbof_relu)


@register
class DbofModelLF(ClusterModel):
  """Deep bag of frames (mean and max pooled activations). It crashed in the original
  (its classifier call lacked is_training) and never applied its activation: both fixed."""

  def __init__(self, config: ModelConfig):
    add_bn = config.dbof_add_batch_norm

    def pooling(index, size, clusters, scope):
      return blocks.DBoF(size, clusters, add_bn, config.dbof_activation, name=scope + "_DBOF")

    super().__init__(config, cluster_size=config.dbof_cluster_size, audio_divisor=8,
                     add_batch_norm=add_bn, make_pooling=pooling,
                     hidden_size=config.dbof_hidden_size, relu=config.dbof_relu)


@register
class DbofModel(BaseModel):
  """The starter code's DBoF: all features share one cluster layer, relu6 activations are
  pooled over frames (--dbof_pooling_method), then a batch-normalized relu6 hidden layer."""

  def __init__(self, config: ModelConfig):
    super().__init__(config)
    add_bn, k = config.dbof_add_batch_norm, config.dbof_cluster_size
    if config.dbof_pooling_method not in ("max", "average"):
      raise utils.InputError("--dbof_pooling_method must be max or average for DbofModel")
    with self.name_scope:
      self.input_norm = blocks.BatchNorm(config.input_size, "input_bn") if add_bn else None
      self.clusters = blocks.ClusterAssignment(config.input_size, k, add_bn, softmax=False)
      self.hidden = blocks.HiddenLayer(k, config.dbof_hidden_size, init_stddev=1 / math.sqrt(k),
                                       add_batch_norm=add_bn, relu=True)
      self.classifier = self.build_classifier(config.dbof_hidden_size)

  def forward(self, model_input, num_frames, training: bool):
    c = self.config
    num_samples, random_frames = self.frame_sampling()
    frames = sample_frames(model_input, num_frames, num_samples, training, random_frames)
    frames = normalize_each_frame(self.input_norm, frames, training)
    activations = tf.nn.relu6(self.clusters(frames, training))
    pooled = utils.FramePooling(activations, c.dbof_pooling_method)
    return self.classify(self.hidden(pooled, training), training)


@register
class FrameLevelLogisticModel(BaseModel):
  """The starter code's baseline: logistic regression on the mean of the valid frames."""

  def __init__(self, config: ModelConfig):
    super().__init__(config)
    with self.name_scope:
      self.classifier = blocks.LogisticHead(config.input_size, config.num_classes)

  def forward(self, model_input, num_frames, training: bool):
    counts = tf.cast(tf.maximum(num_frames, 1), model_input.dtype)[:, None]
    return self.classify(tf.reduce_sum(model_input, axis=1) / counts, training)


class RecurrentModel(BaseModel):
  """Stacked LSTM or GRU over the frames (no input batch norm, no feature split); the
  classifier sees the concatenated final states of all layers (the original's LstmModel and
  GruModel)."""

  def __init__(self, config: ModelConfig, layer_class, units: int, num_layers: int,
               random_sequence: bool, backward: bool):
    super().__init__(config)
    self.random_sequence, self.backward = random_sequence, backward
    with self.name_scope:
      sizes = [config.input_size] + [units] * (num_layers - 1)
      self.layers = [layer_class(size, units, name="cell_%d" % i) for i, size in enumerate(sizes)]
      self.classifier = self.build_classifier(self.state_size(units, num_layers))

  def state_size(self, units, num_layers):
    raise NotImplementedError

  def final_features(self, states):
    raise NotImplementedError

  def forward(self, model_input, num_frames, training: bool):
    frames = model_input
    if self.random_sequence:
      frames = sample_frames(frames, num_frames, self.frame_sampling()[0], training)
    # The original kept the reader's count as sequence length even after subsampling.
    lengths = tf.minimum(num_frames, tf.shape(frames)[1])
    if self.backward:
      frames = tf.reverse_sequence(frames, lengths, seq_axis=1, batch_axis=0)
    states = blocks.run_stacked_rnn(self.layers, frames, lengths)
    return self.classify(self.final_features(states), training)


@register
class LstmModel(RecurrentModel):
  """Stacked TF1 basic LSTMs; the classifier gets [c1, h1, c2, h2]."""

  def __init__(self, config: ModelConfig):
    super().__init__(config, layer_class=blocks.LSTMLayer, units=config.lstm_cells,
                     num_layers=config.lstm_layers,
                     random_sequence=config.lstm_random_sequence, backward=config.lstm_backward)

  def state_size(self, units, num_layers):
    return 2 * units * num_layers

  def final_features(self, states):
    return tf.concat([part for c_h in states for part in c_h], axis=1)


@register
class GruModel(RecurrentModel):
  """Stacked TF1 GRUs; the classifier gets [h1, h2]."""

  def __init__(self, config: ModelConfig):
    super().__init__(config, layer_class=blocks.GRULayer, units=config.gru_cells,
                     num_layers=config.gru_layers, random_sequence=config.gru_random_sequence,
                     backward=config.gru_backward)

  def state_size(self, units, num_layers):
    return units * num_layers

  def final_features(self, states):
    return tf.concat(states, axis=1)
