"""medattn: DSM, SNA and DIA attention blocks for nnU-Net v2 and MONAI.

The package is layered so that importing it stays cheap: ``medattn.blocks`` holds the
attention blocks, ``medattn.insertion`` puts them into built networks, and the engines
(``medattn.nnunet``, ``medattn.networks``) build on both.
"""

__version__ = "0.1.0"
