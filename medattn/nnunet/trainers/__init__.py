"""nnU-Net trainer modules only: this folder is what ``nnUNet_extTrainer`` points at."""
