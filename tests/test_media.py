"""Tests for data_prep.media: real CREMA-D / RAVDESS files and round trips through write_video."""

from __future__ import annotations

import os

import av
import numpy as np
import pytest
import scipy.signal
import soundfile

from conftest import shared_path
from data_prep import media

SR = 16000
CREMAD_FLV = ("cremad", "video", "1001_DFA_ANG_XX.flv")


def _gray_frames(n: int, height: int = 64, width: int = 96, step: int = 3, noise: bool = False):
  """Frame i is flat gray 20 + step * i (plus optional texture): decoded frames name themselves."""
  rng = np.random.default_rng(0)
  for i in range(n):
    frame = np.full((height, width, 3), 20 + step * i, np.int16)
    if noise:
      frame += rng.integers(-10, 10, frame.shape)
    yield np.clip(frame, 0, 255).astype(np.uint8)


def _source_index(frame: media.Frame, step: int = 3) -> int:
  return int(round((frame.rgb.mean() - 20) / step))


def _click(duration_s: float, at_s: float, sample_rate: int = SR) -> np.ndarray:
  audio = np.zeros(int(round(duration_s * sample_rate)), np.float32)
  start = int(round(at_s * sample_rate))
  audio[start:start + 8] = 0.8
  return audio


def _best_lag(x: np.ndarray, y: np.ndarray, max_lag: int) -> int:
  """The lag L in [-max_lag, max_lag] that best matches x[n] to y[n + L]."""
  n = min(len(x), len(y)) - 2 * max_lag
  scores = [np.dot(x[max_lag:max_lag + n], y[max_lag + lag:max_lag + lag + n])
            for lag in range(-max_lag, max_lag + 1)]
  return int(np.argmax(scores)) - max_lag


def _rss_mb() -> float:
  return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# --- write_video -------------------------------------------------------------------------------


