"""Corpus build: every clip -> speaker face track + log-mel -> TFRecord shards, a manifest and tracks.

Layout of an output directory OUT:
  OUT/manifest.jsonl          one JSON line per input clip (status ok | skipped, reason, stats)
  OUT/tracks/<clip_id>.json   every face track's box per sampled frame and which one is the speaker
  OUT/clips/<clip_id>.pb      the finished example (a serialised tf.train.Example) of each ok clip:
                              what makes a rerun resumable
  OUT/tfds/<name>/1.0.0/      the shards per split + tfds metadata: tfds.load(name, data_dir=OUT/tfds)
  OUT/prep_config.json        the options the directory was built with (a rerun must match them),
                              with store "embeddings" also the teacher (and checkpoint) that made
                              the frame outputs
  OUT/summary.json            counts, reasons and timing of the last run
  OUT/build.lock              held (flock) by the running build, with its pid

A bad clip never stops the build: its error becomes the manifest line's `reason`. Rerunning the
same command resumes: clips that already have a manifest line are not processed again.

A build may be killed at any moment (kill -9 of it and its workers): a record is written (fsync,
rename) before its manifest line, each line is appended with one write, a torn last line is ignored
on the rerun (with a warning) and that clip redone, and the manifest and shards are rewritten
whole from the records at the end, so the rerun's output holds each clip exactly once.

Privacy mode (PrepConfig.store "embeddings"): each record keeps the teacher's per-frame logits and
embeddings of the speaker's face instead of the face crops, which never leave the worker's memory.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import fcntl
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import pathlib
import re
import shutil
import sys
import time
from typing import Any, Callable, Iterable, Optional, Sequence

import cv2
import numpy as np
import tqdm

from data_prep import faces
from data_prep import features
from data_prep import media
from data_prep import speaker
from data_prep.corpora.base import ClipSpec
from data_prep.corpora.splits import SPLITS

DATASET_VERSION = "1.0.0"
_TRUNCATION_SLACK_S = 0.5  # decoded video may fall this short of the declared length
LOCK_FILE = "build.lock"
_CLIP_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]*(/[A-Za-z0-9][A-Za-z0-9._\-]*)*$")


class BuildError(ValueError):
  """A build that cannot start: misuse rather than a bad clip."""


class SkipClip(Exception):
  """A clip that cannot give a record; the message is the manifest's reason."""


@dataclasses.dataclass(frozen=True)
class PrepConfig:
  fps: float = 10.0  # face sampling rate (the original study's 10 fps)
  max_duration_s: float = 60.0  # longer clips are capped to their first max_duration_s seconds
  speaker_method: str = "av"  # av | cluster
  require_face: bool = True  # a video clip with no face at all is skipped
  require_audio: bool = True  # a video clip with no audio stream is skipped
  require_video: bool = False  # audio-visual corpora (MELD, the demo): a clip without video is skipped
  face: faces.FaceConfig = faces.FaceConfig()
  logmel: features.LogMelConfig = features.LogMelConfig()
  # pixels: the face crops; embeddings (privacy mode): the teacher's frame outputs, no pixels.
  store: str = "pixels"
  teacher: str = ""  # store "embeddings": "fer2013" or a teacher run's workdir
  teacher_step: int = -1  # that run's checkpoint (`resolve_teacher` fills it in)

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def validate(self) -> None:
    if self.fps <= 0:
      raise ValueError(f"PrepConfig.fps must be > 0, got {self.fps}")
    if self.max_duration_s <= 0:
      raise ValueError(f"PrepConfig.max_duration_s must be > 0, got {self.max_duration_s}")
    if self.speaker_method not in speaker.METHODS:
      raise ValueError(f"PrepConfig.speaker_method must be one of {speaker.METHODS}, "
                       f"got {self.speaker_method!r}")
    self.face.validate()
    self.logmel.validate()
    from kd_mh import records  # pylint: disable=import-outside-toplevel  (TensorFlow: parent only)
    if self.store not in records.STORES:
      raise ValueError(f"PrepConfig.store must be one of {records.STORES}, got {self.store!r}")
    if self.store == "pixels" and (self.teacher or self.teacher_step != -1):
      raise ValueError(f"PrepConfig.teacher={self.teacher!r} applies to store 'embeddings' only")
    if self.store == "embeddings" and not self.teacher:
      raise ValueError("PrepConfig.teacher must name the teacher of store 'embeddings' "
                       "('fer2013' or a teacher run's workdir)")


