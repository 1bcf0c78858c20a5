"""Run as a script by test_ddp: two DDP training steps on CPU (gloo) of a small nnU-Net
PlainConvUNet holding every block and a shared DIA unit, in 2 processes. DDP fails when a
parameter gets no gradient in a step, so two full steps are the check. Rank 0 writes a
JSON report to the path given as the first argument."""

import json
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from medattn.nnunet.network import insert_attention

PLACEMENTS = [
    "dsm@after_conv2:0",
    "sna@stage:1",
    "gc@after_conv2:2",
    "cbam@stage:3",
    "se@after_conv1:0,1",
    "eca@after_conv1:2,3",
]


def build_network() -> nn.Module:
    torch.manual_seed(0)
    network = PlainConvUNet(
        input_channels=1, n_stages=4, features_per_stage=[8, 16, 32, 32], conv_op=nn.Conv3d,
        kernel_sizes=3, strides=[1, 2, 2, 2], n_conv_per_stage=2, num_classes=3,
        n_conv_per_stage_decoder=1, conv_bias=True, norm_op=nn.InstanceNorm3d,
        norm_op_kwargs={"affine": True}, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True},
        deep_supervision=True,
    )
    for placement in PLACEMENTS:
        insert_attention(network, placement)
    insert_attention(network, "dia")
    return network


def worker(rank: int, world_size: int, init_file: str, report_path: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    model = DistributedDataParallel(build_network())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    generator = torch.Generator().manual_seed(rank)
    for _ in range(2):
        x = torch.randn(2, 1, 16, 16, 16, generator=generator)
        target = torch.randint(0, 3, (2, 16, 16, 16), generator=generator)
        outputs = model(x)
        # Like nnU-Net's deep-supervision loss, every output head contributes.
        loss = nn.functional.cross_entropy(outputs[0], target) + sum(o.square().mean() for o in outputs[1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(world_size)]
    dist.all_gather(gathered, flat)
    if rank == 0:
        report = {
            "max_rank_difference": max((g - gathered[0]).abs().max().item() for g in gathered),
            "parameters": flat.numel(),
        }
        with open(report_path, "w") as handle:
            json.dump(report, handle)
    # Both ranks leave together, and without running gloo's C++ teardown: on 2 busy cores its
    # destructor sometimes aborts a rank ("terminate called without an active exception",
    # SIGABRT) after every step has finished, which says nothing about DDP and the blocks.
    dist.barrier()
    os._exit(0)


if __name__ == "__main__":
    report_file, init_file = sys.argv[1], sys.argv[2]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(worker, args=(2, init_file, report_file), nprocs=2, join=True)
