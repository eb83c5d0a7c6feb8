"""The speech student distilled from the frozen face teacher (KD + alignment + CE where labelled).

  kd-mh train --config=configs/student_kd.py:data_dir=out/demo/tfds,teacher=runs/teacher \
      --workdir=runs/student

Arguments after the colon (comma-separated key=value; a bare key means True):
  runlocal       shrink data, model and schedule so the run takes seconds (tests, smoke runs)
  corpus         prepared corpus name: `kd-mh prep --corpus=NAME` (tfds name kd_mh_NAME)
  data_dir       its tfds directory (`kd-mh prep --out=OUT` -> OUT/tfds)
  classes        the class set learnt: "" (the seven emotions) or "ravdess" (its eight, calm apart;
                 folded onto neutral for distillation)
  teacher        "fer2013" (the pretrained FER2013 teacher), "random", or a teacher run's workdir
  pair_corpus    a face corpus to borrow faces from, for speech corpora without faces (RAVDESS);
                 empty: the corpus's own faces
  pair_data_dir  its tfds directory
Any field can then be overridden with --config.FIELD=VALUE.
"""

import ml_collections

from kd_mh import train


def get_config(arg=None):
  arg = train.parse_config_arg(arg, runlocal=False, corpus="demo", data_dir="out/demo/tfds",
                               classes="", teacher="fer2013", pair_corpus="", pair_data_dir="")
  config = ml_collections.ConfigDict()
  config.mode = "student"
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.data_dir = arg.data_dir
  config.data.name = f"kd_mh_{arg.corpus}"
  config.data.classes = arg.classes  # "": the seven emotions; "ravdess": RAVDESS's own eight
  config.data.train_split = "train"
  config.data.eval_split = "validation"  # empty: no evaluation
  config.data.max_frames = 16  # face frames per clip (1.6 s at 10 fps, uniformly subsampled)
  config.data.max_logmel_frames = 400  # 4 s of log-mel at a 10 ms hop
  config.data.num_parallel_calls = -1  # tf.data.AUTOTUNE
  config.data.pair_faces = ml_collections.ConfigDict()
  config.data.pair_faces.data_dir = arg.pair_data_dir
  config.data.pair_faces.name = f"kd_mh_{arg.pair_corpus}" if arg.pair_corpus else ""
  config.data.pair_faces.train_split = "train"
  config.data.pair_faces.eval_split = "validation"

  config.batch_size = 32
  config.eval_batch_size = 32
  config.num_train_steps = 3000
  config.stop_after_steps = 0  # end this run early at this step (0: never); a rerun resumes

  config.optimizer = train.optimizer_config(learning_rate=1e-3, warmup_steps=200)

  config.teacher = ml_collections.ConfigDict()
  config.teacher.init = arg.teacher
  config.teacher.model = ml_collections.ConfigDict({"pooling": "mean", "freeze_bn": True})

  config.student = ml_collections.ConfigDict()
  config.student.model = ml_collections.ConfigDict({
      "conv_features": (16, 32, 64), "time_pool": (2, 2, 2), "mel_pool": (2, 2, 2),
      "norm_groups": 8, "rnn_cell": "gru", "rnn_hidden": 128, "rnn_layers": 1,
      "embed_dim": 128, "attention_hidden": 64, "dropout_rate": 0.3,
      "norm_per_bin": False,  # True: standardise each mel bin over the utterance (CMVN)
      # In training, rescale the mel axis by up to +-mel_warp and the time axis by up to
      # +-time_stretch per utterance (0: off)
      "mel_warp": 0.0, "time_stretch": 0.0,
      # SpecAugment in training: two bands of up to 0.4 s and two of up to 8 mel bins zeroed
      "time_masks": 2, "time_mask_width": 40, "mel_masks": 2, "mel_mask_width": 8})

  config.loss = ml_collections.ConfigDict()
  config.loss.temperature = 2.0
  config.loss.kd_weight = 1.0
  config.loss.align_weight = 0.5
  config.loss.ce_weight = 1.0
  config.loss.alignment = "cosine"  # or "info_nce"
  config.loss.nce_temperature = 0.1

  config.log_every_steps = 50
  config.eval_every_steps = 500
  config.checkpoint_every_steps = 500
  config.keep_checkpoints = 3
  config.best_metric = "uar"

  if arg.runlocal:
    config.batch_size = config.eval_batch_size = 8
    config.data.max_frames = 4
    config.data.max_logmel_frames = 96
    config.data.num_parallel_calls = 2
    config.num_train_steps = 4
    config.optimizer.warmup_steps = 0
    config.student.model.update({
        "conv_features": (8, 16), "time_pool": (2, 2), "mel_pool": (2, 2), "norm_groups": 4,
        "rnn_hidden": 16, "embed_dim": 32, "attention_hidden": 16, "time_masks": 0,
        "mel_masks": 0})
    config.log_every_steps = 1
    config.eval_every_steps = config.checkpoint_every_steps = 2
  return config