def resolve_teacher(config: PrepConfig) -> PrepConfig:
  """`config` with its teacher pinned (an absolute workdir and checkpoint step), after checking
  that the teacher takes the crops the build makes. Loads the teacher (cached for the build)."""
  if config.store != "embeddings":
    return config
  from kd_mh import inference  # pylint: disable=import-outside-toplevel
  from kd_mh import train  # pylint: disable=import-outside-toplevel
  from kd_mh.models import pretrained  # pylint: disable=import-outside-toplevel
  source, step = config.teacher, config.teacher_step
  try:
    if source != inference.FER2013 and step < 0:
      source, step = train.teacher_source(source)
    _, _, face_shape = inference.load_face_teacher(source, step)
  except (ValueError, OSError, pretrained.PretrainedUnavailableError) as e:
    raise BuildError(f"teacher {config.teacher!r}: {e}") from None
  crops = (config.face.crop_size, config.face.crop_size, config.face.crop_channels)
  if tuple(face_shape) != crops:
    raise BuildError(f"teacher {source!r} takes faces of {tuple(face_shape)}, the build crops "
                     f"{crops}: set the face size and channels to the teacher's")
  return dataclasses.replace(config, teacher=source, teacher_step=step)


def schema(config: PrepConfig):
  """The records' schema (`kd_mh.records.features`) and tfds metadata (None for pixels)."""
  from kd_mh import records  # pylint: disable=import-outside-toplevel
  size, channels = config.face.crop_size, config.face.crop_channels
  if config.store == "pixels":
    return records.features(size, channels, config.logmel.n_mels), None
  from kd_mh import inference  # pylint: disable=import-outside-toplevel
  teacher, variables, face_shape = inference.load_face_teacher(config.teacher, config.teacher_step)
  num_classes, dim = inference.frame_output_dims(teacher, variables, face_shape)
  feats = records.features(size, channels, config.logmel.n_mels, store="embeddings",
                           num_classes=num_classes, embedding_dim=dim)
  return feats, records.embeddings_metadata(config.teacher, config.teacher_step, face_shape)


@dataclasses.dataclass
class ClipResult:
  manifest: dict[str, Any]
  example: Optional[dict[str, Any]] = None  # None for a skipped clip
  tracks: Optional[dict[str, Any]] = None


def process_clip(spec: ClipSpec, config: PrepConfig) -> ClipResult:
  """Runs the whole per-clip pipeline; never raises for a bad clip (it is reported as skipped)."""
  start = time.process_time()
  line = _manifest_base(spec)
  try:
    if spec.error or not spec.path:
      raise SkipClip(spec.error or "no media file")
    if spec.kind == "image":
      example, tracks, stats = _process_image(spec, config)
    else:
      example, tracks, stats = _process_media(spec, config)
  except (SkipClip, media.MediaError) as e:
    line.update(status="skipped", reason=str(e))
    return ClipResult(manifest=line)
  except Exception as e:  # pylint: disable=broad-except
    # A decoder or detector failure on one file must not stop the corpus build.
    logging.exception("clip %s (%s) failed", spec.clip_id, spec.path)
    line.update(status="skipped", reason=f"{spec.path}: unexpected {type(e).__name__}: {e}")
    return ClipResult(manifest=line)
  line.update(status="ok", reason="", **stats)
  line["cpu_s"] = round(time.process_time() - start, 3)
  return ClipResult(manifest=line, example=example, tracks=tracks)


# What a clip's record and manifest line take from its ClipSpec.
_SPEC_FIELDS = ("clip_id", "corpus", "speaker_id", "split", "label", "label_name", "label_source",
                "face_label", "voice_label")


def _spec_fields(spec: ClipSpec) -> dict[str, Any]:
  return {name: getattr(spec, name) for name in _SPEC_FIELDS}


def _manifest_base(spec: ClipSpec) -> dict[str, Any]:
  return {**_spec_fields(spec), "path": spec.path, "status": "", "reason": "", "n_frames": 0,
          "speaker_coverage": 0.0, "duration_s": 0.0, **dict(spec.extra)}


def _is_current(line: dict[str, Any], spec: ClipSpec) -> bool:
  """Whether a manifest line was made from this very spec (same file, labels, split, ...).

  A changed corpus (a new speaker shifts the speaker-independent split, a relabelled CSV, other
  reader options) must not reuse a record made from the old spec.
  """
  base = json.loads(json.dumps(_manifest_base(spec), default=_json_default))
  return all(line.get(k) == v for k, v in base.items()
             if k not in ("status", "reason", "n_frames", "speaker_coverage", "duration_s"))


