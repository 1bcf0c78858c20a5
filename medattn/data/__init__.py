"""Data helpers shared by every part of medattn: geometry-safe image I/O, atomic writes
and the synthetic phantom dataset."""
