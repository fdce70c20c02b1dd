"""Tensor operations shared by probes and defenses: image shifts, the camera model, BLEU, accuracy curves."""