def _example(spec: ClipSpec, config: PrepConfig, **fields: Any) -> dict[str, Any]:
  size, channels = config.face.crop_size, config.face.crop_channels
  example = {
      **_spec_fields(spec), "fps": config.fps, "duration_s": 0.0,
      "faces": np.zeros((0, size, size, channels), np.uint8),
      "face_timestamps": np.zeros((0,), np.float32), "face_mask": np.zeros((0,), bool),
      "logmel": np.zeros((0, config.logmel.n_mels), np.float32),
      "logmel_mask": np.zeros((0,), bool), "speaker_method": "", "speaker_coverage": 0.0,
      "speaker_score": 0.0, "speaker_tracks": np.zeros((0,), np.int64), "n_tracks": 0,
  }
  example.update(fields)
  if config.store == "embeddings":
    # Privacy mode: the crops are replaced by the teacher's frame outputs before the example
    # leaves this function, so no face pixel reaches a record, a manifest or the parent process.
    from kd_mh import inference  # pylint: disable=import-outside-toplevel
    teacher, variables, _ = inference.load_face_teacher(config.teacher, config.teacher_step)
    example["face_logits"], example["face_embedding"] = inference.frame_outputs(
        teacher, variables, example.pop("faces"), example["face_mask"])
  return example


def _process_media(spec: ClipSpec, config: PrepConfig):
  info = media.probe(spec.path)
  if info.has_video and not info.has_audio and config.require_audio:
    raise SkipClip(f"{spec.path}: no audio stream")
  if not info.has_video and config.require_video:
    raise SkipClip(f"{spec.path}: no video stream (this corpus is audio-visual)")
  sample_rate = config.logmel.sample_rate
  stats: dict[str, Any] = {"has_video": info.has_video, "has_audio": info.has_audio}
  fields: dict[str, Any] = {}
  audio = None
  if info.has_audio:
    audio = media.load_audio(spec.path, sample_rate, config.max_duration_s)

  tracks_json = None
  if info.has_video:
    tracking = faces.track_faces(media.iter_frames(spec.path, config.fps, config.max_duration_s),
                                 config.face)
    frame_s = max(1.0 / config.fps, 1.0 / info.fps if info.fps else 0.0)
    decoded_s = tracking.timestamps[-1] + frame_s if tracking.timestamps else 0.0
    # Headers without a duration (streamed WebM, MediaRecorder files) leave only the decoded one.
    duration = min(info.duration_s or decoded_s, config.max_duration_s)
    if duration - decoded_s > max(_TRUNCATION_SLACK_S, 0.1 * duration):
      # The header promises more than the file holds: a cut-off download or copy.
      raise SkipClip(f"{spec.path}: truncated or corrupt: video decodes to {decoded_s:.2f} s "
                     f"of the declared {duration:.2f} s")
    if not tracking.tracks and config.require_face:
      raise SkipClip(f"{spec.path}: no face found in {tracking.n_frames} sampled frames")
    if audio is not None:
      # The video clock defines the clip: the log-mel spans exactly the sampled span.
      audio = audio[:int(round(duration * sample_rate))]
    choice = speaker.choose_speaker(tracking, audio, sample_rate, config.speaker_method)
    crops, mask = _speaker_crops(tracking, choice, config.face)
    coverage = speaker.speaker_coverage(choice)
    fields.update(
        faces=crops, face_mask=mask,
        face_timestamps=np.asarray(tracking.timestamps, np.float32),
        speaker_method=choice.method, speaker_coverage=coverage,
        speaker_score=float(choice.scores.get("speaker_score", 0.0)),
        speaker_tracks=np.asarray(choice.speaker_track_ids, np.int64),
        n_tracks=len(tracking.tracks))
    stats.update(n_frames=tracking.n_frames, speaker_coverage=round(coverage, 4),
                 speaker_method=choice.method, speaker_tracks=list(choice.speaker_track_ids),
                 n_tracks=len(tracking.tracks), speaker_scores=choice.scores,
                 detector_calls=tracking.detector_calls, encoder_calls=tracking.encoder_calls)
    tracks_json = tracks_record(spec.clip_id, tracking, choice)
  else:
    duration = len(audio) / sample_rate  # what decodes, not what the header says
  if info.duration_s > config.max_duration_s:
    stats["note"] = (f"capped at {config.max_duration_s:g} s of {info.duration_s:.1f} s "
                     "(PrepConfig.max_duration_s)")
  if audio is not None:
    mel = features.log_mel(audio, config.logmel)
    fields.update(logmel=mel, logmel_mask=np.ones(len(mel), bool))
    stats["n_logmel_frames"] = len(mel)
  fields["duration_s"] = duration
  stats["duration_s"] = round(duration, 3)
  return _example(spec, config, **fields), tracks_json, stats


