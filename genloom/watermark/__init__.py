"""Invisible watermarks and their detectors: text (over token ids), images (over saved pictures) and audio (over
waveforms), each keyed by a secret, engine-agnostic (the decoders call in; nothing here imports them).

  keys.py     the key's form and the keyed pseudo-random streams (HMAC-SHA256, SHAKE-256)
  text.py     green-list (Kirchenbauer et al. 2023) and Gumbel / exponential (Aaronson 2022) text marks
  audio.py    a spread-spectrum mark in a band, detected by correlation
  image.py    a keyed periodic luminance pattern, detected by whitened fold correlation over scale and shift
  files.py    what a file is (by its first bytes) and `detect_file`, behind `genloom detect` and /v1/detect
"""
