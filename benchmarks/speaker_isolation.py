"""How well each speaker method isolates the speaker from a bystander whose boxes are known.

  python benchmarks/speaker_isolation.py [--cremad=../shared/data/cremad/video] [--work=DIR]

Scenes, each tracked at 10 fps with the default FaceConfig and scored for both methods (`av` and
`cluster`):
  * synthetic: the generated clips of tests/test_isolation.py (`synthetic.ISOLATION_SCENES`): a
    speaker whose jaw follows the voice and a bystander with a mouth of their own. `make_clip`
    draws bystanders with an eye distance of 24 px per 240 lines against the speaker's 38 (face
    heights per eye distance vary too little across the packaged identities to make up for it):
    scenes with a bystander as large as the speaker cannot be generated and are skipped.
  * CREMA-D composites: each real clip (when present) with Grace Hopper's still face pasted at the
    top right, 0.8x ("smaller") and 1.25x ("larger") the actor's face height, written at the
    source's full rate. The true speaker box at a sampled frame is the tracked face that does not
    overlap the pasted patch (the largest, should there be several).
Per scene and method: coverage, the share of the true speaker's sampled frames given to the
speaker, and taken, the share of the bystander's sampled frames given to the speaker (a chosen box
lands on a face at IoU > 0.4; `speaker.isolation_scores`). The last line is the same as JSON.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import tempfile
import time

import face_recognition
import numpy as np

from data_prep import faces
from data_prep import media
from data_prep import speaker
from data_prep import synthetic

SR = 16000
TRACK_FPS = 10.0
BYSTANDER = "grace_hopper"
COMPOSITE_SCALES = {"smaller": 0.8, "larger": 1.25}  # bystander / actor face height
PATCH_TOP = 20  # px from the top; the patch sits 5 px from the right edge


def _height(box) -> int:
  return box[2] - box[0]


def track(path: str) -> tuple[faces.TrackingResult, np.ndarray]:
  """The clip's face tracks (default tracker, sampled at TRACK_FPS) and its 16 kHz audio."""
  tracking = faces.track_faces(media.iter_frames(path, TRACK_FPS), faces.FaceConfig())
  return tracking, media.load_audio(path, SR)


def score(tracking: faces.TrackingResult, audio: np.ndarray, speaker_boxes: list,
          bystander_boxes: list, fps: float) -> dict:
  """Both methods' coverage and taken share, given per-video-frame truth boxes."""
  row = {"sampled_frames": tracking.n_frames}
  for method in speaker.METHODS:
    choice = speaker.choose_speaker(tracking, audio, SR, method)
    covered, taken = speaker.isolation_scores(speaker.chosen_boxes(tracking, choice),
                                              speaker_boxes, fps, bystander_boxes)
    row[method] = {"coverage": round(covered, 4), "taken": round(taken, 4)}
  return row


def speaker_truth(tracking: faces.TrackingResult, region, fps: float, n_frames: int) -> list:
  """Per video frame, the tracked face clear of the pasted `region` at the sampled frames."""
  boxes = [None] * n_frames
  for i, t in enumerate(tracking.timestamps):
    clear = [b for face in tracking.tracks for f, b in zip(face.frame_indices, face.boxes)
             if f == i and faces.iou(b, region) == 0]
    if clear:
      boxes[min(int(round(t * fps)), n_frames - 1)] = max(clear, key=_height)
  return boxes


def synthetic_rows(work: pathlib.Path) -> list[dict]:
  rows = []
  for face, voice, who, bystander, seed in synthetic.ISOLATION_SCENES:
    path = str(work / f"{who}_{seed}.mp4")
    truth = synthetic.make_clip(path, face, voice, speaker=who, bystander=bystander,
                                duration_s=3.0, seed=seed)
    row = score(*track(path), truth["speaker_boxes"], truth["bystander_boxes"], truth["fps"])
    ratio = (np.mean([_height(b) for b in truth["bystander_boxes"] if b])
             / np.mean([_height(b) for b in truth["speaker_boxes"] if b]))
    rows.append({"group": "synthetic", "scene": f"{who} + {bystander}",
                 "size_ratio": round(float(ratio), 2), **row})
  return rows


