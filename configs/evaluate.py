"""Evaluation of a student run against its frozen teacher: calibration, pairs, ROC, threshold.

  kd-mh evaluate --config=configs/evaluate.py:student=runs/student --workdir=runs/eval
  kd-mh evaluate \
      --config=configs/evaluate.py:student=runs/student,corpus=cremad,data_dir=out/cremad/tfds \
      --workdir=runs/eval_cremad --config.rule=fpr

Arguments after the colon (comma-separated key=value; a bare key means True):
  student            the student run's workdir (required)
  data_dir           the prepared corpus's tfds directory; empty: the one the student trained on
  corpus             its name (`kd-mh prep --corpus=NAME`, tfds name kd_mh_NAME); empty: the
                     student's
  split              the split the pairs come from (speaker-independent from train)
  calibration_split  the split the temperatures are fitted on; empty: no calibration (T = 1)
  runlocal           fewer bootstrap resamples and pairs, small batches (tests, smoke runs)
Any field can then be overridden with --config.FIELD=VALUE.
"""

import ml_collections

from kd_mh import train


def get_config(arg=None):
  arg = train.parse_config_arg(arg, runlocal=False, student="", data_dir="", corpus="",
                               split="test", calibration_split="validation")
  config = ml_collections.ConfigDict()
  config.student = arg.student
  config.student_step = -1  # the checkpoint to evaluate; -1: the run's best

  config.data = ml_collections.ConfigDict()
  config.data.data_dir = arg.data_dir
  config.data.name = f"kd_mh_{arg.corpus}" if arg.corpus else ""
  config.data.split = arg.split
  config.data.calibration_split = arg.calibration_split

  config.divergence = "js"  # a key of kd_mh.divergence.DIVERGENCES: the one the threshold is for
  config.rule = "youden"  # or "fpr": the threshold at the largest TPR with FPR <= fpr_target
  config.fpr_target = 0.05
  config.n_bootstrap = 1000  # resamples of the AUC's 95% CI
  config.seed = 0  # pair sampling and bootstrap
  config.max_pairs = 5000  # per pair type
  config.min_calibration_examples = 10  # fewer labelled ones: T = 1 (logged and recorded)
  config.ece_bins = 15
  config.batch_size = 32
  # The window grid kd-mh detect uses with this threshold (recorded in threshold.json; the
  # threshold itself is chosen on whole-clip scores).
  config.window_s = 2.0
  config.hop_s = 0.5

  if arg.runlocal:
    config.n_bootstrap = 100
    config.max_pairs = 200
    config.batch_size = 8
  return config
