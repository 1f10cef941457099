"""Datasets, augmentation and ground-truth targets."""
