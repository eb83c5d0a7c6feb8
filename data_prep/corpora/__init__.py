"""Corpus readers: a corpus root folder -> one ClipSpec per input clip, no decoding.

`read_corpus(name, root, **options)` is the entry point; it also makes clip ids unique across
the corpus (a second clip with the same id, e.g. a repeated CSV row or the same recording as
.wav and .flac, gets a fresh id and an error naming the first).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Callable, Sequence

from data_prep.corpora import cremad
from data_prep.corpora import demo
from data_prep.corpora import faces_folder
from data_prep.corpora import folder
from data_prep.corpora import meld
from data_prep.corpora import ravdess
from data_prep.corpora.base import ClipSpec

READERS: dict[str, Callable[..., list[ClipSpec]]] = {
    "meld": meld.read_meld,
    "cremad": cremad.read_cremad,
    "ravdess": ravdess.read_ravdess,
    "folder": folder.read_folder,
    "faces": faces_folder.read_faces_folder,
    "demo": demo.read_demo,
}


def unique_clip_ids(specs: Sequence[ClipSpec]) -> list[ClipSpec]:
  """`specs` with every repeated clip id replaced by `<id>-2`, `-3`, ... and flagged as an error."""
  taken = {s.clip_id for s in specs}
  first: dict[str, ClipSpec] = {}
  out = []
  for spec in specs:
    if spec.clip_id not in first:
      first[spec.clip_id] = spec
      out.append(spec)
      continue
    n = 2
    while f"{spec.clip_id}-{n}" in taken:
      n += 1
    taken.add(f"{spec.clip_id}-{n}")
    original = first[spec.clip_id]
    reason = (f"duplicate clip id {spec.clip_id!r} ({spec.path or spec.error}); the first is "
              f"{original.path or original.error}")
    out.append(dataclasses.replace(spec, clip_id=f"{spec.clip_id}-{n}",
                                   error=spec.error or reason))
  return out


def read_corpus(name: str, root: str | os.PathLike, **options) -> list[ClipSpec]:
  """The ClipSpecs of corpus `name` (a key of READERS) at `root`; options go to its reader."""
  reader = READERS.get(name)
  if reader is None:
    raise ValueError(f"unknown corpus {name!r}; expected one of {', '.join(READERS)}")
  accepted = [p for p in inspect.signature(reader).parameters if p != "root"]
  unknown = sorted(set(options) - set(accepted))
  if unknown:
    raise ValueError(f"corpus {name!r} has no option(s) {', '.join(unknown)}; "
                     f"its options are {', '.join(accepted)}")
  return unique_clip_ids(reader(root, **options))
