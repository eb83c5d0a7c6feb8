"""`kd-mh SUBCOMMAND [--flags]`: one console script for every stage of the pipeline."""

from __future__ import annotations

import importlib
import sys

from absl import app
from absl import flags

# subcommand -> (module under launch/, one-line help); each module defines its own absl flags
# and a main(argv).
SUBCOMMANDS = {
    "prep": ("launch.prep", "build a corpus: speaker face tracks + log-mel -> TFRecords"),
    "train": ("launch.train", "train the teacher or the student"),
    "evaluate": ("launch.evaluate",
                 "calibrate, measure divergence on (in)congruent pairs, pick the threshold"),
    "detect": ("launch.detect",
               "one video -> face/voice emotion timelines, divergence, flagged segments"),
    "analyze": ("launch.analyze",
                "emotion timelines before/after speaker isolation, co-occurrence tables"),
    "demo": ("launch.demo", "the whole pipeline on the generated demo corpus"),
}

EXIT_USAGE = 2


def usage() -> str:
  rows = ["usage: kd-mh SUBCOMMAND [--flag=value ...]   (kd-mh SUBCOMMAND --help for its flags)", ""]
  rows += [f"  {name:<9} {help_}{'' if module else '  [not yet available]'}"
           for name, (module, help_) in SUBCOMMANDS.items()]
  return "\n".join(rows)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a bad flag or config value exiting EXIT_USAGE (absl exits 1)."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"{argv[0]}: {e}\nPass --help to see its flags.", file=sys.stderr)
    sys.exit(EXIT_USAGE)


def main() -> None:
  if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help", "help"):
    print(usage())
    sys.exit(0 if len(sys.argv) >= 2 else EXIT_USAGE)
  name = sys.argv[1]
  if name not in SUBCOMMANDS:
    print(f"kd-mh: unknown subcommand {name!r}\n\n{usage()}", file=sys.stderr)
    sys.exit(EXIT_USAGE)
  module_name, _ = SUBCOMMANDS[name]
  if module_name is None:
    print(f"kd-mh {name}: not yet available in this version of kd_mh "
          "(see the README for what each release provides)", file=sys.stderr)
    sys.exit(EXIT_USAGE)
  module = importlib.import_module(module_name)
  # absl prints __main__'s docstring on a usage error: show the subcommand's, with its exit codes.
  sys.modules["__main__"].__doc__ = module.__doc__
  app.run(module.main, argv=[f"kd-mh {name}"] + sys.argv[2:], flags_parser=_parse_flags)


if __name__ == "__main__":
  main()
