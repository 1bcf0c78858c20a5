"""Insert attention blocks into an already-built network, without changing its stock keys.

Every engine (nnU-Net's dynamic-network-architectures encoders, MONAI networks, ResNet
backbones) builds the stock network first and then calls the two functions here:

- :func:`attach_after` hangs a per-feature-map block (DSM, SNA, SE, ...) on a host module:
  the block becomes the child ``host.<name>`` and a forward hook replaces the host's output
  ``y`` by ``block(y)``.
- :func:`attach_shared_unit` hangs one shared DIA unit on a stage and applies it to the
  output of each block of that stage, threading the unit's recurrent state from block to
  block within one forward pass.

Why hooks instead of wrapping: wrapping ``stage`` in ``nn.Sequential(stage, block)`` renames
every stock parameter (``stages.0.convs...`` becomes ``stages.0.0.convs...``), so stock
checkpoints no longer load, and code that indexes containers (nnU-Net's
``compute_conv_feature_map_size`` reads ``stage[-1]``) sees a foreign module. Appending a
child to a module that is not an ``nn.Sequential`` adds keys (``stages.0.0.attention.*``)
and leaves the stock ones and the container layout untouched, so a stock state dict loads
with ``strict=False`` and reports only the new keys as missing.

Hooks are plain callable objects (picklable, deep-copyable) and are traced by
``torch.compile``.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from torch import nn

__all__ = [
    "attach_after",
    "attach_shared_unit",
    "attached_blocks",
    "convert_sync_batchnorm",
    "resolve_stage_indices",
]


class _ApplyChild:
    """Forward hook: ``output -> module.<name>(output)``."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, module: nn.Module, args, output):
        return getattr(module, self.name)(output)


def hook_host(module: nn.Module) -> nn.Module:
    """The module a block is attached to when asked to follow ``module``.

    An ``nn.Sequential`` would run any new child as part of its forward and would change
    what ``container[-1]`` returns, so blocks hang on its last element instead (recursively);
    the hook on the last element fires exactly where the container's output is produced.
    """
    while isinstance(module, nn.Sequential) and len(module) > 0:
        module = module[-1]
    return module


def attach_after(host: nn.Module, block: nn.Module, name: str = "attention") -> nn.Module:
    """Apply ``block`` to the output of ``host`` from now on.

    Args:
        host: a module of a built network; if it is an ``nn.Sequential``, its last
            element (recursively) receives the block, see :func:`hook_host`.
        block: a shape-preserving module, e.g. ``medattn.blocks.create("dsm", C, 3)``.
        name: attribute name of the block on the host; its parameters appear in the state
            dict as ``<host path>.<name>.*``.

    Returns:
        The module the block was attached to.

    Raises:
        ValueError: if the host already has an attribute called ``name``.
    """
    target = hook_host(host)
    if hasattr(target, name):
        raise ValueError(f"{type(target).__name__} already has an attribute {name!r}; choose another name")
    target.add_module(name, block)
    target.register_forward_hook(_ApplyChild(name))
    return target


class _SharedUnitRun:
    """The state of one shared unit during one forward pass of its stage.

    The stage's pre-hook clears the state, each block's hook advances it, and the stage's
    post-hook clears it again, so nothing survives a forward call (or an exception in it:
    the next pre-hook clears it regardless). ``owner`` is the module holding the unit.
    """

    def __init__(self, name: str, owner: nn.Module):
        self.name = name
        self.owner = owner
        self.state = None

    @property
    def unit(self) -> nn.Module:
        return getattr(self.owner, self.name)

    def start(self, module, args):
        self.state = None

    def finish(self, module, args, output):
        self.state = None


class _SharedUnitStep:
    """Forward hook on one block of a stage: ``y, state = unit(y, state)``."""

    def __init__(self, run: _SharedUnitRun):
        self.run = run

    def __call__(self, module, args, output):
        output, self.run.state = self.run.unit(output, self.run.state)
        return output


