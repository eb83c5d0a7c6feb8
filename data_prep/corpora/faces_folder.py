"""A labelled folder of face photographs, `ROOT/<label>/.../<image>` (the CK+-style layout).

The top-level folder name is the label: a number is a CK+ emotion code (`emotions.from_ckplus`,
0 neutral ... 7 surprise), anything else a name (`emotions.from_name`, synonyms allowed). CK+
contempt has no FER2013 class: the `contempt` policy drops it (the image stays, unlabelled) or
maps it. An image outside any label folder, or in a folder whose name is no label, yields a
ClipSpec with the reason in `error`.

Face folders rarely name their subjects, so splits are by image unless `speaker_pattern` (a regex
whose first group, searched in the file name, is the subject, e.g. `^(S\\d+)_` for CK+'s
`S005_001_00000011.png`) lets them be subject-independent.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence

from data_prep.corpora import folder
from data_prep.corpora import splits
from data_prep.corpora.base import ClipSpec
from kd_mh import emotions

IMAGE_EXTS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def folder_label(name: str, contempt: str) -> tuple[int, str]:
  """(class index, native name) of a label folder; raises emotions.LabelError if it is none."""
  if name.isdigit():
    label = emotions.from_ckplus(name, contempt=contempt)  # raises for an unknown code
    return label, emotions.CKPLUS_NATIVE[str(int(name))]
  return emotions.from_name(name, contempt=contempt), name.strip().lower()


def read_faces_folder(
    root: str | os.PathLike,
    contempt: str = "drop",
    speaker_pattern: str | None = None,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    test_speakers: Iterable[str] | None = None,
    validation_speakers: Iterable[str] | None = None,
) -> list[ClipSpec]:
  """One ClipSpec(kind="image") per image under `root`."""
  root = folder.require_dir(root, "faces")
  folder.check_policies({"contempt": contempt})
  try:
    pattern = re.compile(speaker_pattern) if speaker_pattern else None
  except re.error as e:
    raise ValueError(f"speaker_pattern {speaker_pattern!r} is not a regular expression ({e})") from None
  if pattern is not None and pattern.groups < 1:
    raise ValueError(f"speaker_pattern {speaker_pattern!r} needs a group that captures the subject")
  specs, unmatched = [], 0
  for path in folder.files_under(root, IMAGE_EXTS):
    relative = path.relative_to(root)
    speaker = ""
    if pattern is not None:
      match = pattern.search(path.name)
      speaker = match.group(1) if match else ""
      unmatched += match is None
    label, label_name, error = emotions.UNLABELLED, "", ""
    if len(relative.parts) < 2:
      error = f"{path}: image is not inside a <label>/ folder"
    else:
      try:
        label, label_name = folder_label(relative.parts[0], contempt)
      except emotions.LabelError as e:
        error = f"{path}: folder {relative.parts[0]!r} is not a label ({e})"
    specs.append(ClipSpec(
        clip_id=folder.clip_id_of(relative), corpus="faces", path=None if error else str(path),
        speaker_id=speaker, label=label, label_name=label_name,
        label_source="" if error else "folder", kind="image", error=error))
  if unmatched:
    logging.warning("%s: speaker_pattern %r matched no subject in %d of %d file names; those "
                    "images are split one by one", root, speaker_pattern, unmatched, len(specs))
  return splits.assign_splits(specs, fractions, seed, test_speakers, validation_speakers)
