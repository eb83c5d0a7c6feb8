"""Decoding and writing media with PyAV (FFmpeg): probe, sampled RGB frames, mono audio, H.264 MP4.

All times are on the *video clock*: t = 0 is the first video frame. `iter_frames` timestamps and
`load_audio` sample indices share that origin, so frame k and the audio around it line up even when
the container starts the audio earlier or later than the video, or the codec adds priming samples.
Files without video use the audio stream's own start as t = 0.
"""

from __future__ import annotations

import dataclasses
import fractions
import math
import os
from collections.abc import Iterable, Iterator

import av
import numpy as np

VIDEO_EXTS: tuple[str, ...] = (".mp4", ".avi", ".mkv", ".flv", ".webm", ".mov")
AUDIO_EXTS: tuple[str, ...] = (".wav", ".mp3", ".flac", ".m4a", ".ogg", ".aac")

PathLike = str | os.PathLike

# A sampled frame may sit this far before its nominal sample time k / fps: container time bases
# (FLV counts whole milliseconds) round 29.97 fps timestamps by up to half a tick.
_SAMPLE_SLACK_S = 1e-3


class MediaError(ValueError):
  """A media file that cannot be used; names the file and the reason."""

  def __init__(self, path: PathLike, reason: str):
    self.path = str(path)
    self.reason = reason
    super().__init__(f"{self.path}: {reason}")


@dataclasses.dataclass(frozen=True)
class MediaInfo:
  path: str
  duration_s: float
  has_video: bool
  has_audio: bool
  width: int  # 0 when no video
  height: int
  fps: float
  audio_sample_rate: int  # 0 when no audio
  audio_channels: int


@dataclasses.dataclass(frozen=True)
class Frame:
  index: int  # index of the sampled frame: 0, 1, 2, ...
  timestamp_s: float  # on the video clock, first video frame at 0.0
  rgb: np.ndarray  # HxWx3 uint8


def _open(path: PathLike) -> av.container.InputContainer:
  """Opens an input, turning every way a file can be unusable into a MediaError."""
  path = str(path)
  if not os.path.exists(path):
    raise MediaError(path, "file not found")
  if not os.path.isfile(path):
    raise MediaError(path, "not a regular file")
  if os.path.getsize(path) == 0:
    raise MediaError(path, "empty file (0 bytes)")
  try:
    # Tags are never used; a damaged one must not make the file unreadable (PyAV decodes them).
    container = av.open(path, mode="r", metadata_errors="replace")
  except av.error.FFmpegError as e:
    raise MediaError(path, f"not a readable media file ({e.strerror})") from e
  video = _video_stream(container)
  if video is None and not container.streams.audio:
    found = len(container.streams)
    container.close()
    # A truncated MP4 without its index shows no streams at all.
    reason = "no audio or video stream" if found else "no streams (corrupt or truncated)"
    raise MediaError(path, reason)
  for kind, streams in (("video", [video] if video else []), ("audio", container.streams.audio)):
    # PyAV gives no decoder for codec parameters FFmpeg rejects (e.g. a WAV of 0-bit samples), and
    # such a stream crashes the process on use (even stream.type): refuse the file here.
    if streams and streams[0].codec_context is None:
      container.close()
      raise MediaError(path, f"the {kind} stream cannot be decoded (unknown or corrupt codec "
                             "parameters)")
  return container


def _video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream | None:
  """The first real video stream: cover art in MP3 / M4A files is a one-picture 'video' stream."""
  for stream in container.streams.video:
    if not stream.disposition & av.stream.Disposition.attached_pic:
      return stream
  return None


def _seconds(value: int | None, time_base: fractions.Fraction | None) -> float | None:
  if value is None or time_base is None:
    return None
  return float(value * time_base)


def _video_origin_s(stream: av.video.stream.VideoStream) -> float:
  """The video clock's zero: the first frame's presentation time in the container."""
  return _seconds(stream.start_time, stream.time_base) or 0.0


