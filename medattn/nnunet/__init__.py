"""The nnU-Net v2 engine: networks built on nnU-Net's plans with attention inserted."""
