"""Run nnU-Net's own dataset integrity check on raw dataset folders.

This is the check behind ``nnUNetv2_plan_and_preprocess --verify_dataset_integrity``
(``nnunetv2.experiment_planning.verify_dataset_integrity``) without the fingerprint
extraction that nnU-Net's commands run after it, which takes most of their time. nnU-Net
checks with a spawn process pool, which needs a ``__main__`` guard, so
:func:`medattn.preprocess.common.verify_with_nnunet` runs this module in a subprocess::

    python -m medattn.preprocess.nnunet_check PROCESSES DATASET_FOLDER [DATASET_FOLDER ...]

The exit status is 0 when every folder passes.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    """Verify each folder in ``argv[1:]`` with ``argv[0]`` worker processes."""
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    processes, folders = int(argv[0]), argv[1:]
    for folder in folders:
        print(f"verifying {folder}", flush=True)
        verify_dataset_integrity(folder, processes)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
