"""medattn's nnU-Net trainers (this folder is what ``nnUNet_extTrainer`` points at).

nnU-Net imports every module of this folder as a top-level module and then removes the
folder from ``sys.path``, so this module imports everything it needs from ``medattn`` at
module top level and holds nothing but trainer classes. ``attention`` is a placement in the
text form of :mod:`medattn.placement`; a bare block name takes the encoder's default
position (:mod:`medattn.nnunet.network`: on the plain encoder after the norm of each stage's
second conv, before the LeakyReLU; on ResEnc inside every residual block). The table of
trainers, with where each block sits, is in the README (``medattn nnunet list`` prints it).
"""

from medattn.nnunet.trainer import (
    BenchSchedule,
    DemoSchedule,
    RetiredTrainer,
    SmokeSchedule,
    StudySchedule,
    nnUNetTrainerAttention,
)

# --- DSM (DSNet, Table 4) ----------------------------------------------------------------


class nnUNetTrainerDSM(nnUNetTrainerAttention):
    """DSM r=1/16 in every stage: plain encoder after the 2nd conv's norm (before the LeakyReLU), ResEnc
    after conv1 of every residual block (DSNet50-B's position)."""

    attention = 'dsm{"rd_ratio": 0.0625}'
    legacy = ('dsm@stage{"rd_ratio": 0.0625}', "nnUNetTrainerDSM_stage")


class nnUNetTrainerDSM_A(nnUNetTrainerAttention):
    """DSNet50-A's position: DSM r=1/2 after conv2 (its norm, before the nonlinearity) in the last stage only;
    on ResEnc in every residual block of that stage."""

    attention = 'dsm@after_conv2:last{"rd_ratio": 0.5}'
    legacy = ('dsm@stage:last{"rd_ratio": 0.5}', "nnUNetTrainerDSM_A_stage")


class nnUNetTrainerDSM_B(nnUNetTrainerAttention):
    """DSNet50-B's position: DSM r=1/16 after conv1 (its norm, before the nonlinearity) in every stage; on
    ResEnc in every residual block."""

    attention = 'dsm@after_conv1{"rd_ratio": 0.0625}'


class nnUNetTrainerDSM_stage(nnUNetTrainerAttention):
    """DSM r=1/16 on every stage's output (medattn < 0.2's nnUNetTrainerDSM). The next conv's InstanceNorm
    removes most of DSM's per-channel offset there."""

    attention = 'dsm@stage{"rd_ratio": 0.0625}'


class nnUNetTrainerDSM_A_stage(nnUNetTrainerAttention):
    """DSM r=1/2 on the last stage's output (medattn < 0.2's nnUNetTrainerDSM_A)."""

    attention = 'dsm@stage:last{"rd_ratio": 0.5}'


# --- SNA (parameter-free) ----------------------------------------------------------------


class nnUNetTrainerSNA(nnUNetTrainerAttention):
    """SNA in every stage: plain encoder after the 2nd conv's norm, ResEnc at the end of every residual branch
    before the add (the SNA paper's ResNet position)."""

    attention = "sna"
    legacy = ("sna@stage", "nnUNetTrainerSNA_stage")


class nnUNetTrainerSNAIdentity(nnUNetTrainerAttention):
    """SNA with an identity start: y = x·(1 + γ(w − 1)), γ zero-initialised per channel (C parameters per block),
    so the network equals the stock one at step 0; at SNA's default positions."""

    attention = 'sna{"identity_init": true}'


class nnUNetTrainerSNA_stage(nnUNetTrainerAttention):
    """SNA on every stage's output (medattn < 0.2's nnUNetTrainerSNA)."""

    attention = "sna@stage"


class nnUNetTrainerSNA_stage_first(nnUNetTrainerAttention):
    """SNA once, on the first stage's output (medattn < 0.2's nnUNetTrainerSNA_early)."""

    attention = "sna@stage:first"


class nnUNetTrainerSNA_early(RetiredTrainer):
    """Retired: SNA on the first stage's output is nnUNetTrainerSNA_stage_first."""

    replacement = "nnUNetTrainerSNA_stage_first"
    reason = "the name did not say that SNA sat on the stage output."


class nnUNetTrainerSNA_blocks(RetiredTrainer):
    """Retired: SNA after every conv layer's nonlinearity is not a position of the placement language."""

    replacement = "nnUNetTrainerSNA"
    reason = "SNA after every conv layer's nonlinearity is not a position of the placement language."


# --- DIA (one shared unit per stage) -----------------------------------------------------


class nnUNetTrainerDIA(nnUNetTrainerAttention):
    """One DIA-LSTM unit per stage, shared by its blocks: ResEnc branch ends before the add, plain encoder
    every conv layer's output."""

    attention = "dia"


class nnUNetTrainerDIAIdentity(nnUNetTrainerAttention):
    """DIA-LSTM with an identity start: each block's gate is 1 + γ(h − 1), γ zero-initialised per channel, so the
    network equals the stock one at step 0."""

    attention = 'dia{"identity_init": true}'