def _frame_rate(stream: av.video.stream.VideoStream) -> float:
  """The nominal rate (30000/1001 for NTSC) when the container has one, else the average, else 0."""
  rate = stream.guessed_rate or stream.average_rate or stream.base_rate
  return float(rate) if rate else 0.0


def _stream_duration_s(container: av.container.InputContainer, stream: av.stream.Stream) -> float:
  duration = _seconds(stream.duration, stream.time_base)
  if duration is None and container.duration is not None:
    # FLV and some MKVs only know the whole file's duration.
    duration = container.duration / av.time_base
  return duration or 0.0


def probe(path: PathLike) -> MediaInfo:
  """Stream facts from the container header (no decoding). Raises MediaError on unusable files.

  `duration_s` is the video stream's duration (the audio's without video; the container's when the
  stream has none). It comes from the header, so a truncated file may decode to less.
  """
  with _open(path) as container:
    video = _video_stream(container)
    audio = container.streams.audio[0] if container.streams.audio else None
    info = dict(path=str(path), has_video=video is not None, has_audio=audio is not None,
                width=0, height=0, fps=0.0, audio_sample_rate=0, audio_channels=0)
    if video is not None:
      info.update(width=video.codec_context.width, height=video.codec_context.height,
                  fps=_frame_rate(video))
      if not info["width"] or not info["height"]:
        raise MediaError(path, "video stream has no frame size (corrupt header)")
    if audio is not None:
      info.update(audio_sample_rate=audio.codec_context.sample_rate,
                  audio_channels=audio.codec_context.channels)
    duration = _stream_duration_s(container, video if video is not None else audio)
    return MediaInfo(duration_s=duration, **info)


def iter_frames(
    path: PathLike,
    fps: float = 10.0,
    max_duration_s: float | None = None,
    decode_threads: int = 1,
) -> Iterator[Frame]:
  """Streams RGB frames sampled at `fps` on the video clock.

  Sample k is the first decoded frame whose timestamp is >= k / fps; it carries its real timestamp,
  not k / fps. Sources slower than `fps` yield every frame. Only sampled frames are converted to
  RGB, and only one decoded frame is alive at a time, so memory does not grow with the clip.
  Stops before `max_duration_s` when given.

  `decode_threads=1` decodes on the calling thread: corpus builds run one clip per core, and on two
  cores FFmpeg's frame threads took ~20% more CPU for no wall-clock gain. 0 lets FFmpeg choose
  (frame + slice threads, `thread_type="AUTO"`), for one long video on a machine with idle cores;
  frame threads can then lose the last few frames of a truncated file.
  """
  if fps <= 0:
    raise MediaError(path, f"sampling fps must be positive, got {fps}")
  with _open(path) as container:
    stream = _video_stream(container)
    if stream is None:
      raise MediaError(path, "no video stream")
    stream.thread_count = decode_threads
    if decode_threads != 1:
      stream.thread_type = "AUTO"
    origin = _video_origin_s(stream)
    # The slower of the nominal and average rates: a longer step skips fewer frames when unsure.
    rates = [float(r) for r in (stream.guessed_rate, stream.average_rate) if r]
    frame_step_s = 1.0 / min(rates) if rates else 1.0 / fps
    next_sample, index, last_t = 0, 0, None
    try:
      for frame in _decode_sampled(stream, container, origin, fps, frame_step_s):
        if frame.time is not None:
          t = frame.time - origin
        else:
          # No timestamp from the demuxer (rare raw streams): step on from the previous frame.
          t = 0.0 if last_t is None else last_t + frame_step_s
        last_t = t
        if max_duration_s is not None and t >= max_duration_s:
          break
        if t + _SAMPLE_SLACK_S < next_sample / fps:
          continue
        yield Frame(index=index, timestamp_s=t, rgb=frame.to_ndarray(format="rgb24"))
        index += 1
        # The next sample time strictly after this frame, so a slow source never repeats a frame.
        next_sample = math.floor((t + _SAMPLE_SLACK_S) * fps) + 1
    except av.error.FFmpegError as e:
      reason = f"video decoding failed after {last_t or 0.0:.3f} s ({e.strerror})"
      raise MediaError(path, reason) from e
    if last_t is None:
      raise MediaError(path, "no video frame could be decoded")