def _process_image(spec: ClipSpec, config: PrepConfig):
  rgb = _read_image(spec.path)
  tracking = faces.track_faces([media.Frame(0, 0.0, rgb)], config.face)
  if not tracking.tracks:
    raise SkipClip(f"{spec.path}: no face found in the image")
  # A face photograph shows one subject: the largest face.
  largest = max(tracking.tracks, key=faces.Track.mean_area)
  crops = largest.crops[0][None]
  example = _example(spec, config, faces=crops, face_mask=np.ones(1, bool),
                     face_timestamps=np.zeros(1, np.float32), speaker_method="largest",
                     speaker_coverage=1.0, speaker_tracks=np.asarray([largest.track_id]),
                     n_tracks=len(tracking.tracks))
  return example, None, {"n_frames": 1, "speaker_coverage": 1.0, "n_tracks": len(tracking.tracks)}


def _read_image(path: str) -> np.ndarray:
  """A photograph as HxWx3 uint8 RGB."""
  import PIL.Image  # pylint: disable=import-outside-toplevel
  import PIL.ImageOps  # pylint: disable=import-outside-toplevel
  try:
    with PIL.Image.open(path) as image:
      # Phone photos are often stored sideways with an EXIF rotation; HOG is not rotation-invariant.
      return np.asarray(PIL.ImageOps.exif_transpose(image).convert("RGB"))
  except (OSError, ValueError) as e:
    raise SkipClip(f"{path}: not a readable image ({e})") from None


def _speaker_crops(tracking, choice, face_config) -> tuple[np.ndarray, np.ndarray]:
  size, channels = face_config.crop_size, face_config.crop_channels
  crops = np.zeros((tracking.n_frames, size, size, channels), np.uint8)
  by_id = {t.track_id: t for t in tracking.tracks}
  position = {t.track_id: {f: i for i, f in enumerate(t.frame_indices)} for t in tracking.tracks}
  for frame, track_id in enumerate(choice.per_frame):
    if track_id >= 0:
      crops[frame] = by_id[track_id].crops[position[track_id][frame]]
  return crops, np.asarray(choice.per_frame) >= 0


def tracks_record(clip_id: str, tracking, choice) -> dict[str, Any]:
  """Per sampled frame, every track's box and the speaker track (OUT/tracks/<clip_id>.json)."""
  boxes: list[dict[str, list[int]]] = [{} for _ in range(tracking.n_frames)]
  for track in tracking.tracks:
    for frame, box in zip(track.frame_indices, track.boxes):
      boxes[frame][str(track.track_id)] = [int(v) for v in box]
  frames = [{"index": i, "timestamp_s": round(float(t), 4), "boxes": boxes[i],
             "speaker_track": int(choice.per_frame[i])}
            for i, t in enumerate(tracking.timestamps)]
  return {"clip_id": clip_id, "box_format": "top,right,bottom,left (source-frame pixels)",
          "frame_size": list(tracking.frame_size), "method": choice.method,
          "speaker_track_ids": list(choice.speaker_track_ids), "scores": choice.scores,
          "frames": frames}


# ----------------------------------------------------------------------------------------------
# The driver.


def dataset_name(corpus: str) -> str:
  return "kd_mh_" + re.sub(r"[^a-z0-9_]", "_", corpus.lower())


def _inside(out: pathlib.Path, clip_id: str, folder: str, suffix: str) -> pathlib.Path:
  """OUT/folder/<clip_id>suffix, refusing ids that could leave OUT."""
  if not _CLIP_ID.match(clip_id):  # each part starts with a letter or digit: no "..", no "/x"
    raise BuildError(f"clip id {clip_id!r} is not a safe relative name")
  return out / folder / (clip_id + suffix)


# The longest file name written per clip: OUT/tracks/<clip id>.json as _atomic_write's temporary.
_LONGEST_SUFFIX = ".json.tmp"


def _name_fits(clip_id: str, name_max: int) -> bool:
  """Whether every file name made from the clip id fits the output file system's limit."""
  *folders, name = clip_id.encode().split(b"/")
  return len(name) + len(_LONGEST_SUFFIX) <= name_max and all(len(f) <= name_max for f in folders)