def composite_rows(cremad: pathlib.Path, work: pathlib.Path) -> list[dict]:
  rows = []
  for source in sorted(cremad.glob("*.flv")):
    first = next(media.iter_frames(source)).rgb
    actor = max(face_recognition.face_locations(first), key=_height)
    height, width = first.shape[:2]
    for group, scale in COMPOSITE_SCALES.items():
      patch, face_box = synthetic.face_patch(BYSTANDER, int(round(_height(actor) * scale)))
      top, left = PATCH_TOP, width - patch.shape[1] - 5
      if left <= actor[1] or top + patch.shape[0] > height:
        raise RuntimeError(f"{source}: a {patch.shape[:2]} patch would cover the actor")
      region = (top, left + patch.shape[1], top + patch.shape[0], left)
      path = str(work / f"{source.stem}_{group}.mp4")
      truth = synthetic.composite_clip(source, path, patch, (top, left), face_box)
      tracking, audio = track(path)
      speaker_boxes = speaker_truth(tracking, region, truth["fps"], truth["num_frames"])
      row = score(tracking, audio, speaker_boxes, truth["bystander_boxes"], truth["fps"])
      rows.append({"group": f"cremad_{group}", "scene": source.stem,
                   "size_ratio": round(_height(face_box) / _height(actor), 2),
                   "speaker_truth_frames": sum(b is not None for b in speaker_boxes), **row})
  return rows


def means(rows: list[dict]) -> dict:
  """Mean coverage and taken share per method, over all rows and per group."""
  out = {}
  for group in ["all"] + sorted({r["group"] for r in rows}):
    members = [r for r in rows if group in ("all", r["group"])]
    out[group] = {m: {k: round(float(np.mean([r[m][k] for r in members])), 4)
                      for k in ("coverage", "taken")} for m in speaker.METHODS}
    out[group]["n"] = len(members)
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cremad", default=str(pathlib.Path(__file__).resolve().parents[2]
                                              / "shared" / "data" / "cremad" / "video"))
  parser.add_argument("--work", help="keep the clips here (default: a temporary folder)")
  args = parser.parse_args()

  start = time.time()
  with tempfile.TemporaryDirectory() as tmp:
    work = pathlib.Path(args.work or tmp)
    work.mkdir(parents=True, exist_ok=True)
    rows = synthetic_rows(work)
    print("(synthetic scenes with a bystander as large as the speaker: skipped, make_clip's "
          "fixed eye distances keep every bystander smaller)")
    cremad = pathlib.Path(args.cremad)
    if sorted(cremad.glob("*.flv")):
      rows += composite_rows(cremad, work)
    else:
      print(f"(CREMA-D clips not found under {cremad}; composites skipped)")
  seconds = time.time() - start

  print(f"\n{'group':<16} {'scene':<24} {'size':>5} {'frames':>6} "
        + " ".join(f"{m + ' cover':>12} {m + ' taken':>12}" for m in speaker.METHODS))
  for r in rows:
    print(f"{r['group']:<16} {r['scene']:<24} {r['size_ratio']:>5.2f} {r['sampled_frames']:>6} "
          + " ".join(f"{r[m]['coverage']:>12.3f} {r[m]['taken']:>12.3f}" for m in speaker.METHODS))
  summary = means(rows)
  print()
  for group, values in summary.items():
    print(f"{'mean ' + group:<41} {values['n']:>6} "
          + " ".join(f"{values[m]['coverage']:>12.3f} {values[m]['taken']:>12.3f}"
                     for m in speaker.METHODS))
  print(f"size: bystander / speaker face height; frames: sampled at {TRACK_FPS:g} fps; "
        f"{seconds:.0f} s")
  print(json.dumps({"rows": rows, "means": summary, "seconds": round(seconds, 1)}))


if __name__ == "__main__":
  main()
