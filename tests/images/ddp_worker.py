"""Run under torchrun by test_distributed.py: train each config of argv[1] (a JSON list),
then save this rank's weights and summary into argv[2]."""

import json
import os
import sys

import torch

from medattn.images.training import ImageTrainConfig, ImageTrainer

if __name__ == "__main__":
    configs, dump = json.loads(sys.argv[1]), sys.argv[2]
    rank = os.environ["RANK"]
    torch.distributed.init_process_group("gloo")  # one group for every run (the trainer leaves it open)
    for index, config in enumerate(configs):
        trainer = ImageTrainer(ImageTrainConfig(**config))
        summary = trainer.run()
        torch.save({"state": trainer.model.state_dict(), "summary": summary}, f"{dump}/run{index}_rank{rank}.pt")
