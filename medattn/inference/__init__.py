"""Batch inference on NIfTI volumes."""
