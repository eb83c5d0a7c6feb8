"""kd-mh evaluate: calibrate student and teacher, score (in)congruent pairs, pick the threshold.

  kd-mh evaluate --config=configs/evaluate.py:student=runs/student --workdir=runs/eval
  kd-mh evaluate \
      --config=configs/evaluate.py:student=runs/student,corpus=cremad,data_dir=out/cremad/tfds \
      --workdir=runs/eval_cremad --config.divergence=hellinger --config.rule=fpr

Writes WORKDIR/threshold.json (what `kd-mh detect` reads), WORKDIR/metrics.json, roc.png,
divergence_hist.png and reliability.png (kd_mh/evaluate.py describes them), and prints a summary
table. `--config=FILE.py:ARG` passes ARG to the file's get_config; `--config.a.b=VALUE` overrides
any field.

Exit codes: 0 done, 2 on misuse (flags, or a config, student run, corpus or workdir that cannot be
used: the message names it).
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from kd_mh import evaluate

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/evaluate.py[:ARG]",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "the evaluation workdir: threshold.json, "
                               "metrics.json and plots go there")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}", exitcode=2)
  logging.set_verbosity(logging.INFO)
  try:
    result = evaluate.evaluate(_CONFIG.value, _WORKDIR.value)
  except ValueError as e:  # a config, run, corpus or workdir problem, named by the message
    logging.debug("kd-mh evaluate failed", exc_info=True)
    print(f"kd-mh evaluate: error: {e}", file=sys.stderr)
    return 2
  print(evaluate.summary_table(result["metrics"], result["threshold"]))
  print(f"kd-mh evaluate: wrote {evaluate.THRESHOLD_FILE} and {evaluate.METRICS_FILE} to "
        f"{_WORKDIR.value}")
  return 0
