"""Labelled image data: the ImageDataset container, built-in and caption sources, file formats, data specs."""
