"""The supervised speech baseline: the student trained from labels alone (cross-entropy).

  kd-mh train --config=configs/student_supervised.py:data_dir=out/demo/tfds --workdir=runs/sup

configs/student_kd.py without the teacher (same student, data and schedule): the comparison that
shows what distillation adds. Arguments after the colon (comma-separated key=value; a bare key
means True):
  runlocal   shrink data, model and schedule so the run takes seconds (tests, smoke runs)
  corpus     prepared corpus name: `kd-mh prep --corpus=NAME` (tfds name kd_mh_NAME)
  data_dir   its tfds directory (`kd-mh prep --out=OUT` -> OUT/tfds)
  classes    the class set learnt: "" (the seven emotions) or "ravdess" (its eight, calm apart)
Any field can then be overridden with --config.FIELD=VALUE.
"""

from kd_mh import train


def get_config(arg=None):
  arg = train.parse_config_arg(arg, runlocal=False, corpus="demo", data_dir="out/demo/tfds",
                               classes="")
  config = train.load_config(
      "student_kd", f"runlocal={arg.runlocal},corpus={arg.corpus},data_dir={arg.data_dir},"
      f"classes={arg.classes}")
  config.mode = "student_supervised"
  config.data.max_frames = 1  # faces are not used; keep the batches small
  del config.data.pair_faces, config.teacher, config.loss
  return config
