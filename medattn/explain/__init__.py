"""See what the attention does: ``medattn explain``.

- :mod:`medattn.explain.capture`: forward hooks that record every attached block's maps
  (SNA's weights, DSM's S, M and C, CBAM's, SE's and ECA's gates, DIA's hₜ) without
  changing the network's output;
- :mod:`medattn.explain.sources`: the volume models (nnU-Net model folders, MONAI
  checkpoints), each through its prediction backend;
- :mod:`medattn.explain.volumes`: whole-volume maps and Grad-CAM, stitched with the
  prediction's Gaussian sliding window and taken back to the input grid;
- :mod:`medattn.explain.images`: the same for ``medattn train image`` checkpoints, on the
  picture's pixel grid;
- :mod:`medattn.explain.outputs`: NIfTI, PNG montages, channel-weight CSV and index.html.
"""

from medattn.explain.capture import AttentionRecorder, block_kind

__all__ = ["AttentionRecorder", "block_kind"]
