"""willow-tf2's internal package: the code behind the top-level scripts.

Imports go one way, from the top of this list to the bottom (tests/test_layers.py checks it on
every .py file of the repository):

1. Scripts: train.py, eval.py, inference.py, export_model.py, file_averaging.py,
   fit_ensemble_weights.py, make_synthetic_data.py, demo.py (and benchmarks/, tests/). They read
   the flags.
2. Flag definitions: willow/script_flags.py, the only module besides the scripts that touches
   absl's FLAGS. It defines every flag, parses the command line and turns flags into the
   library's parameter objects.
3. Configuration: willow/configuration.py, the model configuration saved beside the
   checkpoints (model_config.json) and the rules that reconcile it with the flags.
4. Library: the models (willow/models.py, frame_level_models.py, video_level_models.py,
   losses.py), the readers (readers.py, willow/record_errors.py, willow/segments.py for
   segment-rated data), training (willow/training.py around willow/train_step.py,
   willow/distribution.py), checkpoints (willow/checkpoints.py, willow/checkpoint_import.py),
   the SavedModel export (willow/saved_model.py), metrics (eval_util.py, the two calculators,
   willow/prediction_metrics.py), the submission CSV (willow/submission_csv.py) and the
   original README's command lines (willow/readme_configs.py).
5. Blocks and I/O: willow/model_blocks.py, utils.py, willow/fileio.py, willow/tf_env.py.

docs/architecture.md says where each concern lives.
"""
