"""``vispre export RUN_OR_CHECKPOINT OUT_DIR``: an encoder folder that plain timm loads."""

from __future__ import annotations

import argparse


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "export", help="export a pretrained encoder as a timm folder (config.json + model.safetensors)",
        description="Write the encoder of a run's newest checkpoint (or of the given checkpoint directory) "
                    "to OUT_DIR: config.json and model.safetensors that timm.create_model('local-dir:OUT_DIR', "
                    "pretrained=True) loads without vispre, and a model card (README.md) with the recipe, "
                    "data, steps and scores.")
    parser.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT",
                        help="a run directory (train.output_dir) or one checkpoint-XXXXXXXX directory")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder to write (an earlier export there is replaced)")
    parser.add_argument("--which", choices=("target", "online"), default="target",
                        help="the EMA / target (teacher) network (default) or the online (student) one")
    parser.add_argument("--onnx", action="store_true",
                        help="also write model.onnx (pooled features), checked with onnxruntime when installed")
    parser.add_argument("--dynamic-size", action="store_true",
                        help="with --onnx: any image height and width (torch.export; needs onnxscript), checked at "
                             "the input size and twice it")
    parser.add_argument("--license", default=None,
                        help="the weights' licence on the model card, a Hub licence id (e.g. apache-2.0, cc-by-4.0); "
                             "default: 'other' (unspecified)")
    parser.add_argument("--dataset", action="append", default=None, metavar="HUB_ID",
                        help="a Hub dataset the encoder was trained on, for the card's metadata (repeatable)")
    parser.add_argument("--push-to-hub", metavar="REPO", default=None,
                        help="upload the folder to this Hugging Face Hub model repo (needs huggingface_hub, a login)")
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create a private repo")
    parser.add_argument("--dry-run", action="store_true", help="with --push-to-hub: list the files, upload nothing")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ..export.hub import push_to_hub
    from ..export.write import export

    if args.dry_run and not args.push_to_hub:
        raise SystemExit("vispre export: --dry-run only applies to --push-to-hub")
    if args.dynamic_size and not args.onnx:
        raise SystemExit("vispre export: --dynamic-size only applies to --onnx")
    # a wrong path, a corrupt or non-finite checkpoint: vispre's main prints the message, exit status 2
    out = export(args.checkpoint, args.out_dir, which=args.which, onnx=args.onnx, dynamic_size=args.dynamic_size,
                 license=args.license, datasets=args.dataset)
    print(f"exported the {args.which} encoder to {out}\n"
          f"  timm.create_model('local-dir:{out.resolve()}', pretrained=True)")
    if (out / "open_clip_config.json").is_file():  # a CLIP run: both towers
        print(f"  open_clip.create_model_and_transforms('local-dir:{out.resolve()}')")
    if args.push_to_hub:
        files = push_to_hub(out, args.push_to_hub, dry_run=args.dry_run, private=args.private)
        verb = "would upload" if args.dry_run else "uploaded"
        print(f"{verb} to https://huggingface.co/{args.push_to_hub}:")
        for name, size in files:
            print(f"  {name} ({size:,} bytes)")
    return 0