def _atomic_write(path: pathlib.Path, data: bytes) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def read_manifest(path: pathlib.Path) -> dict[str, dict[str, Any]]:
  """clip_id -> its latest manifest line; a torn line (a killed run) is ignored with a warning."""
  done: dict[str, dict[str, Any]] = {}
  if path.exists():
    # The build writes ASCII (json.dumps' default); replace keeps a damaged byte local to its line.
    text = path.read_text(encoding="utf-8", errors="replace")
    for number, raw in enumerate(text.splitlines(), 1):
      try:
        line = json.loads(raw)
      except json.JSONDecodeError:
        line = None
      if isinstance(line, dict) and "clip_id" in line:
        done[line["clip_id"]] = line
      elif raw.strip():
        logging.warning("%s: line %d is torn or not a manifest line (a killed build?); ignored, "
                        "its clip is processed again", path, number)
  return done


def _append_line(manifest, line: dict[str, Any]) -> None:
  """Appends one line to an unbuffered file with one write(): a kill leaves all of it or none."""
  data = (json.dumps(line, default=_json_default) + "\n").encode()
  while data:  # a short write happens only on a full disk; a rerun then sees a torn line
    data = data[manifest.write(data):]


@contextlib.contextmanager
def _exclusive(out: pathlib.Path):
  """Holds OUT/build.lock for the build: a second build into OUT fails fast, naming the holder.

  flock, not a pid file: the kernel drops the lock when its process dies, so a killed build never
  blocks the rerun. Worker processes are spawned without the descriptor and never hold it.
  """
  path = out / LOCK_FILE
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
      raise BuildError(f"{path} is held by another build (pid {holder}) writing to {out}; wait "
                       "for it to finish or use another --out") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    # What a killed build was writing when it died (_atomic_write's temporaries).
    for pattern in ("*.tmp", "clips/**/*.tmp", "tracks/**/*.tmp"):
      for stale in out.glob(pattern):
        stale.unlink()
    yield
  finally:
    os.close(fd)  # releases the lock


def init_worker() -> None:
  """Readies a worker process (a pool's or a Beam worker's) to run one clip per core."""
  # One clip per core: keep BLAS / OpenMP inside a worker single-threaded.
  import threadpoolctl  # pylint: disable=import-outside-toplevel
  threadpoolctl.threadpool_limits(1)
  cv2.setNumThreads(1)  # OpenCV's own pool is not reached by threadpoolctl
  # A worker that runs the face teacher (--store=embeddings) imports JAX and TensorFlow later:
  # one thread each too (these are read when they start).
  if "jax" not in sys.modules:
    os.environ["XLA_FLAGS"] = (f"{os.environ.get('XLA_FLAGS', '')} "
                               "--xla_cpu_multi_thread_eigen=false").strip()
  os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
  os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
  logging.getLogger().setLevel(logging.WARNING)


_READY = "ready"


def _worker_main(conn: multiprocessing.connection.Connection) -> None:
  """A worker process: clips in, results out, one at a time, until the build closes the pipe."""
  init_worker()
  conn.send(_READY)
  while True:
    try:
      task = conn.recv()
    except EOFError:  # the build finished or died: nothing more to do
      return
    conn.send(process_clip(*task))


def _skipped(spec: ClipSpec, why: str) -> ClipResult:
  line = _manifest_base(spec)
  line.update(status="skipped", reason=f"{spec.path or spec.clip_id}: {why}")
  return ClipResult(manifest=line)


class _Worker:
  """A spawned process running one clip at a time, so the clip that hangs or crashes it is known
  and can be stopped without touching the clips on the other workers."""

  def __init__(self, context: multiprocessing.context.BaseContext):
    self.conn, child = context.Pipe()
    # spawn: never fork a parent that already holds TensorFlow / JAX threads.
    self.process = context.Process(target=_worker_main, args=(child,), daemon=True)
    self.process.start()
    child.close()
    self.ready = False
    self.spec: Optional[ClipSpec] = None  # the clip it runs
    self.started = 0.0

  def run(self, spec: ClipSpec, config: PrepConfig) -> None:
    self.conn.send((spec, config))
    self.spec, self.started = spec, time.monotonic()

  def receive(self) -> Optional[ClipResult]:
    """Its result, once one is there; None while it starts or works. Raises EOFError if it died."""
    if not self.conn.poll():
      if not self.process.is_alive():
        raise EOFError
      return None
    message = self.conn.recv()
    if message == _READY:
      self.ready = True
      return None
    self.spec = None
    return message

  def stop(self) -> None:
    if self.spec is not None and self.process.is_alive():
      self.process.kill()  # a hung decoder answers no request
    self.conn.close()  # an idle worker sees EOF and exits
    self.process.join(timeout=5)
    if self.process.is_alive():
      self.process.kill()
      self.process.join()


