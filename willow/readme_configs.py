"""The seven WILLOW configurations of the original README, defined once.

The command lines are the original README's, verbatim except that `$path_to_features` is the
`{features}` placeholder. The demo, the tests and the README all read them from here.
`corrected_inference` fixes the one inconsistency of the original README: configuration 3's
inference line names a train_dir (`...-300iter-gatedmoe`) that its training line never writes.
"""
import dataclasses
import shlex
from typing import Dict, List


@dataclasses.dataclass(frozen=True)
class WillowConfig:
  key: str                 # short name used by the demo and the tests
  title: str
  model: str
  trainable_parameters: int  # of the original's graph at full size (V = 4716)
  train_command: str
  inference_command: str

  @property
  def train_args(self) -> List[str]:
    return command_args(self.train_command)

  @property
  def inference_args(self) -> List[str]:
    return command_args(self.inference_command)

  @property
  def train_dir(self) -> str:
    return flag_value(self.train_args, "train_dir")

  @property
  def inference_output(self) -> str:
    return flag_value(self.inference_args, "output_file")

  @property
  def corrected_inference_args(self) -> List[str]:
    """Inference args whose --train_dir is the directory the training line writes."""
    return with_flag(self.inference_args, "train_dir", self.train_dir)


def command_args(command: str, features: str = "{features}") -> List[str]:
  """Splits a README command line into script arguments (without `python script.py`)."""
  return [a.replace("{features}", features) for a in shlex.split(command)[2:]]


def flag_value(args: List[str], name: str) -> str:
  for arg in args:
    if arg.startswith("--%s=" % name):
      return arg.split("=", 1)[1]
  raise KeyError(name)


def with_flag(args: List[str], name: str, value) -> List[str]:
  """Returns args with --name set to value (replaced in place, else appended)."""
  prefix = "--%s=" % name
  if not any(a.startswith(prefix) for a in args):
    return list(args) + [prefix + str(value)]
  return [prefix + str(value) if a.startswith(prefix) else a for a in args]


