"""Probes that measure robustness: foolbox attacks, fooling images, translation, caption attacks."""
