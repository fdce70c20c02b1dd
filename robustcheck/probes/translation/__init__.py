"""The one-pixel translation probe and its measurements."""
