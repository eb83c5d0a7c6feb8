"""What a corpus reader yields: one ClipSpec per input clip (or face image)."""

from __future__ import annotations

import dataclasses
from typing import Optional

from kd_mh import emotions


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  """One input of a corpus build.

  `path` is None when the reader could not name a usable file (a broken CSV row); `error` then
  says why, and the build records the clip as skipped with that reason.
  """
  clip_id: str
  corpus: str
  path: Optional[str]
  split: str = "train"  # train | validation | test
  speaker_id: str = ""
  label: int = emotions.UNLABELLED  # index into emotions.EMOTIONS
  label_name: str = ""  # the corpus's own label, e.g. "calm" or "joy"
  label_source: str = ""  # where the label came from: filename | csv | votes | folder | generator
  face_label: int = emotions.UNLABELLED  # per-modality labels, where a corpus has them
  voice_label: int = emotions.UNLABELLED
  kind: str = "media"  # media (video and/or audio) | image (a single face photograph)
  error: str = ""
  extra: tuple[tuple[str, str], ...] = ()  # further corpus facts kept in the manifest
