"""Command-line entry points (absl flags)."""
