"""Readers of labelled-image files, one module per format (npz, folders, idx, CIFAR, torchvision, foolbox)."""
