import numpy as np

from data_prep import features


def test_log_mel_spans_the_clip_and_has_the_configured_bins():
  sr = 16000
  for n_mels in (64, 80):
    config = features.LogMelConfig(n_mels=n_mels)
    for seconds in (0.5, 2.0, 3.37):
      audio = np.random.default_rng(0).normal(0, 0.1, int(seconds * sr)).astype(np.float32)
      mel = features.log_mel(audio, config)
      assert mel.shape[1] == n_mels and mel.dtype == np.float32
      assert abs(len(mel) * config.hop_ms / 1000 - seconds) < 0.05
  assert features.LogMelConfig().win_length == 400 and features.LogMelConfig().hop_length == 160


def test_log_mel_puts_a_tone_in_the_right_band_and_silence_is_finite():
  sr = 16000
  t = np.arange(sr) / sr
  low = features.log_mel(np.sin(2 * np.pi * 300 * t).astype(np.float32))
  high = features.log_mel(np.sin(2 * np.pi * 4000 * t).astype(np.float32))
  assert np.argmax(low.mean(0)) < np.argmax(high.mean(0))
  silent = features.log_mel(np.zeros(sr, np.float32))
  assert np.isfinite(silent).all()
  assert features.log_mel(np.zeros(0, np.float32)).shape == (0, 64)


def test_rms_envelope_follows_energy():
  sr = 16000
  audio = np.zeros(2 * sr, np.float32)
  audio[sr // 2: sr] = 0.5  # loud from 0.5 s to 1.0 s
  env = features.rms_envelope(audio, sr, np.array([0.25, 0.75, 1.5, 5.0]))
  np.testing.assert_allclose(env, [0.0, 0.5, 0.0, 0.0], atol=1e-6)


def test_blockwise_log_mel_equals_librosa_on_the_whole_signal():
  import librosa  # pylint: disable=import-outside-toplevel
  config = features.LogMelConfig(n_mels=80)
  audio = np.random.default_rng(1).normal(0, 0.1, 16000 * 3 + 77).astype(np.float32)
  reference = np.log(librosa.feature.melspectrogram(
      y=audio, sr=16000, n_fft=config.n_fft, hop_length=config.hop_length,
      win_length=config.win_length, n_mels=80, fmin=config.fmin, power=2.0, center=True,
      pad_mode="constant") + config.floor).T
  for block in (4096, 64, 5):
    np.testing.assert_allclose(features.log_mel(audio, config, block_frames=block), reference,
                               atol=1e-5)