def _exit_status(process: multiprocessing.process.BaseProcess) -> str:
  code = process.exitcode
  return f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"


def _run_clips(specs: Sequence[ClipSpec], config: PrepConfig, workers: int,
               time_limit_s: Optional[float] = None) -> Iterable[ClipResult]:
  """Yields results as they finish.

  With one worker and no time limit the clips run in this process. Otherwise each runs in a worker
  process: a worker that dies (a decoder crash) costs only its own clip, and a clip still running
  after `time_limit_s` seconds (a hung decoder) is killed with its worker; either clip is reported
  as skipped and a fresh worker takes the next clip.
  """
  if workers <= 1 and time_limit_s is None:
    for spec in specs:
      yield process_clip(spec, config)
    return
  context = multiprocessing.get_context("spawn")
  queue = collections.deque(specs)
  pool = [_Worker(context) for _ in range(min(max(workers, 1), len(queue)))]
  try:
    while queue or any(w.spec is not None for w in pool):
      for w in pool:
        if w.ready and w.spec is None and queue:
          w.run(queue.popleft(), config)
      waits = [w.started + time_limit_s - time.monotonic()
               for w in pool if w.spec is not None and time_limit_s is not None]
      multiprocessing.connection.wait([w.conn for w in pool] + [w.process.sentinel for w in pool],
                                      timeout=max(0.0, min(waits)) if waits else None)
      for i, w in enumerate(pool):
        try:
          result, gone = w.receive(), False
        except EOFError:
          w.process.join(timeout=5)  # its pipe closes a moment before its exit status is known
          if w.spec is None and not w.ready:
            raise BuildError(f"a prep worker process failed to start ({_exit_status(w.process)})"
                             ) from None
          result, gone = None, True
          if w.spec is not None:
            result = _skipped(w.spec, f"the worker process crashed on this file "
                                      f"({_exit_status(w.process)})")
        if (result is None and w.spec is not None and time_limit_s is not None
            and time.monotonic() - w.started >= time_limit_s):
          result, gone = _skipped(w.spec, f"timed out after {time_limit_s:g} s"), True
        if gone:  # a fresh worker takes the place of a dead or hung one while clips remain
          w.stop()
          pool[i] = _Worker(context) if queue else None
        if result is not None:
          yield result
      pool = [w for w in pool if w is not None]
  finally:
    # Also on an error in the caller (a full disk): nothing waits for the clips still running.
    for w in pool:
      if w is not None:
        w.stop()


# (clips to process, options) -> their results, in any order; build() stores them.
ClipRunner = Callable[[Sequence[ClipSpec], PrepConfig], Iterable[ClipResult]]


def build(specs: Sequence[ClipSpec], out_dir: str | os.PathLike, config: PrepConfig = PrepConfig(),
          workers: int = 1, corpus: Optional[str] = None, retry_skipped: bool = False,
          progress: bool = True, time_limit_s: Optional[float] = None,
          clip_runner: Optional[ClipRunner] = None) -> dict[str, Any]:
  """Processes every clip not yet in OUT/manifest.jsonl, then writes the shards; returns a summary.

  `clip_runner(todo, config)` yields the ClipResults of the clips to process (in any order); by
  default a local process pool of `workers` runs them (data_prep/beam_build.py: a Beam pipeline).

  `time_limit_s` (the local runner): a clip still running after this many seconds (wall clock) is
  killed and skipped with the reason "timed out after N s"; with a limit, clips always run in
  worker processes.
  Raises BuildError while another build holds OUT (OUT/build.lock).
  """
  try:
    config.validate()
  except ValueError as e:
    raise BuildError(str(e)) from None
  if time_limit_s is not None and not time_limit_s > 0:
    raise BuildError(f"time_limit_s must be > 0 (or None for no limit), got {time_limit_s}")
  config = resolve_teacher(config)
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  with _exclusive(out):
    return _build(specs, out, config, workers, corpus, retry_skipped, progress, time_limit_s,
                  clip_runner)


