"""Downloadable models: the shipped catalogue, verified resumable downloads, safe unpacking and installation."""
