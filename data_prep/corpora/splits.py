"""Speaker-independent train / validation / test assignment.

Every speaker lands in exactly one split, so no voice or face seen in training is scored at test
time. Clips without a speaker id are their own group ("by item"). The assignment depends only on
the set of group ids and the seed: groups are ranked by a SHA-256 of `seed` and the id (not Python's
`hash()`, which changes between processes), then cut into consecutive runs whose sizes follow
`fractions` by largest remainder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Iterable, Sequence

from data_prep.corpora.base import ClipSpec

SPLITS: tuple[str, ...] = ("train", "validation", "test")


def group_of(spec: ClipSpec) -> str:
  """The unit that never straddles two splits: the speaker, or the clip itself when unknown."""
  return spec.speaker_id or spec.clip_id


def _rank(group: str, seed: int) -> str:
  return hashlib.sha256(f"{seed}\x00{group}".encode("utf-8")).hexdigest()


def _apportion(n: int, weights: Sequence[float]) -> list[int]:
  """Splits n items by weight (largest remainder); every positive weight gets >= 1 when n allows."""
  total = sum(weights)
  exact = [n * w / total for w in weights]
  counts = [math.floor(e) for e in exact]
  by_remainder = sorted(range(len(weights)), key=lambda i: counts[i] - exact[i])
  for i in by_remainder[:n - sum(counts)]:
    counts[i] += 1
  positive = [i for i, w in enumerate(weights) if w > 0]
  if n >= len(positive):
    for i in positive:
      if counts[i] == 0:
        # The largest share holds >= 2 here (pigeonhole), so it stays non-empty.
        donor = max(range(len(counts)), key=lambda k: counts[k])
        counts[donor] -= 1
        counts[i] += 1
  return counts


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
  values = tuple(float(f) for f in fractions)
  if len(values) != 3 or any(f < 0 for f in values) or not math.isclose(sum(values), 1.0,
                                                                         abs_tol=1e-6):
    raise ValueError(f"fractions must be three non-negative numbers (train, validation, test) "
                     f"summing to 1, got {tuple(fractions)}")
  return values  # type: ignore[return-value]


def assign_splits(
    specs: Sequence[ClipSpec],
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    test_speakers: Iterable[str] | None = None,
    validation_speakers: Iterable[str] | None = None,
) -> list[ClipSpec]:
  """Returns `specs` (same order) with `split` set so that no speaker is in two splits.

  `test_speakers` / `validation_speakers` pin those speakers (matched against `group_of`, so a clip
  id works for a clip without a speaker) and make that split hold exactly them; the other groups
  share the remaining splits in proportion to `fractions`. With at least one group per such split,
  each split with a positive fraction gets at least one group.
  """
  weights = _check_fractions(fractions)
  groups = sorted({group_of(s) for s in specs})
  pinned: dict[str, str] = {}
  for split, names in (("test", test_speakers), ("validation", validation_speakers)):
    if names is None:
      continue
    names = [str(n) for n in names]
    unknown = sorted(set(names) - set(groups))
    if unknown:
      raise ValueError(f"{split}_speakers names speakers not in the corpus: {', '.join(unknown)}")
    both = sorted(n for n in names if pinned.get(n, split) != split)
    if both:
      raise ValueError(f"speakers listed for both test and validation: {', '.join(both)}")
    pinned.update((n, split) for n in names)

  fixed = {"test": test_speakers is not None, "validation": validation_speakers is not None}
  open_splits = [s for s in SPLITS if not fixed.get(s, False)]
  free = sorted((g for g in groups if g not in pinned), key=lambda g: _rank(g, seed))
  if free:
    open_weights = [weights[SPLITS.index(s)] for s in open_splits]
    if sum(open_weights) == 0:
      raise ValueError(f"fractions {tuple(fractions)} leave no share for the {len(free)} speakers "
                       f"not named in test_speakers / validation_speakers")
    start = 0
    for split, count in zip(open_splits, _apportion(len(free), open_weights)):
      pinned.update((g, split) for g in free[start:start + count])
      start += count
  return [dataclasses.replace(s, split=pinned[group_of(s)]) for s in specs]