WILLOW_CONFIGS: List[WillowConfig] = [
    WillowConfig(
        key="netvlad", title="Gated NetVLAD (256 clusters)", model="NetVLADModelLF",
        trainable_parameters=333_229_888,
        train_command='python train.py --train_data_pattern="{features}/*a*??.tfrecord" --model=NetVLADModelLF --train_dir=gatednetvladLF-256k-1024-80-0002-300iter-norelu-basic-gatedmoe --frame_features=True --feature_names="rgb,audio" --feature_sizes="1024,128" --batch_size=80 --base_learning_rate=0.0002 --netvlad_cluster_size=256 --netvlad_hidden_size=1024 --moe_l2=1e-6 --iterations=300 --learning_rate_decay=0.8 --netvlad_relu=False --gating=True --moe_prob_gating=True --max_step=700000',
        inference_command='python inference.py --output_file=test-gatednetvladLF-256k-1024-80-0002-300iter-norelu-basic-gatedmoe.csv --input_data_pattern="{features}/test*.tfrecord" --model=NetVLADModelLF --train_dir=gatednetvladLF-256k-1024-80-0002-300iter-norelu-basic-gatedmoe --frame_features=True --feature_names="rgb,audio" --feature_sizes="1024,128" --batch_size=1024 --base_learning_rate=0.0002 --netvlad_cluster_size=256 --netvlad_hidden_size=1024 --moe_l2=1e-6 --iterations=300 --learning_rate_decay=0.8 --netvlad_relu=False --gating=True --moe_prob_gating=True --run_once=True  --top_k=50'),
    WillowConfig(
        key="netfv", title="Gated NetFV (128 clusters)", model="NetFVModelLF",
        trainable_parameters=333_090_240,
        train_command='python train.py --train_data_pattern="{features}/*a*??.tfrecord" --model=NetFVModelLF --train_dir=gatednetfvLF-128k-1024-80-0002-300iter-norelu-basic-gatedmoe --frame_features=True --feature_names="rgb,audio" --feature_sizes="1024,128" --batch_size=80 --base_learning_rate=0.0002 --fv_cluster_size=128 --fv_hidden_size=1024 --moe_l2=1e-6 --iterations=300 --learning_rate_decay=0.8 --fv_relu=False --gating=True --moe_prob_gating=True --fv_couple_weights=False --max_step=600000',
        inference_command='python inference.py --output_file=test-gatednetfvLF-128k-1024-80-0002-300iter-norelu-basic-gatedmoe.csv --input_data_pattern="{features}/test*.tfrecord" --model=NetFVModelLF --train_dir=gatednetfvLF-128k-1024-80-0002-300iter-norelu-basic-gatedmoe --frame_features=True --feature_names="rgb,audio" --feature_sizes="1024,128" --batch_size=1024 --base_learning_rate=0.0002 --fv_cluster_size=128 --fv_hidden_size=1024 --moe_l2=1e-6 --iterations=300 --learning_rate_decay=0.8 --fv_relu=False --gating=True --moe_prob_gating=True --fv_couple_weights=False --top_k=50'),
    WillowConfig(
        key="gated_dbof", title="Gated Soft-DBoW (4096 clusters)", model="GatedDbofModelLF",
        trainable_parameters=41_543_128,
        train_command='python train.py --train_data_pattern="{features}/*a*??.tfrecord" --model=GatedDbofModelLF --train_dir=gateddboflf-4096-1024-80-0002-300iter --frame_features=True --feature_names="rgb,audio" --feature_sizes="1024,128" --batch_size=80 --base_learning_rate=0.0002 --dbof_cluster_size=4096 --dbof_hidden_size=1024 --moe_l2=1e-6 --iterations=300 --dbof_relu=False --max_step=1000000',
        inference_command='python inference.py --output_file=test-gateddboflf-4096-1024-80-0002-300iter-gatedmoe.csv --input_data_pattern="{features}/test*.tfrecord" --model=GatedDbofModelLF --train_dir=gateddboflf-4096-1024-80-0002-300iter-gatedmoe --frame_features=True --feature_names="rgb,audio" --feature_sizes="1024,128" --batch_size=512 --base_learning_rate=0.0002 --dbof_cluster_size=4096 --dbof_hidden_size=1024 --moe_l2=1e-6 --iterations=300 --dbof_relu=False --moe_prob_gating=True --run_once=True --top_k=50'),
    WillowConfig(
        key="soft_dbof", title="Soft-DBoW (8000 clusters)", model="SoftDbofModelLF",
        trainable_parameters=41_712_680,
        train_command='python train.py --train_data_pattern="{features}/*a*??.tfrecord" --model=SoftDbofModelLF --train_dir=softdboflf-8000-1024-80-0002-300iter --frame_features=True --feature_names="rgb,audio" --feature_sizes="1024,128" --batch_size=80 --base_learning_rate=0.0002 --dbof_cluster_size=8000 --dbof_hidden_size=1024 --iterations=300 --dbof_relu=False --max_step=800000',
        inference_command='python inference.py --output_file=test-softdboflf-8000-1024-80-0002-300iter.csv --input_data_pattern="{features}/test*.tfrecord"  --model=SoftDbofModelLF --train_dir=softdboflf-8000-1024-80-0002-300iter --frame_features=True --feature_names="rgb,audio" --feature_sizes="1024,128" --batch_size=256 --base_learning_rate=0.0002 --dbof_cluster_size=8000 --dbof_hidden_size=1024 --iterations=300 --dbof_relu=False --run_once=True --top_k=50'),
    WillowConfig(
        key="netrvlad", title="Gated NetRVLAD (256 clusters)", model="NetVLADModelLF",
        trainable_parameters=332_951_360,
        train_command='python train.py --train_data_pattern="{features}/*a*??.tfrecord" --model=NetVLADModelLF --train_dir=gatedlightvladLF-256k-1024-80-0002-300iter-norelu-basic-gatedmoe --frame_features=True --feature_names="rgb,audio" --feature_sizes="1024,128" --batch_size=80 --base_learning_rate=0.0002 --netvlad_cluster_size=256 --netvlad_hidden_size=1024 --moe_l2=1e-6 --iterations=300 --learning_rate_decay=0.8 --netvlad_relu=False --gating=True --moe_prob_gating=True --lightvlad=True --max_step=600000',
        inference_command='python inference.py --output_file=test-gatedlightvladLF-256k-1024-80-0002-300iter-norelu-basic-gatedmoe.csv --input_data_pattern="{features}/test*.tfrecord" --model=NetVLADModelLF --train_dir=gatedlightvladLF-256k-1024-80-0002-300iter-norelu-basic-gatedmoe --frame_features=True --feature_names="rgb,audio" --feature_sizes="1024,128" --batch_size=1024 --base_learning_rate=0.0002 --netvlad_cluster_size=256 --netvlad_hidden_size=1024 --moe_l2=1e-6 --iterations=300 --learning_rate_decay=0.8 --netvlad_relu=False --gating=True --moe_prob_gating=True --lightvlad=True --run_once=True  --top_k=50'),
    WillowConfig(
        key="gru", title="GRU (2 layers)", model="GruModel",
        trainable_parameters=73_715_832,
        train_command='python train.py --train_data_pattern="{features}/*a*??.tfrecord" --model=GruModel --train_dir=GRU-0002-1200 --frame_features=True --feature_names="rgb,audio" --feature_sizes="1024,128" --batch_size=128 --base_learning_rate=0.0002 --gru_cells=1200 --learning_rate_decay=0.9 --moe_l2=1e-6 --max_step=300000',
        inference_command='python inference.py --output_file=test-GRU-0002-1200.csv --input_data_pattern="{features}/test*.tfrecord" --model=GruModel --train_dir=GRU-0002-1200 --frame_features=True --feature_names="rgb,audio" --feature_sizes="1024,128" --batch_size=1024 --base_learning_rate=0.0002 --gru_cells=1200 --learning_rate_decay=0.9 --moe_l2=1e-6 --run_once=True --top_k=50'),
    WillowConfig(
        key="lstm", title="LSTM (2 layers)", model="LstmModel",
        trainable_parameters=113_902_808,
        train_command='python train.py --train_data_pattern="{features}/*a*??.tfrecord" --model=LstmModel --train_dir=lstm-0002-val-150-random --frame_features=True --feature_names="rgb,audio" --feature_sizes="1024,128" --batch_size=128 --base_learning_rate=0.0002 --iterations=150 --lstm_random_sequence=True --max_step=400000',
        inference_command='python inference.py --output_file=test-lstm-0002-val-150-random.csv --input_data_pattern="{features}/test*.tfrecord" --model=LstmModel --train_dir=lstm-0002-val-150-random --frame_features=True --feature_names="rgb,audio" --feature_sizes="1024,128" --batch_size=1024 --base_learning_rate=0.0002 --iterations=150 --lstm_random_sequence=True --run_once=True --top_k=50'),
]