class nnUNetTrainerDIALight(nnUNetTrainerAttention):
    """One DIA-LSTM (Light) unit per stage, shared as in nnUNetTrainerDIA."""

    attention = "dia_light"


class nnUNetTrainerDIASE(nnUNetTrainerAttention):
    """One SE unit per stage shared by its blocks (DIA with SE, norms per block), as in nnUNetTrainerDIA."""

    attention = "dia_se"


# --- Baselines the papers compare against ------------------------------------------------


class nnUNetTrainerSE(nnUNetTrainerAttention):
    """SE in every stage: plain encoder after the 2nd conv's norm, ResEnc before every residual add (SENet)."""

    attention = "se"
    legacy = ("se@stage", "nnUNetTrainerSE_stage")


class nnUNetTrainerSE_stage(nnUNetTrainerAttention):
    """SE on every stage's output (medattn < 0.2's nnUNetTrainerSE)."""

    attention = "se@stage"


class nnUNetTrainerECA(nnUNetTrainerAttention):
    """ECA in every stage: plain encoder after the 2nd conv's norm, ResEnc before every residual add."""

    attention = "eca"
    legacy = ("eca@stage", "nnUNetTrainerECA_stage")


class nnUNetTrainerECA_stage(nnUNetTrainerAttention):
    """ECA on every stage's output (medattn < 0.2's nnUNetTrainerECA)."""

    attention = "eca@stage"


class nnUNetTrainerCBAM(nnUNetTrainerAttention):
    """CBAM in every stage: plain encoder after the 2nd conv's norm, ResEnc before every residual add."""

    attention = "cbam"
    legacy = ("cbam@stage", "nnUNetTrainerCBAM_stage")


class nnUNetTrainerCBAM_stage(nnUNetTrainerAttention):
    """CBAM on every stage's output (medattn < 0.2's nnUNetTrainerCBAM)."""

    attention = "cbam@stage"


class nnUNetTrainerGC(nnUNetTrainerAttention):
    """Global context (GCNet) in every stage: plain encoder after the 2nd conv's norm, ResEnc before every
    residual add (GCNet's position)."""

    attention = "gc"
    legacy = ("gc@stage", "nnUNetTrainerGC_stage")


class nnUNetTrainerGC_stage(nnUNetTrainerAttention):
    """Global context on every stage's output (medattn < 0.2's nnUNetTrainerGC); InstanceNorm removes most
    of its additive context there."""

    attention = "gc@stage"


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


class nnUNetTrainerDSM_A_smoke(SmokeSchedule, nnUNetTrainerDSM_A):
    """nnUNetTrainerDSM_A on the smoke schedule (CI trains it on ResEnc M plans)."""


class nnUNetTrainerDSM_B_smoke(SmokeSchedule, nnUNetTrainerDSM_B):
    """nnUNetTrainerDSM_B on the smoke schedule (CI trains it on ResEnc M plans)."""


# --- Benchmark variants (medattn bench nnunet): the BenchSchedule budget, timed steps -----


class nnUNetTrainerStock_bench(BenchSchedule, nnUNetTrainerAttention):
    """Stock nnU-Net network on the benchmark schedule (the reference for the others)."""


class nnUNetTrainerDSM_bench(BenchSchedule, nnUNetTrainerDSM):
    """nnUNetTrainerDSM on the benchmark schedule."""


class nnUNetTrainerSNA_bench(BenchSchedule, nnUNetTrainerSNA):
    """nnUNetTrainerSNA on the benchmark schedule."""


class nnUNetTrainerDIA_bench(BenchSchedule, nnUNetTrainerDIA):
    """nnUNetTrainerDIA on the benchmark schedule."""


# --- Study variants (medattn bench study --engine nnunet): StudySchedule, budget and seed --


class nnUNetTrainerStock_study(StudySchedule, nnUNetTrainerAttention):
    """Stock nnU-Net network on the study schedule (the reference of a study)."""


class nnUNetTrainerDSM_study(StudySchedule, nnUNetTrainerDSM):
    """nnUNetTrainerDSM on the study schedule."""


class nnUNetTrainerSNA_study(StudySchedule, nnUNetTrainerSNA):
    """nnUNetTrainerSNA on the study schedule."""


class nnUNetTrainerSNAIdentity_study(StudySchedule, nnUNetTrainerSNAIdentity):
    """nnUNetTrainerSNAIdentity on the study schedule."""


class nnUNetTrainerDIA_study(StudySchedule, nnUNetTrainerDIA):
    """nnUNetTrainerDIA on the study schedule."""


class nnUNetTrainerDIAIdentity_study(StudySchedule, nnUNetTrainerDIAIdentity):
    """nnUNetTrainerDIAIdentity on the study schedule."""


# --- Demo variants (medattn demo / make demo): DemoSchedule, 6 epochs x 8 iterations ------


class nnUNetTrainerStock_demo(DemoSchedule, nnUNetTrainerAttention):
    """Stock nnU-Net network on the demo schedule (the reference of the demo's comparison)."""


class nnUNetTrainerDSM_demo(DemoSchedule, nnUNetTrainerDSM):
    """nnUNetTrainerDSM on the demo schedule."""
