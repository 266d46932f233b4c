"""Command line: ``python -m webui.train demo [--resume] [--vae-steps N] [--diffusion-steps N] ...``.

``demo`` trains the bundled demo model from scratch and ships it to ``models/demo/``; ``ship``
re-exports a finished run; ``adherence`` measures how well a model follows plain prompts and
``sensitivity`` which caption words it reads at all; ``embedding`` learns a textual-inversion word
for a style on the demo model (``models/embeddings/nightstyle.pt``). Run
``python -m webui.train demo --help`` for every option.
"""

from __future__ import annotations

import argparse
import signal
from dataclasses import replace
from pathlib import Path

from webui.train.demo import DemoArchitecture, DemoOptions
from webui.train.diffusion_training import DiffusionTrainConfig
from webui.train.lora import add_lora_parser, run_lora_command
from webui.train.text_pretraining import TextPretrainConfig
from webui.train.vae_training import VAETrainConfig

VAE, TEXT, DIFFUSION = VAETrainConfig(), TextPretrainConfig(), DiffusionTrainConfig()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m webui.train", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="train the demo model (tokenizer, VAE, text encoder, UNet) and ship it")
    demo.add_argument("--run-dir", type=Path, default=Path("train-runs/demo"), help="checkpoints, logs, samples")
    demo.add_argument("--ship-dir", type=Path, default=Path("models/demo"), help="where the final model goes")
    demo.add_argument("--no-ship", action="store_true", help="train only; do not write the ship folder")
    demo.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    demo.add_argument("--fresh", action="store_true", help="delete an existing run folder and start over")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--vae-steps", type=int, default=VAE.steps)
    demo.add_argument("--vae-batch-size", type=int, default=VAE.batch_size)
    demo.add_argument("--vae-crop", type=int, default=VAE.crop, help="VAE training crop size in pixels")
    demo.add_argument("--vae-lr", type=float, default=VAE.lr)
    demo.add_argument(
        "--decoder-steps",
        type=int,
        default=0,
        help="decoder fine-tuning steps after the UNet phase (encoder and latents stay fixed)",
    )
    demo.add_argument("--decoder-lr", type=float, default=5e-4)
    demo.add_argument(
        "--only-decoder",
        action="store_true",
        help="run just the decoder fine-tuning of a run whose VAE phase is done (may run alongside)",
    )
    demo.add_argument(
        "--text-steps",
        type=int,
        default=TEXT.steps,
        help="contrastive pretraining steps of the text encoder before the UNet phase (0 = none)",
    )
    demo.add_argument("--diffusion-steps", type=int, default=DIFFUSION.steps)
    demo.add_argument("--batch-size", type=int, default=DIFFUSION.batch_size, help="diffusion phase batch size")
    demo.add_argument("--lr", type=float, default=DIFFUSION.lr, help="diffusion phase peak learning rate")
    demo.add_argument(
        "--offset-noise",
        type=float,
        default=DIFFUSION.offset_noise,
        help="per-channel constant noise std (makes the caption, not the noise, set the colours)",
    )
    demo.add_argument(
        "--high-noise-weight",
        type=float,
        default=DIFFUSION.high_noise_weight,
        help="largest loss weight of high-noise steps (x0-error weighting below SNR 1)",
    )
    demo.add_argument(
        "--pool-size", type=int, default=DIFFUSION.pool_size, help="scenes encoded once for the diffusion phase"
    )
    demo.add_argument("--image-size", type=int, default=64)
    demo.add_argument(
        "--bf16",
        choices=("vae", "all", "none"),
        default="vae",
        help="bfloat16 autocast for the VAE phase, both phases or none",
    )
    demo.add_argument("--checkpoint-every", type=int, default=250)
    demo.add_argument("--sample-every", type=int, default=500)
    demo.add_argument("--device", type=_device, default="auto", help="auto, cpu, cuda, cuda:N, mps")
    demo.add_argument(
        "--threads", type=int, default=2, help="torch CPU threads; on a shared machine also set OMP_WAIT_POLICY=PASSIVE"
    )
    demo.add_argument("--ship-dtype", choices=("auto", "fp32", "fp16"), default="auto")
    ship = commands.add_parser("ship", help="write a finished run's weights to the ship folder")
    ship.add_argument("--run-dir", type=Path, default=Path("train-runs/demo"))
    ship.add_argument("--ship-dir", type=Path, default=Path("models/demo"))
    ship.add_argument("--ship-dtype", choices=("auto", "fp32", "fp16"), default="auto")
    # The measuring commands load a model the same way: a models.yaml name or a checkpoint path.
    which_model = argparse.ArgumentParser(add_help=False)
    which_model.add_argument(
        "--model", default="demo", help="a models.yaml name, or a checkpoint file/folder (then --size applies)"
    )
    which_model.add_argument("--models-yaml", type=Path, default=Path("models.yaml"))
    which_model.add_argument("--size", type=int, default=64, help="native size of a model given as a path")
    which_model.add_argument("--device", type=_device, default="auto", help="auto, cpu, cuda, cuda:N, mps")
    adherence = commands.add_parser(
        "adherence", parents=[which_model], help="generate from 40 plain prompts and read the images back"
    )
    adherence.add_argument(
        "--prompts",
        choices=("target", "validation"),
        default="target",
        help="the prompts the test holds to the targets, or 40 others",
    )
    adherence.add_argument("--sampler", help="default: the model's recommended sampler (else DPM++ 2M)")
    adherence.add_argument("--steps", type=int, help="default: the model's recommended steps (else 8)")
    adherence.add_argument("--cfg", type=float, help="default: the model's recommended CFG scale (else 5)")
    adherence.add_argument("--limit", type=_positive_int, help="only the first N prompts")
    sensitivity = commands.add_parser(
        "sensitivity",
        parents=[which_model],
        help="how much swapping a shape or colour word changes the noise prediction",
    )
    sensitivity.add_argument("--scenes", type=_positive_int, default=10, help="scenes to average over")
    add_lora_parser(commands)  # LoRA (issue 15)
    from webui.train.embedding import EmbeddingTrainConfig

    ti = EmbeddingTrainConfig()
    embedding = commands.add_parser(
        "embedding", help="textual inversion: learn a word for a style (white on black) on the demo model"
    )
    embedding.add_argument("--model", type=Path, default=Path("models/demo/demo.safetensors"))
    embedding.add_argument("--out", type=Path, help="default: models/embeddings/<word>.pt")
    embedding.add_argument("--word", default=ti.word)
    embedding.add_argument("--vectors", type=_positive_int, default=ti.vectors)
    embedding.add_argument("--steps", type=_positive_int, default=ti.steps)
    embedding.add_argument("--batch-size", type=_positive_int, default=ti.batch_size)
    embedding.add_argument("--lr", type=float, default=ti.lr)
    embedding.add_argument("--seed", type=int, default=ti.seed)
    embedding.add_argument("--no-measure", action="store_true", help="skip generating images to measure the effect")
    return parser


