"""MONAI networks with attention blocks in the encoder."""
