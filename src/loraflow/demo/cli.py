"""`loraflow demo dataset|overfit-data|train|eval`: the procedural shapes data sets, the demo model's own
training and the prompt-adherence check."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="procedural shapes data set and prompt-adherence evaluation")
    sub = p.add_subparsers(dest="demo_command", metavar="ACTION", required=True)
    ds = sub.add_parser("dataset", help="write shapes images + captions (train/metadata.csv) and the held-out list")
    ds.add_argument("--out", required=True)
    ds.add_argument("--n", type=int, default=2000, help="number of images (default: 2000)")
    ds.add_argument("--size", type=int, default=64, help="image side in pixels (default: 64)")
    ds.add_argument("--seed", type=int, default=0)
    ds.add_argument("--lang", choices=("en", "zh", "both"), default="both", help="caption language (default: both)")
    ds.add_argument("--style", choices=("plain", "striped"), default="plain",
                    help="striped: the new style a demo LoRA learns")
    ds.add_argument("--style-in-caption", action="store_true",
                    help="put the style word in the captions (default: content only, so the LoRA styles every prompt)")
    ds.set_defaults(func=run_dataset)
    of = sub.add_parser("overfit-data", help="a style set too small for its LoRA: the demo overfit run's data "
                                             "(examples/train/demo-overfit.yaml)")
    of.add_argument("--out", required=True, help="folder: OUT/train and OUT/held_out")
    of.add_argument("--seed", type=int, default=0)
    of.set_defaults(func=run_overfit_data)
    tr = sub.add_parser("train", help="train the demo model (SDXL family, small) from scratch on the shapes data")
    tr.add_argument("--out", required=True, help="diffusers folder to write")
    tr.add_argument("--images", type=int, default=4000)
    tr.add_argument("--vae-steps", type=int, default=1200, help="stage 1: VAE steps (default: 1200)")
    tr.add_argument("--decoder-steps", type=int, default=300,
                    help="stage 1b: decoder-only steps on plain + striped shapes (default: 300)")
    tr.add_argument("--unet-steps", type=int, default=7000, help="stage 2: UNet steps (default: 7000)")
    tr.add_argument("--batch-size", type=int, default=32)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--threads", type=int, default=2)
    tr.add_argument("--vae-from", help="reuse the VAE folder of an earlier run (skips stage 1)")
    tr.set_defaults(func=run_train)
    ev = sub.add_parser("eval", help="colour/shape/position accuracy of a model on held-out prompts")
    ev.add_argument("--model", default="demo", help="model to evaluate (default: the built-in demo model)")
    ev.add_argument("--lora", action="append", default=[], help="LoRA file[:weight], repeatable")
    ev.add_argument("--n", type=int, default=40)
    ev.add_argument("--steps", type=int, default=20)
    ev.add_argument("--size", type=int, default=64)
    ev.add_argument("--lang", choices=("en", "zh"), default="en")
    ev.add_argument("--device", default="auto")
    ev.set_defaults(func=run_eval)


def run_dataset(args: argparse.Namespace) -> int:
    from loraflow.demo.dataset import write_dataset

    out = write_dataset(args.out, n=args.n, size=args.size, seed=args.seed, lang=args.lang, style=args.style,
                        style_in_caption=args.style_in_caption)
    print(f"{args.n} images -> {out / 'train' / 'metadata.csv'}; held-out scenes in {out / 'recipe.json'}")
    return 0


def run_overfit_data(args: argparse.Namespace) -> int:
    from loraflow.demo.dataset import write_overfit_dataset

    out = write_overfit_dataset(args.out, seed=args.seed)
    print(f"training pictures -> {out / 'train'}; held-out pictures -> {out / 'held_out'}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    from loraflow.demo.train_model import DemoTrainConfig, train_demo_model

    train_demo_model(DemoTrainConfig(out=args.out, images=args.images, vae_steps=args.vae_steps,
                                     decoder_steps=args.decoder_steps,
                                     unet_steps=args.unet_steps, batch_size=args.batch_size, seed=args.seed,
                                     threads=args.threads, vae_from=args.vae_from))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from loraflow.demo.evaluate import evaluate
    from loraflow.generate.session import GenerationSession
    from loraflow.models.loading import load_pipeline

    session = GenerationSession(load_pipeline(args.model, device=args.device))
    scores = evaluate(session, n=args.n, steps=args.steps, size=args.size, lang=args.lang, lora=args.lora)
    print("  ".join(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}" for k, v in scores.items()))
    return 0
