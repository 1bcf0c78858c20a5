"""What a ``--device`` option means: one rule for training, prediction, the demo and the
benchmarks. torch is imported on call, so importing this module stays cheap."""

from __future__ import annotations


def resolve_device(device: str):
    """The ``torch.device`` for a ``--device`` value.

    Args:
        device: ``"auto"`` (CUDA if available, else Apple MPS, else CPU) or anything
            ``torch.device`` accepts (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``).

    Raises:
        ValueError: for a device string torch does not know, or CUDA asked for where
            there is none; the message names the value.
    """
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps") if mps is not None and mps.is_available() else torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"--device {device!r}: unknown device (use auto, cpu, cuda, cuda:1, mps)") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device!r}: CUDA is not available on this machine (use --device cpu or auto)")
    return resolved


#: What every ``--device`` option accepts.
DEVICE_HELP = "auto (CUDA, then Apple MPS, then CPU), cpu, cuda, cuda:N or mps"


def add_device_argument(parser, default: str = "auto", what: str = "") -> None:
    """Add the one ``--device`` option (values checked later by :func:`resolve_device`).

    Args:
        parser: an ``argparse`` parser or argument group.
        default: the default value.
        what: what runs on the device, for the help text (e.g. "training").
    """
    subject = f"device for {what}: " if what else ""
    parser.add_argument("--device", default=default, metavar="DEVICE",
                        help=f"{subject}{DEVICE_HELP} (default: {default})")


def nnunet_device_name(device: str) -> str:
    """The ``-device`` value of nnU-Net's commands (cpu, cuda or mps) for a ``--device`` value."""
    return resolve_device(device).type