def _build(specs: Sequence[ClipSpec], out: pathlib.Path, config: PrepConfig, workers: int,
           corpus: Optional[str], retry_skipped: bool, progress: bool,
           time_limit_s: Optional[float], clip_runner: Optional[ClipRunner]) -> dict[str, Any]:
  """build() while holding OUT's lock."""
  from kd_mh import records  # pylint: disable=import-outside-toplevel  (TensorFlow: parent only)

  corpus = corpus or (specs[0].corpus if specs else "empty")
  _check_config(out, config)
  counts = collections.Counter(s.clip_id for s in specs)
  duplicated = sorted(i for i, n in counts.items() if n > 1)
  if duplicated:
    raise BuildError(f"corpus reader gave duplicate clip ids: {duplicated[:5]}")
  for spec in specs:  # refuse bad specs before any work is done
    _inside(out, spec.clip_id, "clips", ".pb")
    if spec.split not in SPLITS:
      raise BuildError(f"clip {spec.clip_id!r}: split {spec.split!r} is not one of {SPLITS}")
  name_max = os.pathconf(out, "PC_NAME_MAX")
  specs = [s if s.error or _name_fits(s.clip_id, name_max) else dataclasses.replace(
      s, error=f"{s.path}: the clip id is too long for a file name under {out} "
               f"({name_max} bytes at most, with {_LONGEST_SUFFIX!r})") for s in specs]
  feats, metadata = schema(config)

  manifest_path = out / "manifest.jsonl"
  done = read_manifest(manifest_path)
  todo = [s for s in specs
          if s.clip_id not in done
          or not _is_current(done[s.clip_id], s)
          or (retry_skipped and done[s.clip_id]["status"] != "ok")
          or (done[s.clip_id]["status"] == "ok"
              and not _inside(out, s.clip_id, "clips", ".pb").exists())]
  if manifest_path.exists() and not manifest_path.read_bytes().endswith(b"\n"):
    with open(manifest_path, "ab") as torn:  # end a line torn by a killed run
      torn.write(b"\n")
  started = time.time()
  with open(manifest_path, "ab", buffering=0) as manifest:  # unbuffered: one write() per line
    bar = tqdm.tqdm(total=len(todo), desc=f"prep {corpus}", unit="clip", disable=not progress)
    results = (clip_runner(todo, config) if clip_runner is not None
               else _run_clips(todo, config, workers, time_limit_s))
    for result in results:
      clip_id = result.manifest["clip_id"]
      if result.example is not None:
        # The record lands before its manifest line, so an "ok" line always has its record.
        _atomic_write(_inside(out, clip_id, "clips", ".pb"),
                      records.write_example(result.example, feats))
        if result.tracks is not None:
          _atomic_write(_inside(out, clip_id, "tracks", ".json"),
                        json.dumps(result.tracks).encode())
      _append_line(manifest, result.manifest)
      done[clip_id] = result.manifest
      bar.update(1)
      bar.set_postfix(ok=sum(d["status"] == "ok" for d in done.values()))
    bar.close()

  # Rewrite the manifest deduplicated, in the reader's order (clips no longer listed are dropped).
  lines = [done[s.clip_id] for s in specs if s.clip_id in done]
  _atomic_write(manifest_path,
                "".join(json.dumps(l, default=_json_default) + "\n" for l in lines).encode())
  split_counts = write_shards(out, corpus, [l for l in lines if l["status"] == "ok"], feats,
                              metadata=metadata)
  summary = _summary(lines, split_counts, len(todo), time.time() - started, out, corpus)
  _atomic_write(out / "summary.json", json.dumps(summary, indent=2).encode())
  return summary


def _json_default(value: Any) -> Any:
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _check_config(out: pathlib.Path, config: PrepConfig) -> None:
  path = out / "prep_config.json"
  current = json.loads(json.dumps(config.to_json()))
  if path.exists():
    # Options added since the directory was built take their defaults (what it was built with).
    defaults = json.loads(json.dumps(PrepConfig().to_json()))
    previous = {**defaults, **json.loads(path.read_text())}
    if previous != current:
      changed = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
      raise BuildError(f"{out} was built with different options ({', '.join(changed)}); "
                       "use a new --out directory or the same options to resume")
  else:
    _atomic_write(path, json.dumps(current, indent=2).encode())