def _device(text: str) -> str:
    from webui.devices import parse_device

    try:
        return parse_device(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def load_measured_model(args: argparse.Namespace):
    """The model named by ``--model`` and its models.yaml entry (None for a path); exits with a one-line reason."""
    from webui.devices import pick_device
    from webui.models.download import fetch_model_file
    from webui.models.loading import load_model
    from webui.models.registry import load_registry

    registry = load_registry(args.models_yaml) if args.models_yaml.is_file() else None
    entry = registry.get(args.model) if registry is not None and args.model in registry.names else None
    try:
        if entry is not None:  # a hub entry is downloaded on first use, as the app does
            path, tokenizer, size = fetch_model_file(entry), entry.tokenizer, entry.native_size
        else:
            path, tokenizer, size = Path(args.model), None, (args.size, args.size)
        model = load_model(
            path, tokenizer=tokenizer, native_size=size, device=pick_device(args.device), compute_hash=False
        )
    except ValueError as error:  # CheckpointError and its kinds: the message names the problem
        known = ", ".join(registry.names) if registry is not None else f"none ({args.models_yaml} not found)"
        raise SystemExit(f"cannot load model {args.model!r}: {error}\nmodels.yaml names: {known}") from None
    return model, entry


def run_adherence(args: argparse.Namespace) -> None:
    from webui.sampling import create_sampler_registry
    from webui.train.adherence import measure_adherence, target_prompts, validation_prompts

    model, entry = load_measured_model(args)
    sampler, scheduler, steps, cfg = (
        (entry.sampler, entry.scheduler, entry.steps, entry.cfg_scale) if entry is not None else (None,) * 4
    )
    prompts = target_prompts() if args.prompts == "target" else validation_prompts()
    report = measure_adherence(
        model,
        create_sampler_registry(),
        prompts[: args.limit],
        sampler=args.sampler or sampler or "DPM++ 2M",
        steps=args.steps or steps or 8,
        cfg_scale=args.cfg or cfg or 5.0,
        scheduler=scheduler or "Automatic",
    )
    print(report.table())


def run_sensitivity(args: argparse.Namespace) -> None:
    from webui.train.sensitivity import measure_word_sensitivity

    model, _ = load_measured_model(args)
    print(measure_word_sensitivity(model, scenes=args.scenes).table())


def options_from_args(args: argparse.Namespace) -> DemoOptions:
    options = DemoOptions()
    architecture = replace(DemoArchitecture(), image_size=args.image_size)
    return replace(
        options,
        run_dir=args.run_dir,
        ship_dir=None if args.no_ship else args.ship_dir,
        decoder=replace(
            options.decoder,
            steps=args.decoder_steps,
            batch_size=args.vae_batch_size,
            crop=args.vae_crop,
            lr=args.decoder_lr,
            image_size=args.image_size,
            bf16=args.bf16 in ("vae", "all"),
            seed=args.seed,
        ),
        vae=replace(
            options.vae,
            steps=args.vae_steps,
            batch_size=args.vae_batch_size,
            crop=args.vae_crop,
            lr=args.vae_lr,
            image_size=args.image_size,
            bf16=args.bf16 in ("vae", "all"),
            seed=args.seed,
        ),
        text=replace(options.text, steps=args.text_steps, seed=args.seed),
        diffusion=replace(
            options.diffusion,
            steps=args.diffusion_steps,
            batch_size=args.batch_size,
            lr=args.lr,
            pool_size=args.pool_size,
            offset_noise=args.offset_noise,
            image_size=args.image_size,
            high_noise_weight=args.high_noise_weight,
            bf16=args.bf16 == "all",
            seed=args.seed,
        ),
        architecture=architecture,
        checkpoint_every=args.checkpoint_every,
        sample_every=args.sample_every,
        resume=args.resume,
        fresh=args.fresh,
        device=args.device,
        threads=args.threads,
        ship_dtype=args.ship_dtype,
    )


def run_embedding(args: argparse.Namespace) -> None:
    from webui.train.embedding import EmbeddingTrainConfig, run

    config = EmbeddingTrainConfig(
        word=args.word, vectors=args.vectors, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed
    )
    run(args.model, args.out or Path("models/embeddings") / f"{args.word}.pt", config, measure=not args.no_measure)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "lora":  # LoRA (issue 15)
        return run_lora_command(args)
    measures = {"adherence": run_adherence, "sensitivity": run_sensitivity, "embedding": run_embedding}
    if args.command in measures:
        measures[args.command](args)
        return 0
    # `kill` (SIGTERM) stops a background run like Ctrl-C: the current step is checkpointed first.
    signal.signal(signal.SIGTERM, _interrupt)
    if args.command == "ship":
        from webui.train.demo import ship

        ship(args.run_dir, args.ship_dir, dtype=args.ship_dtype)
        return 0
    from webui.devices import pick_device
    from webui.train.demo import run_decoder_phase, run_demo

    options = options_from_args(args)
    try:
        if args.only_decoder:
            import torch

            torch.set_num_threads(options.threads or torch.get_num_threads())
            run_decoder_phase(options, pick_device(options.device))
        else:
            run_demo(options)
    except KeyboardInterrupt:
        print("interrupted: the last checkpoint is saved; continue with --resume", flush=True)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