def attach_shared_unit(
    stage: nn.Module,
    block_outputs: Sequence[nn.Module],
    unit: nn.Module,
    name: str = "dia",
    owner: nn.Module | None = None,
) -> nn.Module:
    """Share one DIA unit across the blocks of a stage (DIA paper, section 4.2.1).

    ``unit`` follows the DIA protocol ``unit(x, state) -> (x * attention, new_state)`` with
    ``state=None`` at the first block (:mod:`medattn.blocks.dia`). Its state starts at
    ``None`` on every forward pass of ``stage`` and flows through ``block_outputs`` in the
    order given, which must be the order in which they run.

    The state is reset by hooks on ``stage`` itself, so any module whose forward runs the
    blocks works as a stage, an ``nn.Sequential`` of blocks included (MONAI's SegResNet and
    BasicUNet stages, torchvision's ResNet layers): hooks leave a container's forward and
    indexing unchanged. Only the unit's parameters need a non-Sequential home.

    Args:
        stage: the module whose forward runs all ``block_outputs``.
        block_outputs: for each block, the module whose output is recalibrated: the
            residual branch's last conv (before the residual add) for residual blocks, or
            the whole conv block for plain stages.
        unit: the shared unit.
        name: attribute name of the unit on its owner; its parameters appear once in the
            state dict, as ``<owner path>.<name>.*``.
        owner: the module that holds the unit. Default: ``stage``, or for an
            ``nn.Sequential`` stage its last element (recursively, see :func:`hook_host`),
            the same place :func:`attach_after` would put a block.

    Returns:
        The module that owns the unit.

    Raises:
        ValueError: if ``block_outputs`` is empty, ``owner`` is an ``nn.Sequential`` or
            the name is taken.
    """
    if len(block_outputs) == 0:
        raise ValueError("block_outputs is empty: a shared unit needs at least one block")
    owner = hook_host(stage) if owner is None else owner
    if isinstance(owner, nn.Sequential):
        raise ValueError("owner must not be an nn.Sequential (it would run the unit as one of its layers)")
    if hasattr(owner, name):
        raise ValueError(f"{type(owner).__name__} already has an attribute {name!r}; choose another name")
    owner.add_module(name, unit)
    run = _SharedUnitRun(name, owner)
    stage.register_forward_pre_hook(run.start)
    stage.register_forward_hook(run.finish)
    for block in block_outputs:
        block.register_forward_hook(_SharedUnitStep(run))
    return owner


def attached_blocks(network: nn.Module) -> dict[str, nn.Module]:
    """Every block inserted by this module, by qualified name (for logging and tests)."""
    paths = {id(module): module_name for module_name, module in network.named_modules()}
    found = {}
    for module_name, module in network.named_modules():
        for hook in module._forward_hooks.values():
            if isinstance(hook, _ApplyChild):
                found[f"{module_name}.{hook.name}".lstrip(".")] = getattr(module, hook.name)
        for hook in module._forward_pre_hooks.values():
            run = getattr(hook, "__self__", None)
            if isinstance(run, _SharedUnitRun) and id(run.owner) in paths:
                found[f"{paths[id(run.owner)]}.{run.name}".lstrip(".")] = run.unit
    return found


def resolve_stage_indices(stages: str | int | Iterable[int] | None, n_stages: int) -> list[int]:
    """Turn a placement spec into sorted, unique, non-negative stage indices.

    Args:
        stages: "all" or None (every stage), "last", "first", an int or a list of ints
            (negative ints count from the end, like Python indexing).
        n_stages: number of stages in the network.

    Raises:
        ValueError: for an unknown spec or an index out of range, naming it.
    """
    if stages is None or stages == "all":
        return list(range(n_stages))
    if stages == "last":
        return [n_stages - 1]
    if stages == "first":
        return [0]
    if isinstance(stages, str):
        raise ValueError(f"unknown stage spec {stages!r}; use 'all', 'first', 'last' or stage indices")
    indices = [stages] if isinstance(stages, int) else list(stages)
    resolved = set()
    for index in indices:
        if isinstance(index, bool) or not isinstance(index, int) or not -n_stages <= index < n_stages:
            raise ValueError(f"stage index {index!r} out of range for a network with {n_stages} stages")
        resolved.add(index % n_stages)
    return sorted(resolved)


def convert_sync_batchnorm(network: nn.Module, process_group=None) -> nn.Module:
    """``nn.SyncBatchNorm.convert_sync_batchnorm`` that keeps the attached blocks working.

    torch's converter replaces every BatchNorm by a new module: it carries the children over
    (an attached block stays ``bn.attention``) but not the forward hooks, so every block
    hung on a norm (after a conv, before the residual add) would silently stop running.
    The hooks are re-registered on the new modules, at the same qualified names.
    """
    hooks = {name: (list(module._forward_pre_hooks.values()), list(module._forward_hooks.values()))
             for name, module in network.named_modules()
             if isinstance(module, nn.modules.batchnorm._BatchNorm) and (module._forward_hooks or module._forward_pre_hooks)}
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(network, process_group)
    for name, (pre_hooks, post_hooks) in hooks.items():
        module = converted.get_submodule(name)
        for hook in pre_hooks:
            module.register_forward_pre_hook(hook)
        for hook in post_hooks:
            module.register_forward_hook(hook)
    return converted