CONFIGS_BY_KEY: Dict[str, WillowConfig] = {c.key: c for c in WILLOW_CONFIGS}

# The seven CSVs the original README's inference lines write: file_averaging.py's default inputs.
README_INFERENCE_OUTPUTS: List[str] = [c.inference_output for c in WILLOW_CONFIGS]


# `make demo`: the same command lines, scaled down to train on generated data in about a
# minute per model on 2 CPU cores. Each key is a flag of the README line; values replace it.
DEMO_SCALE: Dict[str, Dict[str, str]] = {
    "netvlad": dict(netvlad_cluster_size="16", netvlad_hidden_size="64", iterations="30",
                    batch_size="32"),
    "netfv": dict(fv_cluster_size="8", fv_hidden_size="64", iterations="30", batch_size="32"),
    "gated_dbof": dict(dbof_cluster_size="128", dbof_hidden_size="64", iterations="30",
                       batch_size="32"),
    "soft_dbof": dict(dbof_cluster_size="256", dbof_hidden_size="64", iterations="30",
                      batch_size="32"),
    "netrvlad": dict(netvlad_cluster_size="16", netvlad_hidden_size="64", iterations="30",
                     batch_size="32"),
    "gru": dict(gru_cells="32", batch_size="32", gru_random_sequence="True", iterations="30"),
    "lstm": dict(lstm_cells="32", iterations="30", batch_size="32"),
}
# Flags every scaled run shares: the demo's class count, a learning rate suited to a few
# hundred steps, and cheap checkpoints.
DEMO_COMMON = dict(max_step="300", base_learning_rate="0.002", bn_calibration_batches="20",
                   save_checkpoint_steps="100000", export_model_steps="0", log_steps="50")


def scaled_args(args: List[str], scale: Dict[str, str]) -> List[str]:
  """Replaces (or appends) each flag of `scale` in README-style args."""
  for name, value in scale.items():
    args = with_flag(args, name, value)
  return args
