"""The tf.distribute strategy of a training run, and the cluster TF_CONFIG describes.

TF_CONFIG is read in one place, through TensorFlow's own TFConfigClusterResolver (the reader
MultiWorkerMirroredStrategy uses), by training and by inference.py's task split.
"""
import re
from typing import Dict, List, Optional, Tuple

import tensorflow as tf
from absl import logging

import utils

STRATEGIES = ("auto", "default", "mirrored", "multi_worker")


def tf_config_cluster() -> Tuple[Dict[str, List[str]], Optional[str], Optional[int]]:
  """(jobs {type: [address, ...]}, this task's type, its index) from TF_CONFIG; ({}, None,
  None) when TF_CONFIG names no cluster."""
  try:
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    jobs = resolver.cluster_spec().as_dict()
    return jobs, resolver.task_type, resolver.task_id
  except ValueError as e:  # json.JSONDecodeError is a ValueError
    raise utils.InputError("TF_CONFIG is not valid: %s" % e)


def cluster_workers(jobs: Dict[str, List[str]]) -> int:
  """Processes that train: the chief (if any) and the workers."""
  return len(jobs.get("chief", [])) + len(jobs.get("worker", []))


def choose_strategy(name: str) -> tf.distribute.Strategy:
  """auto: MultiWorkerMirrored when TF_CONFIG names a cluster, Mirrored with several GPUs,
  else the default strategy."""
  jobs, _, _ = tf_config_cluster()
  legacy = sorted(set(jobs) - {"chief", "worker", "evaluator"})
  if legacy:
    # The original's TF1 layout (master + workers + parameter servers) has no equivalent:
    # training is synchronous, every worker holds all the variables.
    raise utils.InputError(
        "TF_CONFIG cluster has %s tasks: use \"chief\" (for the original's \"master\") and "
        "\"worker\" only; parameter servers are not used" % "/".join(legacy))
  if name == "auto":
    if cluster_workers(jobs) > 1:
      name = "multi_worker"
    elif len(tf.config.list_logical_devices("GPU")) > 1:
      name = "mirrored"
    else:
      name = "default"
  if name == "default":
    strategy = tf.distribute.get_strategy()
  elif name == "mirrored":
    strategy = tf.distribute.MirroredStrategy()
  elif name == "multi_worker":
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
  else:
    raise utils.InputError("--distribution_strategy must be one of %s, got %r"
                           % (", ".join(STRATEGIES), name))
  logging.info("distribution strategy %s: %d replica(s) on %d worker(s)",
               strategy_class_name(strategy), strategy.num_replicas_in_sync,
               num_workers(strategy))
  return strategy


def strategy_class_name(strategy) -> str:
  """The name under tf.distribute (MultiWorkerMirroredStrategy's class is called
  CollectiveAllReduceStrategy), else the class name (_DefaultDistributionStrategy)."""
  api_names = type(strategy).__dict__.get("_tf_api_names", ())
  return api_names[0].split(".")[-1] if api_names else type(strategy).__name__


def _strategy_cluster(strategy) -> Dict[str, List[str]]:
  resolver = getattr(strategy, "cluster_resolver", None)
  return resolver.cluster_spec().as_dict() if resolver is not None else {}


def num_workers(strategy) -> int:
  return cluster_workers(_strategy_cluster(strategy)) or 1


def is_chief(strategy) -> bool:
  jobs = _strategy_cluster(strategy)
  if not jobs:
    return True
  resolver = strategy.cluster_resolver
  if resolver.task_type == "chief":
    return True
  return "chief" not in jobs and resolver.task_type == "worker" and resolver.task_id == 0


# ----------------------------------------------------------------------------------------
# A worker that stopped.

# How TensorFlow tells a worker that another task of the cluster is gone: missed heartbeats, the
# coordination service (on the first worker) out of reach, a collective op aborted. (A bare
# "unavailable" may be a remote file system's: not enough.)
_PEER_GONE = re.compile(r"unhealthy|stopped sending heartbeats|coordination service|"
                        r"Collective ops is aborted", re.IGNORECASE)
_TASK = re.compile(r"/job:(\w+)/replica:\d+/task:(\d+)")


def stopped_peer(exc: Exception, strategy) -> Optional[str]:
  """The task that `exc` says has stopped or cannot be reached ("worker 1 (host:port)", or
  "another worker" when the message names none), or None when exc is not about another task
  (on one worker, always None)."""
  jobs = _strategy_cluster(strategy)
  if cluster_workers(jobs) <= 1:
    return None
  text = getattr(exc, "message", None) or str(exc)
  resolver = strategy.cluster_resolver
  this_task = (resolver.task_type, resolver.task_id)
  others = [(job, int(index)) for job, index in _TASK.findall(text)
            if (job, int(index)) != this_task and int(index) < len(jobs.get(job, []))]
  if others:
    job, index = others[0]
    return "%s %d (%s)" % (job, index, jobs[job][index])
  return "another worker" if _PEER_GONE.search(text) else None