def _decode_packet(packet: av.Packet, damaged: bool) -> list[av.frame.Frame]:
  """Decodes one packet; once the stream is `damaged` decoding errors drop packets, not the file.

  The demuxer flags a packet cut short by a truncated file as corrupt. With frame threads the
  decoder reports its error a few packets later (often at the final flush), hence the flag that
  the caller keeps for the whole stream rather than a check of this packet alone.
  """
  try:
    return packet.decode()
  except av.error.FFmpegError:
    if damaged:
      return []
    raise


def _decode_sampled(
    stream: av.video.stream.VideoStream,
    container: av.container.InputContainer,
    origin: float,
    fps: float,
    frame_step_s: float,
) -> Iterator[av.VideoFrame]:
  """Decodes the video, skipping non-reference frames that no sample can pick.

  A frame at time t can be sampled only when a sample time k / fps falls in (t - frame step, t].
  Packets of other frames are decoded with `skip_frame = "NONREF"`: the decoder still decodes them
  when other frames refer to them (so every later frame stays intact) and drops them otherwise.
  Timestamps come from the packets, so sampled frames and their times are unchanged. Variable-rate
  sources may sample a neighbouring frame instead, always with its true timestamp.
  """
  codec = stream.codec_context
  damaged = False
  for packet in container.demux(stream):
    skip = False
    if packet.pts is not None and frame_step_s < 1.0 / fps:
      t = float(packet.pts * packet.time_base) - origin + _SAMPLE_SLACK_S
      skip = math.floor(t * fps) == math.floor((t - frame_step_s) * fps)
    # Read by the decoder per packet (and copied to each frame thread when the packet is sent).
    codec.skip_frame = "NONREF" if skip else "DEFAULT"
    damaged = damaged or packet.is_corrupt
    yield from _decode_packet(packet, damaged)


class _MonoFloat:
  """Decoded audio frames -> float32 mono at the source rate: the mean of the channels.

  swresample only converts the sample format here (same rate and layout: no delay, no buffering);
  the channels are averaged in numpy because its own downmix scales stereo by 1/sqrt(2) per
  channel, which makes a stereo copy of a mono recording 3 dB louder (and clips it).
  """

  def __init__(self):
    self._resampler = None
    self._key = None

  def __call__(self, frame: av.AudioFrame) -> np.ndarray:
    key = (frame.format.name, frame.layout.name, frame.sample_rate)
    if key != self._key:  # some streams switch layout mid-way; a resampler is fixed to its input
      self._resampler = av.AudioResampler(
          format="fltp", layout=frame.layout, rate=frame.sample_rate)
      self._key = key
    out = self._resampler.resample(frame)
    if not out:
      return np.zeros(0, np.float32)
    return np.concatenate([o.to_ndarray() for o in out], axis=1).mean(axis=0, dtype=np.float32)


def _place(chunks: list[tuple[int, np.ndarray]], length: int) -> np.ndarray:
  """Writes (start sample, samples) chunks into a zero buffer of `length`, clipping at both ends."""
  out = np.zeros(length, np.float32)
  for start, samples in chunks:
    lo, hi = max(start, 0), min(start + len(samples), length)
    if hi > lo:
      out[lo:hi] = samples[lo - start:hi - start]
  return out


