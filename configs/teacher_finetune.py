"""The face teacher fine-tuned on a corpus's faces (cross-entropy on the face label).

  kd-mh train --config=configs/teacher_finetune.py:data_dir=out/demo/tfds --workdir=runs/teacher

Starts from the FER2013 mini-Xception (`kd_mh.models.pretrained`; downloaded once, 891 KB) and
trains it on the speaker's face crops; the face label is `face_label` where the corpus has one
(CREMA-D face votes, the demo corpus's face emotion), else the clip's label. Pass the workdir as
`teacher=` to configs/student_kd.py. Arguments after the colon (comma-separated key=value; a bare
key means True):
  runlocal   shrink data, schedule and batches so the run takes seconds (tests, smoke runs)
  corpus     prepared corpus name: `kd-mh prep --corpus=NAME` (tfds name kd_mh_NAME)
  data_dir   its tfds directory (`kd-mh prep --out=OUT` -> OUT/tfds)
  init       "fer2013", "random", or a teacher run's workdir to continue from
Any field can then be overridden with --config.FIELD=VALUE.
"""

import ml_collections

from kd_mh import train


def get_config(arg=None):
  arg = train.parse_config_arg(arg, runlocal=False, corpus="demo", data_dir="out/demo/tfds",
                               init="fer2013")
  config = ml_collections.ConfigDict()
  config.mode = "teacher"
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.data_dir = arg.data_dir
  config.data.name = f"kd_mh_{arg.corpus}"
  config.data.train_split = "train"
  config.data.eval_split = "validation"  # empty: no evaluation
  config.data.max_frames = 8  # face frames per clip, uniformly subsampled over the clip
  config.data.max_logmel_frames = 1  # speech is not used; keep the batches small
  config.data.num_parallel_calls = -1  # tf.data.AUTOTUNE

  config.batch_size = 16
  config.eval_batch_size = 16
  config.num_train_steps = 1000
  config.stop_after_steps = 0  # end this run early at this step (0: never); a rerun resumes

  # A low learning rate: the backbone is pretrained.
  config.optimizer = train.optimizer_config(learning_rate=3e-4, warmup_steps=50)

  config.teacher = ml_collections.ConfigDict()
  config.teacher.init = arg.init
  # freeze_bn: small fine-tuning batches would wreck the pretrained BatchNorm statistics.
  config.teacher.model = ml_collections.ConfigDict({"pooling": "mean", "freeze_bn": True})

  # Training-time face augmentation (one draw per clip): off by default.
  config.augment = ml_collections.ConfigDict(
      {"flip": False, "shift_px": 0, "brightness": 0.0, "contrast": 0.0})

  config.log_every_steps = 20
  config.eval_every_steps = 200
  config.checkpoint_every_steps = 200
  config.keep_checkpoints = 3
  config.best_metric = "uar"

  if arg.runlocal:
    config.batch_size = config.eval_batch_size = 8
    config.data.max_frames = 2
    config.data.num_parallel_calls = 2
    config.num_train_steps = 4
    config.optimizer.warmup_steps = 0
    config.log_every_steps = 1
    config.eval_every_steps = config.checkpoint_every_steps = 2
  return config