def write_shards(out: pathlib.Path, corpus: str, ok_lines: Sequence[dict[str, Any]], feats,
                 examples_per_shard: int = 1000,
                 metadata: Optional[dict[str, Any]] = None) -> dict[str, int]:
  """Groups the per-clip records into tfds-layout shards per split and writes tfds metadata
  (with `metadata`, e.g. which teacher made a corpus stored as embeddings, in metadata.json)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  name = dataset_name(corpus)
  final_dir = out / "tfds" / name / DATASET_VERSION
  # Written next to the old version and swapped in (below).
  data_dir = final_dir.with_name(DATASET_VERSION + ".incomplete")
  shutil.rmtree(data_dir, ignore_errors=True)
  data_dir.mkdir(parents=True)
  by_split: dict[str, list[str]] = collections.defaultdict(list)
  for line in ok_lines:
    by_split[line["split"]].append(line["clip_id"])
  template = tfds.core.ShardedFileTemplate(
      data_dir=data_dir, template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
      dataset_name=name, filetype_suffix="tfrecord")
  counts: dict[str, int] = {}
  split_infos = []
  for split in SPLITS:
    clip_ids = sorted(by_split.get(split, []))
    if not clip_ids:
      continue
    n_shards = max(1, -(-len(clip_ids) // examples_per_shard))
    shard_lengths, n_bytes = [], 0
    for shard in range(n_shards):
      path = template.replace(split=split).sharded_filepath(shard_index=shard, num_shards=n_shards)
      with tf.io.TFRecordWriter(os.fspath(path)) as writer:
        for clip_id in clip_ids[shard::n_shards]:
          writer.write(_inside(out, clip_id, "clips", ".pb").read_bytes())
      shard_lengths.append(len(clip_ids[shard::n_shards]))
      n_bytes += os.path.getsize(os.fspath(path))
    counts[split] = len(clip_ids)
    split_infos.append(tfds.core.SplitInfo(name=split, shard_lengths=shard_lengths,
                                           num_bytes=n_bytes, filename_template=template))
  if split_infos:
    faces_held = ("speaker face crops" if metadata is None
                  else "the teacher's per-frame outputs of the speaker's face (no face pixels)")
    tfds.folder_dataset.write_metadata(
        data_dir=data_dir, features=feats, split_infos=split_infos, filename_template=template,
        check_data=False, metadata=tfds.core.MetadataDict(metadata) if metadata else None,
        description=f"kd_mh prepared corpus '{corpus}': {faces_held} and log-mel per clip.")
  # The old version is renamed aside, then removed: at every moment one whole version is in
  # place or aside, and a rerun (which rewrites the shards from the manifest) replaces both.
  old_dir = final_dir.with_name(DATASET_VERSION + ".old")
  shutil.rmtree(old_dir, ignore_errors=True)
  if final_dir.exists():
    os.replace(final_dir, old_dir)
  os.replace(data_dir, final_dir)
  shutil.rmtree(old_dir, ignore_errors=True)
  return counts


def _summary(lines, split_counts, processed, seconds, out, corpus) -> dict[str, Any]:
  status = collections.Counter(l["status"] for l in lines)
  reasons = collections.Counter(_reason_kind(l["reason"]) for l in lines if l["status"] != "ok")
  coverage = [l["speaker_coverage"] for l in lines if l["status"] == "ok" and l.get("n_frames")]
  return {
      "corpus": corpus, "out": os.fspath(out), "tfds_name": dataset_name(corpus),
      "tfds_data_dir": os.fspath(out / "tfds"), "clips": len(lines), "ok": status["ok"],
      "skipped": status["skipped"], "processed_this_run": processed,
      "seconds_this_run": round(seconds, 1), "splits": split_counts,
      "skip_reasons": dict(reasons.most_common()),
      "speaker_coverage_mean": round(float(np.mean(coverage)), 4) if coverage else None,
      "speaker_coverage_min": round(float(np.min(coverage)), 4) if coverage else None,
  }


def _reason_kind(reason: str) -> str:
  """The reason without file names, line numbers and measurements, so the summary counts kinds."""
  reason = re.sub(r"/[^\s:]+", "<file>", reason)
  reason = re.sub(r"\d+(?:\.\d+)?", "N", reason)
  return re.sub(r"^(?:<file>|line N): ", "", reason)


def format_summary(summary: dict[str, Any]) -> str:
  rows = [f"corpus {summary['corpus']}: {summary['ok']} ok, {summary['skipped']} skipped "
          f"of {summary['clips']} clips ({summary['processed_this_run']} processed in "
          f"{summary['seconds_this_run']} s)",
          "splits: " + ", ".join(f"{k} {v}" for k, v in summary["splits"].items())]
  if summary["speaker_coverage_mean"] is not None:
    rows.append(f"speaker coverage: mean {summary['speaker_coverage_mean']:.3f}, "
                f"min {summary['speaker_coverage_min']:.3f}")
  for reason, n in summary["skip_reasons"].items():
    rows.append(f"  skipped {n:5d}  {reason}")
  rows.append(f"tfds: tfds.load('{summary['tfds_name']}', data_dir='{summary['tfds_data_dir']}')")
  return "\n".join(rows)