def _resample(audio: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
  """Resamples mono float32 with FFmpeg's swresample; output length round(n * target / source)."""
  length = int(round(len(audio) * target_rate / source_rate))
  if source_rate == target_rate or not len(audio):
    return audio[:length] if len(audio) >= length else np.pad(audio, (0, length - len(audio)))
  frame = av.AudioFrame.from_ndarray(audio[None, :], format="flt", layout="mono")
  frame.sample_rate, frame.pts = source_rate, 0
  resampler = av.AudioResampler(format="flt", layout="mono", rate=target_rate)
  out = resampler.resample(frame) + resampler.resample(None)
  # A few samples (a file cut just after its header) may all stay inside the filter: nothing out.
  resampled = np.concatenate([np.zeros(0, np.float32)] + [o.to_ndarray().reshape(-1) for o in out])
  # swresample compensates its filter delay, so only the last sample or two can differ in count.
  if len(resampled) >= length:
    return resampled[:length]
  return np.pad(resampled, (0, length - len(resampled)))


def load_audio(
    path: PathLike, sample_rate: int = 16000, max_duration_s: float | None = None
) -> np.ndarray:
  """float32 mono audio in [-1, 1] at `sample_rate`, sample 0 at video time 0.

  Decoded frames are placed by their timestamps: audio before the first video frame and codec
  priming are dropped, a late audio start is padded with leading zeros, and each frame is cut to
  its packet duration (the last AAC frame decodes to 1024 samples of which only a few are real).
  With a video stream the result spans exactly the video (zeros where the audio stops short);
  audio-only files keep everything decoded. Raises MediaError("no audio stream") without audio.
  """
  with _open(path) as container:
    if not container.streams.audio:
      raise MediaError(path, "no audio stream")
    audio = container.streams.audio[0]
    video = _video_stream(container)
    if video is not None:
      origin = _video_origin_s(video)
      video_step_s = 1.0 / (_frame_rate(video) or 25.0)
    else:
      origin = _seconds(audio.start_time, audio.time_base) or 0.0
    source_rate = audio.codec_context.sample_rate
    if not source_rate:
      raise MediaError(path, "audio stream has no sample rate (corrupt header)")
    stop_s = max_duration_s if max_duration_s is not None else math.inf

    to_mono = _MonoFloat()
    chunks: list[tuple[int, np.ndarray]] = []
    expected = None  # where the next frame starts if the stream is contiguous
    video_end_s = 0.0
    damaged = False
    streams = [audio] if video is None else [audio, video]
    # Time bases as floats once: Fraction arithmetic per packet costs more than the decoding.
    video_tb = float(video.time_base) if video is not None and video.time_base else 0.0
    try:
      for packet in container.demux(streams):
        if packet.stream is video:
          # Video packets are only measured, never decoded: the video ends after its last frame.
          if packet.pts is not None and video_tb:
            step = packet.duration * video_tb if packet.duration else video_step_s
            video_end_s = max(video_end_s, packet.pts * video_tb + step - origin)
          continue
        if expected is not None and expected >= stop_s * source_rate:
          if video is None or video_end_s >= stop_s:
            break
          continue  # past the cap: keep measuring the video, decode no more audio
        damaged = damaged or packet.is_corrupt
        for frame in _decode_packet(packet, damaged):
          if frame.sample_rate != source_rate:
            raise MediaError(path, f"audio sample rate changes mid-stream ({source_rate} -> "
                                   f"{frame.sample_rate} Hz)")
          samples = to_mono(frame)
          tick = float(frame.time_base) * source_rate if frame.time_base else 0.0  # samples
          if frame.duration and tick:
            # Durations are exact only to one time-base tick (FLV: 1 ms), so cut only beyond that.
            valid = int(round(frame.duration * tick))
            if len(samples) - valid > tick:
              samples = samples[:valid]
          start = expected
          if frame.time is not None:
            stamped = int(round((frame.time - origin) * source_rate))
            # Follow the timestamps only across real gaps or overlaps, not their rounding.
            tolerance = max(2, int(math.ceil(tick)))
            if start is None or abs(stamped - start) > tolerance:
              start = stamped
          if start is None:
            start = 0
          chunks.append((start, samples))
          expected = start + len(samples)
    except av.error.FFmpegError as e:
      raise MediaError(path, f"audio decoding failed ({e.strerror})") from e

  if not chunks:
    # A declared but undecodable audio track must not become a silent, labelled utterance.
    raise MediaError(path, "audio stream has no decodable audio")
  if video is not None:
    length = int(round(min(video_end_s, stop_s) * source_rate))
  else:
    length = max((start + len(s) for start, s in chunks), default=0)
    if stop_s != math.inf:
      length = min(length, int(round(stop_s * source_rate)))
  mono = _place(chunks, length)
  return np.clip(_resample(mono, source_rate, sample_rate), -1.0, 1.0)


def _fps_fraction(fps: float) -> fractions.Fraction:
  # Container time bases need a rational rate; NTSC floats (30000 / 1001) come back exactly.
  return fractions.Fraction(fps).limit_denominator(1001)


def _check_frame(path: str, frame: np.ndarray, shape: tuple[int, ...] | None) -> np.ndarray:
  frame = np.asarray(frame)
  if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
    raise MediaError(path, f"frames must be HxWx3 uint8, got {frame.shape} {frame.dtype}")
  if shape is not None and frame.shape != shape:
    raise MediaError(path, f"frame size changed from {shape} to {frame.shape}")
  height, width = frame.shape[:2]
  if height % 2 or width % 2:
    raise MediaError(path, f"H.264 yuv420p needs even width and height, got {width}x{height}")
  return np.ascontiguousarray(frame)


def write_video(
    path: PathLike,
    frames: Iterable[np.ndarray],
    fps: float,
    audio: np.ndarray | None = None,
    sample_rate: int = 16000,
    crf: int = 23,
) -> None:
  """Writes RGB frames (and optional mono float audio in [-1, 1]) as H.264 + AAC in an MP4.

  Frames are encoded as they arrive, so a generator of frames is never held in memory. The output
  is deterministic: the same inputs give the same bytes on any machine with the same x264. The
  file appears at `path` only once it is complete (written to a sibling temporary file first).
  """
  path = str(path)
  if fps <= 0:
    raise MediaError(path, f"fps must be positive, got {fps}")
  if audio is not None:
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
      raise MediaError(path, f"audio must be mono (1-D), got shape {audio.shape}")
  frames = iter(frames)
  first = next(frames, None)
  if first is None:
    raise MediaError(path, "no frames to write")
  first = _check_frame(path, first, None)
  height, width = first.shape[:2]

  tmp_path = f"{path}.partial"
  try:
    # faststart puts the index first: the file plays while loading, and a truncated copy still
    # decodes up to the cut instead of losing the index that MP4 otherwise writes last.
    with av.open(tmp_path, mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
      # One x264 thread: its frame threads change the bitstream with the thread count (so with the
      # machine's core count) and made same-seed clips differ now and then under load. Corpus
      # builds write one clip per core anyway, and one thread was no slower on these small frames.
      video = container.add_stream(
          "libx264", rate=_fps_fraction(fps),
          options={"crf": str(crf), "preset": "veryfast", "threads": "1"})
      video.width, video.height, video.pix_fmt = width, height, "yuv420p"
      audio_stream = None
      if audio is not None:
        audio_stream = container.add_stream("aac", rate=sample_rate, layout="mono")

      for index, rgb in enumerate(_chain(first, frames)):
        rgb = _check_frame(path, rgb, first.shape)
        # Convert here, not inside encode(): PyAV 18's implicit conversion made x264's output
        # depend on memory reuse (different bytes run to run when frames come from a generator).
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        frame.pts = index
        container.mux(video.encode(frame))
      container.mux(video.encode(None))

      if audio_stream is not None:
        frame = av.AudioFrame.from_ndarray(
            np.clip(audio, -1.0, 1.0)[None, :], format="fltp", layout="mono")
        frame.sample_rate, frame.pts = sample_rate, 0
        container.mux(audio_stream.encode(frame))
        container.mux(audio_stream.encode(None))
    os.replace(tmp_path, path)
  finally:
    if os.path.exists(tmp_path):
      os.remove(tmp_path)


def _chain(first: np.ndarray, rest: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
  yield first
  yield from rest
