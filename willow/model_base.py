"""What every model builds on: the model configuration, the base class and @register.

The scripts turn flags into a `ModelConfig` (flags are read only at the scripts' edge); models
are built from it (willow/models.py), and train.py saves it beside the checkpoints
(willow/configuration.py) so eval.py and inference.py rebuild exactly the model that was
trained.
"""
import contextlib
import dataclasses
import json
from typing import Dict, Tuple, Type

import tensorflow as tf

import utils
from utils import InputError
from willow import model_blocks

# Defaults are the original's flag defaults (its train.py and frame_level_models.py).
@dataclasses.dataclass
class ModelConfig:
  """Everything that determines a model's architecture."""
  model: str = "LogisticModel"
  feature_names: Tuple[str, ...] = ("mean_rgb",)
  feature_sizes: Tuple[int, ...] = (1024,)
  frame_features: bool = False
  num_classes: int = 4716
  # Frame sampling (cluster models, and the RNNs with *_random_sequence).
  iterations: int = 30
  sample_random_frames: bool = True
  # NetVLADModelLF / NetFVModelLF.
  netvlad_cluster_size: int = 64
  netvlad_hidden_size: int = 1024
  netvlad_relu: bool = True
  netvlad_add_batch_norm: bool = True
  lightvlad: bool = False
  vlagd: bool = False
  gating: bool = False
  gating_remove_diag: bool = False
  fv_cluster_size: int = 64
  fv_hidden_size: int = 2048
  fv_relu: bool = True
  fv_couple_weights: bool = True
  fv_coupling_factor: float = 0.01
  # DBoF family.
  dbof_cluster_size: int = 16384
  dbof_hidden_size: int = 2048
  dbof_relu: bool = True
  dbof_add_batch_norm: bool = True
  dbof_activation: str = "relu"
  dbof_pooling_method: str = "max"
  softdbof_maxpool: bool = False
  fc_dimred: bool = True
  # RNNs.
  lstm_cells: int = 1024
  lstm_layers: int = 2
  lstm_random_sequence: bool = False
  lstm_backward: bool = False
  gru_cells: int = 1024
  gru_layers: int = 2
  gru_random_sequence: bool = False
  gru_backward: bool = False
  # Classifier head.
  video_level_classifier_model: str = "MoeModel"
  moe_num_mixtures: int = 2
  moe_l2: float = 1e-8
  moe_low_rank_gating: int = -1
  moe_prob_gating: bool = False
  moe_prob_gating_input: str = "prob"

  def __post_init__(self):
    names, sizes = utils.parse_feature_list(self.feature_names, self.feature_sizes)
    self.feature_names, self.feature_sizes = tuple(names), tuple(sizes)

  @property
  def input_size(self) -> int:
    return sum(self.feature_sizes)

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

  @classmethod
  def from_json(cls, text: str) -> "ModelConfig":
    values = json.loads(text)
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in known})

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)


CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig))

# Every class decorated with @register, by name: willow/models.py builds --model=NAME from it.
REGISTRY: Dict[str, Type["BaseModel"]] = {}


def register(cls):
  """Class decorator: makes the class reachable as --model=<class name>."""
  REGISTRY[cls.__name__] = cls
  return cls


class BaseModel(tf.Module):
  """A video classifier: raw features [B, T, D] (frame level) or [B, D] (video level) and
  frame counts in, {"predictions": [B, V]} out.

  Every frame (or video-level vector) is l2-normalized first, as the original's training,
  evaluation and export graphs did; zero padding stays zero.
  """

  frame_level = True

  def __init__(self, config: ModelConfig):
    super().__init__(name=type(self).__name__)
    self.config = config

  # float32 trains; inference runs in float64 so that each video's scores do not change
  # with batch size or batch composition even in the last printed digit (float32 matmul
  # kernels sum in an order that depends on the batch shape).
  compute_dtype = tf.float32

  def __call__(self, raw_input, num_frames, training: bool = False):
    model_input = model_blocks.l2n(tf.cast(raw_input, self.compute_dtype))
    outputs = self.forward(model_input, num_frames, training)
    return {k: tf.cast(v, self.output_dtype) for k, v in outputs.items()}

  @property
  def output_dtype(self):
    """Mixed precision computes in 16 bits; losses and metrics get float32 predictions."""
    return tf.float32 if self.compute_dtype.size < 4 else self.compute_dtype

  @contextlib.contextmanager
  def computing_in(self, dtype):
    """The block runs the model in dtype, e.g. float32 where a model trained in bfloat16 is
    scored or its batch-norm statistics are estimated."""
    previous, self.compute_dtype = self.compute_dtype, dtype
    try:
      yield self
    finally:
      self.compute_dtype = previous

  def forward(self, model_input, num_frames, training: bool):
    raise NotImplementedError

  def classify(self, features, training: bool):
    """The classifier head on the pooled features, in the output dtype: under bfloat16 mixed
    precision the head (expert gates, their softmax, the probability gating) computes in
    float32, a small share of the step, so that the class probabilities are not rounded to 8
    bits (steps of 0.004 near 1: ties in the top-k ranking, a coarse log loss)."""
    return self.classifier(tf.cast(features, self.output_dtype), training)

  # Frames per input when the model reads segments (--segment_labels), else None. Not part of
  # the configuration: one trained model reads videos or segments.
  segment_size = None

  def frame_sampling(self) -> Tuple[int, bool]:
    """(frames sampled per input, i.i.d. random frames at training?) of the frame samplers.

    A segment of 5 frames is not sampled like a video: --iterations=30 samples would only
    repeat its frames, and 5 i.i.d. draws would drop some. Its frames are taken as they are
    (contiguous from its start: all of them in order), unless --iterations asks for fewer.
    """
    c = self.config
    if self.segment_size is None or c.iterations < self.segment_size:
      return c.iterations, c.sample_random_frames
    return self.segment_size, False

  def regularization_loss(self):
    """The penalties the original registered (the classifier head's l2 terms)."""
    return self.classifier.regularization_loss()

  @property
  def num_trainable_parameters(self) -> int:
    return int(sum(v.shape.num_elements() for v in self.trainable_variables))

  def build_classifier(self, input_size: int, classifier: str = None):
    """The configured video-level head on `input_size` features."""
    c = self.config
    name = classifier or c.video_level_classifier_model
    if name == "MoeModel":
      return model_blocks.MoeHead(
          input_size, c.num_classes, num_mixtures=c.moe_num_mixtures, l2_penalty=c.moe_l2,
          low_rank_gating=c.moe_low_rank_gating, prob_gating=c.moe_prob_gating,
          prob_gating_input=c.moe_prob_gating_input, remove_diag=c.gating_remove_diag)
    if name == "LogisticModel":
      return model_blocks.LogisticHead(input_size, c.num_classes)
    raise InputError("unknown --video_level_classifier_model %r; valid: LogisticModel, MoeModel"
                     % name)
