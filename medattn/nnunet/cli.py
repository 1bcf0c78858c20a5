"""``medattn nnunet``: register medattn's trainers with nnU-Net and list them."""

from __future__ import annotations

import argparse
import shlex

from medattn.safe_loading import TRUST_HELP


def register(subparsers) -> None:
    group = subparsers.add_parser(
        "nnunet",
        help="nnU-Net v2 integration: trainer registration, trainer list, checkpoint adaptation",
        description="nnU-Net v2 integration. medattn's trainers are plain nnUNetTrainer subclasses that "
        "nnU-Net finds through the nnUNet_extTrainer variable, at train and predict time.",
    )
    group.set_defaults(group_parser=group)
    commands = group.add_subparsers(dest="nnunet_command", metavar="COMMAND")

    env = commands.add_parser(
        "env",
        help="print the shell line that sets nnUNet_extTrainer",
        description="Print the shell line that points nnUNet_extTrainer at medattn's trainers, keeping any "
        "folders already listed there.",
        epilog='example:\n  eval "$(medattn nnunet env)"\n  nnUNetv2_train 4 3d_fullres 0 -tr nnUNetTrainerDSM',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    env.set_defaults(handler=_env)

    listing = commands.add_parser(
        "list",
        help="list medattn's trainers and what each inserts where",
        description="List medattn's nnU-Net trainers as a Markdown table.",
    )
    listing.set_defaults(handler=_list)

    adapt = commands.add_parser(
        "adapt-checkpoint",
        help="turn a stock nnU-Net checkpoint into pretrained weights for an attention trainer",
        description="Load a stock nnU-Net checkpoint into the network of an attention trainer (every stock "
        "key is kept; the attention blocks keep their initialisation) and save it in nnU-Net's checkpoint "
        "format, so that nnUNetv2_train -pretrained_weights accepts it for fine-tuning.",
        epilog="example:\n  medattn nnunet adapt-checkpoint nnUNet_results/Dataset004_Hippocampus/"
        "nnUNetTrainer__nnUNetPlans__3d_fullres/fold_0/checkpoint_final.pth \\\n"
        "      --trainer nnUNetTrainerDSM -o dsm_init.pth\n"
        "  nnUNetv2_train 4 3d_fullres 0 -tr nnUNetTrainerDSM -pretrained_weights dsm_init.pth",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    adapt.add_argument("checkpoint", help="stock nnU-Net checkpoint (.pth) holding init_args and network_weights")
    adapt.add_argument("--trainer", required=True, help="medattn trainer name, e.g. nnUNetTrainerDSM")
    adapt.add_argument("-o", "--output", required=True, help="where to write the adapted checkpoint")
    adapt.add_argument("--trust-model", action="store_true", help=TRUST_HELP)
    adapt.set_defaults(handler=_adapt)


def _env(args) -> int:
    from medattn.nnunet import ENV_VAR, ext_trainer_value

    print(f"export {ENV_VAR}={shlex.quote(ext_trainer_value())}")
    return 0


def _list(args) -> int:
    from medattn.nnunet.catalog import trainer_table

    print(trainer_table())
    return 0


def _adapt(args) -> int:
    import sys

    from medattn.nnunet.catalog import adapt_stock_checkpoint

    try:
        missing = adapt_stock_checkpoint(args.checkpoint, args.trainer, args.output, trust=args.trust_model)
    except (ValueError, OSError) as err:
        print(f"medattn nnunet adapt-checkpoint: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}: stock weights plus {len(missing)} freshly initialised attention tensors")
    return 0
