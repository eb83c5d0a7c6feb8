"""The corpus build's clips as an Apache Beam pipeline (DirectRunner, Dataflow, Flink, Spark).

Only the per-clip work is distributed: the pipeline maps each ClipSpec through the same
`build.process_clip` as the local process pool, and `build.build` stores the results exactly as a
local build does (OUT/clips, OUT/tracks, OUT/manifest.jsonl, the shards by `build.write_shards`,
OUT/summary.json). So one copy of the logic serves both, and both give the same examples.

  options = beam_build.pipeline_options("DirectRunner", "--direct_num_workers=2")
  build.build(specs, out, config, clip_runner=beam_build.clip_runner(options, out))

The workers hand each result back through text files (a base64 line each) in a staging folder
(OUT/beam_staging, or a fresh folder under the pipeline's --temp_location when it has one, e.g.
gs://bucket/tmp on Dataflow), deleted once the results are stored. Each result is an .npz (never
a pickle): the manifest line and the tracks as JSON, the example's fields as arrays.

Workers open the clips at the paths the corpus reader listed, so on a cluster the corpus root must
be mounted at the same path on every worker.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import io
import json
import os
import shlex
import shutil
import tempfile
import uuid
from typing import Any, Iterator, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options import pipeline_options as beam_options
from apache_beam.runners import runner as beam_runner
import numpy as np

from data_prep import build
from data_prep.corpora.base import ClipSpec

STAGING = "beam_staging"  # OUT/beam_staging: results on their way back from the workers
LOCAL_TEMP = "beam_tmp"  # OUT/beam_tmp: the runner's own scratch folders while it runs
_EXAMPLE = "example."  # .npz key prefix of the example's fields


def pipeline_options(runner: str,
                     options: str | Sequence[str] = ()) -> beam_options.PipelineOptions:
  """Beam options for `runner` plus `options` (Beam's own flags, a string is split like a shell).

  Raises ValueError naming the flag or runner when Beam would not accept them, so a typo fails
  before any clip is processed rather than being dropped with a warning.
  """
  args = shlex.split(options) if isinstance(options, str) else list(options)
  if any(a == "--runner" or a.startswith("--runner=") for a in args):
    raise ValueError("give the runner once, as --runner, not inside --beam_options")
  parsed = beam_options.PipelineOptions([f"--runner={runner}", *args])
  known = parsed.get_all_options(retain_unknown_options=False)
  names = [a[2:].split("=", 1)[0] for a in args if a.startswith("--")]
  unknown = [f"--{n}" for n in names if n not in known and n.replace("-", "_") not in known]
  if unknown:
    raise ValueError(f"--beam_options: not Beam pipeline options: {' '.join(unknown)}")
  try:
    beam_runner.create_runner(runner)
  except (ValueError, ImportError) as e:
    raise ValueError(f"--runner={runner}: {e}") from None
  return parsed


def encode_result(result: build.ClipResult) -> bytes:
  """A ClipResult as .npz bytes: JSON for the manifest line and tracks, arrays for the example."""
  to_json = build._json_default  # pylint: disable=protected-access  (the manifest's own encoder)
  line = json.dumps(result.manifest, default=to_json)
  fields = {"manifest": np.asarray(line)}
  if result.tracks is not None:
    fields["tracks"] = np.asarray(json.dumps(result.tracks))
  for name, value in (result.example or {}).items():
    fields[_EXAMPLE + name] = np.asarray(value)
  buffer = io.BytesIO()
  np.savez_compressed(buffer, **fields)
  return buffer.getvalue()


def decode_result(data: bytes) -> build.ClipResult:
  """The inverse of encode_result; scalars come back as Python values, as process_clip gives."""
  with np.load(io.BytesIO(data), allow_pickle=False) as npz:
    example: dict[str, Any] = {}
    for key in npz.files:
      if key.startswith(_EXAMPLE):
        value = npz[key]
        example[key[len(_EXAMPLE):]] = value.item() if value.ndim == 0 else value
    tracks = json.loads(npz["tracks"].item()) if "tracks" in npz.files else None
    return build.ClipResult(manifest=json.loads(npz["manifest"].item()),
                            example=example or None, tracks=tracks)


class _ProcessClip(beam.DoFn):
  """ClipSpec -> encoded ClipResult, on a worker."""

  def __init__(self, config: build.PrepConfig):
    super().__init__()
    self._config = config
    self._driver_pid = os.getpid()

  def setup(self):
    # One clip per core, as in the local pool; never pin the driver's threads (in-process runners).
    if os.getpid() != self._driver_pid:
      build.init_worker()

  def process(self, spec: ClipSpec) -> Iterator[str]:
    # One text line per clip: Beam's text sink needs no extra packages on any file system.
    yield base64.b64encode(encode_result(build.process_clip(spec, self._config))).decode("ascii")


def _staging_dir(out: str, options: beam_options.PipelineOptions) -> str:
  temp = options.view_as(beam_options.GoogleCloudOptions).temp_location
  if temp:  # a location every worker and the driver reach (Dataflow: gs://...)
    return FileSystems.join(temp, f"kd_mh_prep-{uuid.uuid4().hex}")
  local = os.path.join(os.fspath(out), STAGING)
  shutil.rmtree(local, ignore_errors=True)  # results of a killed run are not this run's
  return local


@contextlib.contextmanager
def _local_temp(out: str) -> Iterator[None]:
  """Points the system temp folder at OUT/beam_tmp while a pipeline runs, then removes it.

  Beam's runners leave folders in the system temp folder (a job server's root, the requirements
  cache, the workers' scratch space): outputs stay under OUT, and none outlive the build.
  """
  path = os.path.join(out, LOCAL_TEMP)
  shutil.rmtree(path, ignore_errors=True)
  os.makedirs(path)
  saved = tempfile.tempdir, os.environ.get("TMPDIR")
  tempfile.tempdir, os.environ["TMPDIR"] = path, path  # this process, and the workers it starts
  try:
    yield
  finally:
    tempfile.tempdir = saved[0]
    if saved[1] is None:
      os.environ.pop("TMPDIR", None)
    else:
      os.environ["TMPDIR"] = saved[1]
    shutil.rmtree(path, ignore_errors=True)


def run_clips(specs: Sequence[ClipSpec], config: build.PrepConfig, *, out: str,
              options: beam_options.PipelineOptions) -> Iterator[build.ClipResult]:
  """Processes `specs` in a Beam pipeline; yields their results once it has finished."""
  if not specs:
    return
  staging = _staging_dir(out, options)
  prefix = FileSystems.join(staging, "results")
  try:
    with _local_temp(out), beam.Pipeline(options=options) as pipeline:
      _ = (pipeline
           | "Specs" >> beam.Create(list(specs))  # reshuffled: the clips spread over the workers
           | "Process" >> beam.ParDo(_ProcessClip(config))
           | "Stage" >> beam.io.WriteToText(prefix, file_name_suffix=".txt"))
    for match in FileSystems.match([prefix + "*"])[0].metadata_list:
      with FileSystems.open(match.path) as lines:
        for line in lines:
          yield decode_result(base64.b64decode(line.strip()))
  finally:
    # Object stores have no folders (`exists` of a gs:// prefix is False): delete what matches.
    staged = [m.path for m in FileSystems.match([staging + "/**"])[0].metadata_list]
    if staged:
      FileSystems.delete(staged)
    if os.path.isdir(staging):
      shutil.rmtree(staging, ignore_errors=True)


def clip_runner(options: beam_options.PipelineOptions, out: str | os.PathLike) -> build.ClipRunner:
  """A `build.build(clip_runner=...)` that runs the clips in a Beam pipeline with `options`."""
  return functools.partial(run_clips, out=os.fspath(out), options=options)
