"""Video-level models, for aggregated features ([B, D] per video).

In the original neither could be trained: the default --model=LogisticModel did not exist in
WILLOW and train.py called MoeModel without its required is_training argument. Both work here.
"""
from willow.model_base import BaseModel, ModelConfig, register


class VideoLevelModel(BaseModel):
  """A classifier head applied directly to the (l2-normalized) video-level features."""

  frame_level = False
  head = None

  def __init__(self, config: ModelConfig):
    super().__init__(config)
    with self.name_scope:
      self.classifier = self.build_classifier(config.input_size, self.head)

  def forward(self, model_input, num_frames, training: bool):
    del num_frames
    return self.classify(model_input, training)


@register
class LogisticModel(VideoLevelModel):
  """sigmoid(x W + b) with an l2 penalty of 1e-8 on W, as the starter code."""
  head = "LogisticModel"


@register
class MoeModel(VideoLevelModel):
  """WILLOW's gated mixture of experts (--moe_num_mixtures, --moe_l2, --moe_prob_gating, ...)."""
  head = "MoeModel"
