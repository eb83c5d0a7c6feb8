"""Speed and memory of the per-clip preparation pipeline, against the naive baseline, in one run.

  python benchmarks/prep_speed.py [--cremad=../shared/data/cremad/video] [--work=/tmp/kd_mh_bench]

Prints the real-time factor (CPU seconds of compute per second of video, the process pinned to one
core with single-threaded numerics) of
  * default: sparse detection + tracking + sparse encodings + the `av` speaker cue, and
  * naive:   detect + encode every sampled frame + k-means speaker clustering (the original study),
on a 60 s two-person 640x360 synthetic clip and on the CREMA-D clips (when present), and the peak
resident memory of the default pipeline on a 5-minute 1280x720 clip (measured in a child process).
Goals: default >= 20x faster than naive, default <= 0.1 real-time factor, peak RSS <= 1.5 GB.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import pathlib
import resource
import subprocess
import sys
import time

import threadpoolctl

from data_prep import build
from data_prep import faces
from data_prep import media
from data_prep import synthetic
from data_prep.corpora.base import ClipSpec

DEFAULT = build.PrepConfig()
NAIVE = dataclasses.replace(DEFAULT, face=faces.NAIVE, speaker_method="cluster")


def _clip(path: str) -> ClipSpec:
  return ClipSpec(clip_id=pathlib.Path(path).stem, corpus="bench", path=path)


def cpu_seconds(path: str, config: build.PrepConfig) -> float:
  start = time.process_time()
  result = build.process_clip(_clip(path), config)
  if result.manifest["status"] != "ok":
    raise RuntimeError(f"{path}: {result.manifest['reason']}")
  return time.process_time() - start


def compare(name: str, paths: list[str]) -> dict:
  duration = sum(media.probe(p).duration_s for p in paths)
  row = {"clips": name, "video_s": round(duration, 2)}
  for label, config in (("default", DEFAULT), ("naive", NAIVE)):
    seconds = sum(cpu_seconds(p, config) for p in paths)
    row[f"{label}_cpu_s"] = round(seconds, 2)
    row[f"{label}_rtf"] = round(seconds / duration, 4)
  row["speedup"] = round(row["naive_rtf"] / row["default_rtf"], 1)
  return row


def child_peak_rss(path: str) -> float:
  """Peak RSS in MB of a fresh process that prepares `path` with the default pipeline."""
  out = subprocess.run([sys.executable, __file__, "--rss_of", path], check=True,
                       capture_output=True, text=True)
  return json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mb"]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cremad", default=str(pathlib.Path(__file__).resolve().parents[2]
                                              / "shared" / "data" / "cremad" / "video"))
  parser.add_argument("--work", default="/tmp/kd_mh_prep_speed")
  parser.add_argument("--long_s", type=float, default=300.0, help="length of the memory clip")
  parser.add_argument("--rss_of", help=argparse.SUPPRESS)
  args = parser.parse_args()

  if args.rss_of:
    build.process_clip(_clip(args.rss_of), dataclasses.replace(DEFAULT, max_duration_s=1e9))
    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
    return

  os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
  threadpoolctl.threadpool_limits(1)
  work = pathlib.Path(args.work)
  work.mkdir(parents=True, exist_ok=True)
  two_person = work / "two_person_360p_60s.mp4"
  long_clip = work / f"one_person_720p_{int(args.long_s)}s.mp4"
  if not two_person.exists():
    synthetic.make_clip(two_person, "happy", "happy", speaker="grace_hopper", bystander=synthetic.BYSTANDERS[0],
                        duration_s=60.0, width=640, height=360, seed=1)
  if not long_clip.exists():
    synthetic.make_clip(long_clip, "neutral", "neutral", speaker="astronaut", bystander=None,
                        duration_s=args.long_s, width=1280, height=720, seed=2)

  # One untimed pass per pipeline: first calls load models and compile librosa's numba kernels.
  warmup = work / "warmup.mp4"
  if not warmup.exists():
    synthetic.make_clip(warmup, "sad", "sad", speaker="grace_hopper", duration_s=2.0, seed=3)
  for config in (DEFAULT, NAIVE):
    cpu_seconds(str(warmup), config)

  rows = [compare("synthetic two-person 640x360, 60 s", [str(two_person)])]
  cremad = sorted(glob.glob(os.path.join(args.cremad, "*.flv")))
  if cremad:
    rows.append(compare(f"CREMA-D {len(cremad)} clips 480x360", cremad))
  else:
    print(f"(CREMA-D clips not found under {args.cremad}; skipped)")
  rss = child_peak_rss(str(long_clip))

  print(f"\n{'clips':<40} {'video s':>8} {'default RTF':>12} {'naive RTF':>10} {'speed-up':>9}")
  for row in rows:
    print(f"{row['clips']:<40} {row['video_s']:>8.1f} {row['default_rtf']:>12.4f} "
          f"{row['naive_rtf']:>10.4f} {row['speedup']:>8.1f}x")
  print(f"\npeak RSS, default pipeline, {args.long_s:.0f} s 1280x720 clip: {rss:.0f} MB")
  print("goals: speed-up >= 20x, default RTF <= 0.1 (one core), peak RSS <= 1536 MB")
  print(json.dumps({"rows": rows, "peak_rss_mb_720p": round(rss, 1)}))


if __name__ == "__main__":
  main()
