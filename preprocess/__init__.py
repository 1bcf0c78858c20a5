"""Data converters to nnU-Net raw datasets; installed as ``medattn.preprocess``.

* :mod:`~medattn.preprocess.synapse`: BTCV RawData (Synapse multi-organ CT) to nnU-Net, with
  TransUNet's split and 8- or 13-label maps.
* :mod:`~medattn.preprocess.transunet`: TransUNet's npz/h5 layout to nnU-Net, and BTCV to
  that layout.
* :mod:`~medattn.preprocess.dicom`: one DICOM series to a NIfTI volume.
* :mod:`~medattn.preprocess.common`: what they share (errors, case discovery, label checks
  and remapping, the threaded case runner, ``dataset.json``, nnU-Net's integrity check).
* :mod:`~medattn.preprocess.cli`: the ``medattn convert`` command.
"""