def test_write_video_round_trip(tmp_path):
  path = tmp_path / "clip.mp4"
  t = np.arange(2 * SR) / SR
  tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
  media.write_video(path, _gray_frames(40), fps=20, audio=tone)

  info = media.probe(path)
  assert (info.width, info.height, info.fps) == (96, 64, 20.0)
  assert info.has_video and info.has_audio
  assert (info.audio_sample_rate, info.audio_channels) == (SR, 1)
  assert info.duration_s == pytest.approx(2.0)

  frames = list(media.iter_frames(path, fps=20))
  assert [f.index for f in frames] == list(range(40))
  np.testing.assert_allclose([f.timestamp_s for f in frames], np.arange(40) / 20, atol=1e-6)
  assert [_source_index(f) for f in frames] == list(range(40))
  assert frames[0].rgb.shape == (64, 96, 3) and frames[0].rgb.dtype == np.uint8

  audio = media.load_audio(path)
  assert audio.dtype == np.float32 and audio.shape == (2 * SR,)
  # The tone survives AAC: right level and pitch (frequency bins are 0.5 Hz apart over 2 s).
  assert np.sqrt(np.mean(audio[SR // 4:-SR // 4] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.05)
  assert np.argmax(np.abs(np.fft.rfft(audio))) / 2.0 == pytest.approx(440, abs=1)


def test_write_video_is_deterministic(tmp_path):
  # Frames from a generator: each array is freed after use, which once made the output vary.
  outputs = set()
  for k in range(3):
    path = tmp_path / f"{k}.mp4"
    media.write_video(path, _gray_frames(30, 120, 160, noise=True), fps=25, audio=_click(1.2, 0.4))
    outputs.add(path.read_bytes())
  assert len(outputs) == 1


def test_write_video_without_audio(tmp_path):
  path = tmp_path / "silent.mp4"
  media.write_video(path, _gray_frames(10), fps=10)
  assert not media.probe(path).has_audio
  with pytest.raises(media.MediaError) as e:
    media.load_audio(path)
  assert e.value.reason == "no audio stream"


@pytest.mark.parametrize("frames, reason", [
    ([np.zeros((63, 96, 3), np.uint8)], "even width and height"),
    ([np.zeros((64, 96), np.uint8)], "HxWx3 uint8"),
    ([np.zeros((64, 96, 3), np.float32)], "HxWx3 uint8"),
    ([np.zeros((64, 96, 3), np.uint8), np.zeros((64, 64, 3), np.uint8)], "frame size changed"),
    ([], "no frames"),
])
def test_write_video_rejects_bad_frames(tmp_path, frames, reason):
  path = tmp_path / "bad.mp4"
  with pytest.raises(media.MediaError, match=reason):
    media.write_video(path, frames, fps=10)
  assert os.listdir(tmp_path) == []  # neither the file nor a partial one is left behind


# --- the video clock ---------------------------------------------------------------------------


@pytest.mark.parametrize("fps", [25, 29.97])
@pytest.mark.parametrize("sample_rate", [16000, 22050])
def test_click_lands_where_it_was_written(tmp_path, fps, sample_rate):
  path = tmp_path / "click.mp4"
  media.write_video(path, _gray_frames(int(3 * fps)), fps=fps, audio=_click(3.0, 1.2345))
  audio = media.load_audio(path, sample_rate=sample_rate)
  assert np.argmax(np.abs(audio)) / sample_rate == pytest.approx(1.2345, abs=0.005)
  # AAC decodes to whole 1024-sample frames; the result still spans exactly the video.
  assert len(audio) == pytest.approx(int(3 * fps) / media.probe(path).fps * sample_rate, abs=1)


@pytest.mark.parametrize("audio_start_s, video_start_s", [(0.25, 0.0), (0.0, 0.32)])
def test_stream_offsets_follow_the_video_clock(tmp_path, audio_start_s, video_start_s):
  """Audio that starts late is padded with zeros; audio before the first video frame is dropped."""
  path = tmp_path / "offset.mkv"
  fps = 25
  with av.open(str(path), "w", format="matroska") as container:
    video = container.add_stream("libx264", rate=fps)
    video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
    audio = container.add_stream("aac", rate=SR, layout="mono")
    for i, rgb in enumerate(_gray_frames(50, 48, 64)):
      frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
      frame.pts = i + int(round(video_start_s * fps))
      container.mux(video.encode(frame))
    container.mux(video.encode(None))
    frame = av.AudioFrame.from_ndarray(_click(1.5, 0.5)[None], format="fltp", layout="mono")
    frame.sample_rate, frame.pts = SR, int(round(audio_start_s * SR))
    container.mux(audio.encode(frame))
    container.mux(audio.encode(None))

  frames = list(media.iter_frames(path))
  assert frames[0].timestamp_s == 0.0 and _source_index(frames[0]) == 0
  decoded = media.load_audio(path)
  assert len(decoded) == 2 * SR  # 50 frames at 25 fps
  expected_s = audio_start_s + 0.5 - video_start_s
  assert np.argmax(np.abs(decoded)) / SR == pytest.approx(expected_s, abs=0.005)
  if audio_start_s > video_start_s:
    assert not np.any(decoded[:int((audio_start_s - video_start_s) * SR) - 1])


# --- frame sampling ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip_30fps(tmp_path_factory):
  """2 s at 30 fps with B-frames, frame i flat gray 20 + 3 i."""
  path = tmp_path_factory.mktemp("media") / "clip30.mp4"
  media.write_video(path, _gray_frames(60), fps=30)
  return path


@pytest.mark.parametrize("fps", [10.0, 7.0])
@pytest.mark.parametrize("threads", [1, 0])
def test_sampled_frames_are_the_right_source_frames(clip_30fps, fps, threads):
  # Sample k is source frame ceil(30 k / fps): the first at or after k / fps.
  expected = [int(np.ceil(30 * k / fps - 1e-9)) for k in range(int(np.ceil(2 * fps)))]
  expected = [i for i in expected if i < 60]
  frames = list(media.iter_frames(clip_30fps, fps=fps, decode_threads=threads))
  assert [_source_index(f) for f in frames] == expected
  np.testing.assert_allclose([f.timestamp_s for f in frames], np.array(expected) / 30, atol=1e-6)
  assert [f.index for f in frames] == list(range(len(expected)))


def test_clip_has_non_reference_frames_to_skip(clip_30fps):
  """Keeps the sampling test above meaningful: the clip has frames that `NONREF` skips."""
  with av.open(str(clip_30fps)) as container:
    stream = container.streams.video[0]
    stream.codec_context.skip_frame = "NONREF"
    assert sum(1 for _ in container.decode(stream)) < 60


def test_slow_source_yields_every_frame(tmp_path):
  path = tmp_path / "slow.mp4"
  media.write_video(path, _gray_frames(12), fps=5)
  frames = list(media.iter_frames(path, fps=10))
  assert [_source_index(f) for f in frames] == list(range(12))
  np.testing.assert_allclose([f.timestamp_s for f in frames], np.arange(12) / 5, atol=1e-6)


def test_iter_frames_streams_in_constant_memory(tmp_path):
  """10 s of 720p: holding the frames would take 0.4 GB (YUV) to 0.8 GB (RGB)."""
  path = tmp_path / "long720.mp4"
  peak = {"write": 0.0, "read": 0.0}

  def moving_box(n):
    base = np.full((720, 1280, 3), 90, np.uint8)
    for i in range(n):
      frame = base.copy()
      frame[300:400, i * 4:i * 4 + 100] = (200, 160, 120)
      peak["write"] = max(peak["write"], _rss_mb() - start)
      yield frame

  start = _rss_mb()
  media.write_video(path, moving_box(300), fps=30)
  start = _rss_mb()
  count = 0
  for frame in media.iter_frames(path, fps=30):
    count += 1
    peak["read"] = max(peak["read"], _rss_mb() - start)
  assert count == 300
  assert peak["write"] < 150 and peak["read"] < 150, peak


# --- real CREMA-D clips (FLV: VP6 video 29.97 fps, MP3 audio 44.1 kHz) ------------------------


def test_cremad_flv_probe():
  info = media.probe(shared_path(*CREMAD_FLV))
  assert (info.width, info.height) == (480, 360)
  assert info.fps == pytest.approx(30000 / 1001)
  assert (info.audio_sample_rate, info.audio_channels) == (44100, 1)
  assert info.duration_s == pytest.approx(2.235, abs=1e-3)  # 67 frames, 27 ms to 2229 ms


def test_cremad_flv_frames():
  path = shared_path(*CREMAD_FLV)
  frames = list(media.iter_frames(path))
  duration = media.probe(path).duration_s
  assert abs(len(frames) - duration * 10) <= 1
  times = np.array([f.timestamp_s for f in frames])
  assert times[0] == 0.0 and times[-1] < duration
  assert np.all(np.abs(np.diff(times) - 0.1) < 0.02)
  assert all(f.rgb.shape == (360, 480, 3) and f.rgb.dtype == np.uint8 for f in frames)
  assert frames[0].rgb.std() > 10  # a picture, not a blank frame


def test_cremad_flv_audio_is_on_the_video_clock():
  path = shared_path(*CREMAD_FLV)
  audio = media.load_audio(path)
  assert abs(len(audio) / SR - media.probe(path).duration_s) < 0.05
  assert np.abs(audio).max() <= 1.0 and audio.std() > 0.01
  # The FLV's first video frame is 27 ms into its audio: the same clip's 16 kHz WAV runs
  # 27 ms (432 samples) ahead of the audio aligned to the video.
  wav = media.load_audio(shared_path("cremad", "audio", "1001_DFA_ANG_XX.wav"))
  assert _best_lag(audio, wav, 800) == pytest.approx(432, abs=16)


def test_max_duration_caps_frames_and_audio():
  path = shared_path(*CREMAD_FLV)
  frames = list(media.iter_frames(path, max_duration_s=1.0))
  assert len(frames) == 10 and frames[-1].timestamp_s < 1.0
  assert len(media.load_audio(path, max_duration_s=1.0)) == SR
  wav = shared_path("cremad", "audio", "1002_DFA_ANG_XX.wav")
  assert len(media.load_audio(wav, max_duration_s=1.0)) == SR


@pytest.mark.parametrize("parts", [
    ("cremad", "audio", "1001_DFA_ANG_XX.wav"),  # PCM16 16 kHz
    ("ravdess", "Actor_01", "03-01-01-01-01-02-01.wav"),  # PCM16 48 kHz
    ("ravdess", "Actor_01", "03-01-01-01-01-01-01.wav"),  # one of the release's 22.05 kHz files
])
def test_wav_matches_its_samples(parts):
  path = shared_path(*parts)
  reference, rate = soundfile.read(str(path), dtype="float32")
  assert reference.ndim == 1
  np.testing.assert_array_equal(media.load_audio(path, sample_rate=rate), reference)
  audio = media.load_audio(path)
  assert len(audio) == round(len(reference) * SR / rate)
  if rate != SR:  # swresample agrees with scipy's polyphase resampler
    gcd = np.gcd(SR, rate)
    expected = scipy.signal.resample_poly(reference, SR // gcd, rate // gcd)[:len(audio)]
    assert np.corrcoef(audio, expected)[0, 1] > 0.999


def test_stereo_is_the_mean_of_its_channels():
  path = shared_path("ravdess", "Actor_01", "03-01-02-01-01-02-01.wav")  # 48 kHz stereo
  reference, rate = soundfile.read(str(path), dtype="float32")
  assert reference.shape[1] == 2
  np.testing.assert_allclose(media.load_audio(path, sample_rate=rate), reference.mean(axis=1),
                             atol=1e-7)


def test_flac_16k_matches_its_samples():
  path = shared_path("ravdess", "Actor_03", "03-01-01-01-01-01-03.flac")
  reference, rate = soundfile.read(str(path), dtype="float32")
  assert rate == SR
  np.testing.assert_allclose(media.load_audio(path), reference, atol=1e-7)


def test_mp3_matches_the_wav_of_the_same_clip():
  mp3 = media.load_audio(shared_path("cremad", "audio", "1002_DFA_ANG_XX.mp3"))
  wav = media.load_audio(shared_path("cremad", "audio", "1002_DFA_ANG_XX.wav"))
  assert abs(len(mp3) - len(wav)) <= 2  # the MP3 decoder's delay is trimmed
  n = min(len(mp3), len(wav))
  assert np.corrcoef(mp3[:n], wav[:n])[0, 1] > 0.99


def test_cover_art_is_not_a_video(tmp_path):
  """An MP3 with an embedded picture is audio-only: the picture must not set the clock."""
  path = tmp_path / "cover.mp3"
  with av.open(str(path), "w") as container:
    audio = container.add_stream("mp3", rate=SR, layout="mono")
    picture = container.add_stream("png")
    picture.width, picture.height, picture.pix_fmt = 32, 32, "rgb24"
    picture.disposition = av.stream.Disposition.attached_pic
    frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
    container.mux(picture.encode(frame) + picture.encode(None))
    frame = av.AudioFrame.from_ndarray(_click(2.0, 1.0)[None], format="fltp", layout="mono")
    frame.sample_rate, frame.pts = SR, 0
    container.mux(audio.encode(frame) + audio.encode(None))

  info = media.probe(path)
  assert info.has_audio and not info.has_video
  decoded = media.load_audio(path)
  assert len(decoded) == pytest.approx(2 * SR, abs=1152)
  assert np.argmax(np.abs(decoded)) / SR == pytest.approx(1.0, abs=0.005)


# --- bad input ---------------------------------------------------------------------------------


def _write(path, content: bytes) -> str:
  path.write_bytes(content)
  return str(path)


@pytest.mark.parametrize("make, reason", [
    (lambda d: str(d / "missing.mp4"), "file not found"),
    (lambda d: str(d), "not a regular file"),
    (lambda d: _write(d / "empty.mp4", b""), "empty file (0 bytes)"),
    (lambda d: _write(d / "notes.mp4", b"not a video, just text\n" * 20),
     "not a readable media file"),
    (lambda d: _write(d / "noise.flv", np.random.default_rng(0).bytes(5000)),
     "not a readable media file"),
    (lambda d: _write(d / "subtitles.mkv", b"1\n00:00:00,000 --> 00:00:01,000\nhello\n\n"),
     "no audio or video stream"),
])
def test_unusable_files_raise_media_error(tmp_path, make, reason):
  path = make(tmp_path)
  for read in (media.probe, lambda p: list(media.iter_frames(p)), media.load_audio):
    with pytest.raises(media.MediaError) as e:
      read(path)
    assert e.value.path == path and e.value.reason.startswith(reason)
    assert str(e.value) == f"{path}: {e.value.reason}"
    assert isinstance(e.value, ValueError)


def test_audio_file_has_no_frames():
  path = shared_path("cremad", "audio", "1001_DFA_ANG_XX.wav")
  assert not media.probe(path).has_video
  with pytest.raises(media.MediaError, match="no video stream"):
    next(media.iter_frames(path))


def _truncated(source, fraction: float, directory) -> str:
  data = open(source, "rb").read()
  path = directory / f"cut{fraction}{os.path.splitext(str(source))[1]}"
  return _write(path, data[:int(len(data) * fraction)])


@pytest.mark.parametrize("fraction, n_frames", [(0.05, None), (0.3, 6), (0.7, 15)])
def test_truncated_cremad_flv(tmp_path, fraction, n_frames):
  source = shared_path(*CREMAD_FLV)
  path = _truncated(source, fraction, tmp_path)
  if n_frames is None:  # cut inside the first key frame: nothing to show
    with pytest.raises(media.MediaError, match="no video frame"):
      list(media.iter_frames(path))
    return
  full, cut = list(media.iter_frames(source)), list(media.iter_frames(path))
  assert len(cut) == n_frames
  assert [f.timestamp_s for f in cut] == [f.timestamp_s for f in full[:n_frames]]
  for a, b in zip(cut[:-1], full):  # the last frame may come from a packet cut short
    np.testing.assert_array_equal(a.rgb, b.rgb)
  audio, full_audio = media.load_audio(path), media.load_audio(source)
  assert len(audio) < len(full_audio)
  np.testing.assert_allclose(audio[:SR // 4], full_audio[:SR // 4], atol=1e-6)


@pytest.mark.parametrize("fraction", [0.02, 0.1, 0.5, 0.8])
def test_truncated_written_mp4(tmp_path, fraction):
  source = tmp_path / "clip.mp4"
  media.write_video(source, _gray_frames(40, noise=True), fps=20, audio=_click(2.0, 0.1))
  path = _truncated(source, fraction, tmp_path)
  try:
    cut = list(media.iter_frames(path, fps=20))
  except media.MediaError as e:
    assert fraction <= 0.1, e  # only a cut inside the header or first key frame is fatal
    return
  full = list(media.iter_frames(source, fps=20))
  assert 0 < len(cut) < len(full)
  assert [f.timestamp_s for f in cut] == [f.timestamp_s for f in full[:len(cut)]]
  assert [_source_index(f) for f in cut[:-1]] == list(range(len(cut) - 1))
  audio = media.load_audio(path)
  assert len(audio) == pytest.approx(len(cut) / 20 * SR, abs=SR / 20)
  assert np.argmax(np.abs(audio)) / SR == pytest.approx(0.1, abs=0.005)
