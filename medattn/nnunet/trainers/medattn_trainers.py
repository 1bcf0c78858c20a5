"""medattn's nnU-Net trainers (this folder is what ``nnUNet_extTrainer`` points at).

nnU-Net imports every module of this folder as a top-level module and then removes the
folder from ``sys.path``, so this module imports everything it needs from ``medattn`` at
module top level and holds nothing but trainer classes. The table of trainers, with what
each inserts where, is in the README (``medattn nnunet list`` prints it too).
"""

from medattn.nnunet.network import AttentionPlan
from medattn.nnunet.trainer import BenchSchedule, DemoSchedule, SmokeSchedule, nnUNetTrainerAttention

# --- DSM (DSNet, Table 4) ----------------------------------------------------------------


class nnUNetTrainerDSM(nnUNetTrainerAttention):
    """DSM after every encoder stage, reduction 1/16 (DSNet50-B placement)."""

    attention = AttentionPlan("dsm", stages="all", kwargs={"rd_ratio": 1 / 16})


class nnUNetTrainerDSM_A(nnUNetTrainerAttention):
    """DSM after the last (bottleneck) encoder stage only, reduction 1/2 (DSNet50-A)."""

    attention = AttentionPlan("dsm", stages="last", kwargs={"rd_ratio": 1 / 2})


# --- SNA (parameter-free) ----------------------------------------------------------------


class nnUNetTrainerSNA(nnUNetTrainerAttention):
    """SNA after every encoder stage."""

    attention = AttentionPlan("sna", stages="all")


class nnUNetTrainerSNA_early(nnUNetTrainerAttention):
    """SNA once, after the first encoder stage (the SNA paper's default use)."""

    attention = AttentionPlan("sna", stages="first")


class nnUNetTrainerSNA_blocks(nnUNetTrainerAttention):
    """SNA after every conv/residual block of every encoder stage (the paper's optional
    in-block use)."""

    attention = AttentionPlan("sna", placement="blocks", stages="all")


# --- DIA (one shared unit per stage) -----------------------------------------------------


class nnUNetTrainerDIA(nnUNetTrainerAttention):
    """One DIA-LSTM unit per encoder stage, shared by the stage's blocks."""

    attention = AttentionPlan("lstm", placement="shared", stages="all")


class nnUNetTrainerDIALight(nnUNetTrainerAttention):
    """One DIA-LSTM (light, "IE" transforms) unit per encoder stage."""

    attention = AttentionPlan("light", placement="shared", stages="all")


class nnUNetTrainerDIASE(nnUNetTrainerAttention):
    """One SE unit per encoder stage shared by its blocks (DIA with SE, norms per block)."""

    attention = AttentionPlan("se", placement="shared", stages="all")


# --- Baselines the papers compare against ------------------------------------------------


class nnUNetTrainerSE(nnUNetTrainerAttention):
    """SE after every encoder stage."""

    attention = AttentionPlan("se", stages="all")


class nnUNetTrainerECA(nnUNetTrainerAttention):
    """ECA after every encoder stage."""

    attention = AttentionPlan("eca", stages="all")


class nnUNetTrainerCBAM(nnUNetTrainerAttention):
    """CBAM after every encoder stage."""

    attention = AttentionPlan("cbam", stages="all")


class nnUNetTrainerGC(nnUNetTrainerAttention):
    """Global context (GCNet) after every encoder stage."""

    attention = AttentionPlan("gc", stages="all")


# --- Smoke variants: 1 epoch of 2 iterations, 1 validation iteration ---------------------


class nnUNetTrainerStock_smoke(SmokeSchedule, nnUNetTrainerAttention):
    """Stock nnU-Net network on the smoke schedule (the reference for the others)."""


class nnUNetTrainerDSM_smoke(SmokeSchedule, nnUNetTrainerDSM):
    """nnUNetTrainerDSM on the smoke schedule."""


class nnUNetTrainerSNA_smoke(SmokeSchedule, nnUNetTrainerSNA):
    """nnUNetTrainerSNA on the smoke schedule."""


class nnUNetTrainerDIA_smoke(SmokeSchedule, nnUNetTrainerDIA):
    """nnUNetTrainerDIA on the smoke schedule."""


class nnUNetTrainerSE_smoke(SmokeSchedule, nnUNetTrainerSE):
    """nnUNetTrainerSE on the smoke schedule."""


# --- Benchmark variants (medattn bench nnunet): the BenchSchedule budget, timed steps -----


class nnUNetTrainerStock_bench(BenchSchedule, nnUNetTrainerAttention):
    """Stock nnU-Net network on the benchmark schedule (the reference for the others)."""


class nnUNetTrainerDSM_bench(BenchSchedule, nnUNetTrainerDSM):
    """nnUNetTrainerDSM on the benchmark schedule."""


class nnUNetTrainerSNA_bench(BenchSchedule, nnUNetTrainerSNA):
    """nnUNetTrainerSNA on the benchmark schedule."""


class nnUNetTrainerDIA_bench(BenchSchedule, nnUNetTrainerDIA):
    """nnUNetTrainerDIA on the benchmark schedule."""


# --- Demo variants (medattn demo / make demo): DemoSchedule, 6 epochs x 8 iterations ------


class nnUNetTrainerStock_demo(DemoSchedule, nnUNetTrainerAttention):
    """Stock nnU-Net network on the demo schedule (the reference of the demo's comparison)."""


class nnUNetTrainerDSM_demo(DemoSchedule, nnUNetTrainerDSM):
    """nnUNetTrainerDSM on the demo schedule."""
