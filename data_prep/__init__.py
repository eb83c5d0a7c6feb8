"""Corpus preparation: decode, find and isolate the speaker's face, log-mel, TFRecords."""
