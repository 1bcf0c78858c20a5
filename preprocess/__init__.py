"""Data converters to nnU-Net raw datasets; installed as ``medattn.preprocess``."""
