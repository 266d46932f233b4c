"""Train the bundled demo model end to end, and ship it as an SD 1.x single file.

``python -m webui.train demo`` runs, in a run folder (``train-runs/demo`` by default):

1. the tokenizer: a CLIP BPE vocabulary learnt from the captions (:mod:`webui.train.tokenizer`);
2. the VAE phase (:mod:`webui.train.vae_training`), then the latent rescaling to 0.18215;
3. the latent pool: scenes rendered and encoded once by the frozen VAE;
4. the text phase: CLIP-style contrastive pretraining of the text encoder against the pool's
   latents (:mod:`webui.train.text_pretraining`), as SD 1.x starts from a pretrained CLIP;
5. the diffusion phase: the UNet, with the pretrained text encoder frozen (:mod:`webui.train.diffusion_training`),
   with sample grids in ``samples/``;
6. shipping: the EMA weights written with :func:`webui.models.checkpoint.save_single_file` plus the
   tokenizer folder, into ``models/demo/``.

Every phase checkpoints to the run folder; ``--resume`` continues from the last checkpoint and,
because each step's data and noise depend only on (seed, step), it reaches the same weights as an
uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from webui.devices import pick_device
from webui.models.unet import UNetConfig, UNetModel
from webui.models.vae import AutoencoderKL, VAEConfig
from webui.train import data
from webui.train.checkpointing import load_state, save_state
from webui.train.diffusion_training import (
    DiffusionTrainConfig,
    LatentPool,
    build_pool,
    make_ema,
    pool_scenes,
    train_diffusion_steps,
    zero_init_unet,
)
from webui.train.text_pretraining import (
    ContrastiveTowers,
    TextPretrainConfig,
    shape_separation,
    train_text_steps,
)
from webui.train.tokenizer import load_tokenizer, write_tokenizer
from webui.train.vae_training import (
    VAETrainConfig,
    decoder_parameters,
    encode_images,
    normalize_latents,
    reconstruction_psnr,
    start_nearly_deterministic,
    train_vae_steps,
)

SHIP_BUDGET_BYTES = 30 * 1024 * 1024
CHECKPOINT_NAME = "demo.safetensors"


@dataclass(frozen=True)
class DemoArchitecture:
    """Network sizes of the demo model: SD 1.x's classes, scaled down.

    UNet heads are 8 and CLIP heads are ``width // 64``: the rules by which the app's loader
    rebuilds a model from tensor shapes (see :mod:`webui.models.checkpoint`).
    """

    image_size: int = 64
    # 64 channels at full resolution: with GroupNorm's 32 groups, 32 channels would be one channel
    # per group, and the last norm (norm_out) would erase every flat colour. Three levels, i.e. a
    # 4x (not SD's 8x) downscale: a 16x16x4 latent keeps the shapes' edges (28 dB PSNR within the
    # time budget, where an 8x8 latent stalled near 18 dB) and gives the UNet shapes several latent
    # pixels wide. The pipeline takes the factor from the VAE's config, as diffusers does.
    vae: VAEConfig = VAEConfig(ch=64, ch_mult=(1, 2, 2), num_res_blocks=1)
    unet_channels: int = 64
    unet_mult: tuple[int, ...] = (1, 2, 2)
    unet_res_blocks: int = 1
    unet_attention: tuple[int, ...] = (2, 4)
    text_width: int = 128
    text_layers: int = 3

    def unet_config(self) -> UNetConfig:
        return UNetConfig(
            model_channels=self.unet_channels,
            channel_mult=self.unet_mult,
            num_res_blocks=self.unet_res_blocks,
            attention_resolutions=self.unet_attention,
            num_heads=8,
            context_dim=self.text_width,
        )

    def text_config(self, tokenizer):
        from transformers import CLIPTextConfig

        return CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=self.text_width,
            intermediate_size=4 * self.text_width,
            num_hidden_layers=self.text_layers,
            num_attention_heads=max(1, self.text_width // 64),
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )


@dataclass
class DemoOptions:
    run_dir: Path = Path("train-runs/demo")
    ship_dir: Path | None = Path("models/demo")
    vae: VAETrainConfig = field(default_factory=VAETrainConfig)
    text: TextPretrainConfig = field(default_factory=TextPretrainConfig)
    # Decoder fine-tuning after the UNet phase (steps 0 = none); the latent space stays as it was.
    decoder: VAETrainConfig = field(default_factory=lambda: VAETrainConfig(steps=0, lr=5e-4, shape_weight=4.0))
    diffusion: DiffusionTrainConfig = field(default_factory=DiffusionTrainConfig)
    architecture: DemoArchitecture = field(default_factory=DemoArchitecture)
    checkpoint_every: int = 250
    sample_every: int = 500
    resume: bool = False
    fresh: bool = False
    device: str = "auto"
    threads: int | None = 2
    ship_dtype: str = "auto"


SaveFunction = Callable[[int, float, float | None], None]


class Phase:
    """Progress bar, loss log and periodic checkpoints of one training phase: the per-step callback."""

    def __init__(
        self, name: str, run_dir: Path, total: int, start: int, elapsed: float, every: int, save: SaveFunction
    ):
        self.name, self.run_dir, self.every, self.save = name, run_dir, every, save
        self.done = start
        self.elapsed0 = elapsed
        self.t0 = time.perf_counter()
        self.smooth: float | None = None
        self.bar = tqdm(total=total, initial=start, desc=name, mininterval=10.0, smoothing=0.05)
        self.log = (run_dir / "log.jsonl").open("a", encoding="utf-8")

    @property
    def elapsed(self) -> float:
        return self.elapsed0 + time.perf_counter() - self.t0

    def __call__(self, step: int, losses: dict[str, float]) -> None:
        self.done = step + 1
        loss = losses["loss"]
        self.smooth = loss if self.smooth is None else 0.98 * self.smooth + 0.02 * loss
        self.bar.set_postfix(loss=f"{self.smooth:.4f}", refresh=False)
        self.bar.update(1)
        if step % 10 == 0:
            record = {"phase": self.name, "step": step, "elapsed": round(self.elapsed, 1), **losses}
            self.log.write(json.dumps(record) + "\n")
            self.log.flush()
        if self.done % self.every == 0:
            self.save(self.done, self.elapsed, self.smooth)

    def close(self) -> None:
        self.bar.close()
        self.log.close()


class PhaseRun:
    """Resume, train and save one phase: ``resume()``, then ``train(loop)``, then ``finish(progress, **results)``.

    Args:
        name: the phase: the progress bar's label, the log's ``phase`` and the state file's stem.
        run_dir: the run folder.
        steps: the phase's total number of steps.
        modules: state-file key -> module; all are saved, and restored on resume.
        optimizer: saved, and restored when a resumed phase trains on.
        config: the phase's config dataclass, stored for the record.
        checkpoint_every: save every this many steps.
        after_save: called after every save with ``(step, done)``, e.g. to draw sample images.
        extend_when_done: whether a finished phase trains on when asked for more steps than it ran.
    """

    def __init__(
        self,
        name: str,
        run_dir: Path,
        steps: int,
        modules: Mapping[str, nn.Module],
        optimizer: torch.optim.Optimizer,
        config: Any,
        *,
        checkpoint_every: int,
        after_save: Callable[[int, bool], None] | None = None,
        extend_when_done: bool = True,
    ):
        self.name, self.run_dir, self.steps = name, run_dir, steps
        self.modules, self.optimizer, self.config = dict(modules), optimizer, config
        self.checkpoint_every, self.after_save, self.extend_when_done = checkpoint_every, after_save, extend_when_done
        self.start, self.elapsed = 0, 0.0

    @property
    def path(self) -> Path:
        return self.run_dir / f"{self.name}.pt"

    def resume(self) -> dict[str, Any] | None:
        """Load the last checkpoint into the modules (and the optimizer, to train on), if there is one.

        Returns the saved state when the phase had finished, i.e. when there is nothing left to train.
        """
        state = load_state(self.path)
        if state is None:
            return None
        for key, module in self.modules.items():
            module.load_state_dict(state[key])
        if state["done"] and (state["step"] >= self.steps or not self.extend_when_done):
            return state
        self.optimizer.load_state_dict(state["optimizer"])
        self.start, self.elapsed = state["step"], state["elapsed"]
        return None

    def save(self, step: int, seconds: float, loss: float | None, done: bool = False, **results: float) -> None:
        save_state(
            self.path,
            {
                **{key: module.state_dict() for key, module in self.modules.items()},
                "optimizer": self.optimizer.state_dict(),
                "step": step,
                "elapsed": seconds,
                "loss": loss,
                "done": done,
                **results,
                "config": asdict(self.config),
            },
        )
        if self.after_save is not None:
            self.after_save(step, done)

    def train(self, loop: Callable[[int, Phase], None]) -> Phase:
        """Run ``loop(start_step, progress)``; an interrupt (Ctrl-C; SIGTERM via the CLI) saves the last step first."""
        progress = Phase(
            self.name, self.run_dir, self.steps, self.start, self.elapsed, self.checkpoint_every, self.save
        )
        try:
            loop(self.start, progress)
        except KeyboardInterrupt:
            self.save(progress.done, progress.elapsed, progress.smooth)
            raise
        finally:
            progress.close()
        return progress

    def finish(self, progress: Phase, **results: float) -> None:
        """Save the finished phase with its results (e.g. ``psnr=...``)."""
        self.save(self.steps, progress.elapsed, progress.smooth, done=True, **results)


def _check_run_dir(options: DemoOptions) -> None:
    run_dir = options.run_dir
    existing = [p for p in ("vae.pt", "text.pt", "diffusion.pt", "decoder.pt") if (run_dir / p).exists()]
    if existing and not options.resume:
        if not options.fresh:
            raise SystemExit(
                f"{run_dir} already holds {', '.join(existing)}: pass --resume to continue it or --fresh to start over"
            )
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)


def build_text_model(architecture: DemoArchitecture, tokenizer):
    from transformers import CLIPTextModel

    return CLIPTextModel(architecture.text_config(tokenizer))


def run_vae_phase(options: DemoOptions, device: torch.device) -> AutoencoderKL:
    config, run_dir = options.vae, options.run_dir
    torch.manual_seed(config.seed)
    vae = AutoencoderKL(options.architecture.vae)
    start_nearly_deterministic(vae)
    vae = vae.to(device)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.lr, weight_decay=0.0, betas=(0.9, 0.99))
    # A finished VAE stays finished: its latents were normalised and the pool was encoded with them.
    run = PhaseRun(
        "vae",
        run_dir,
        config.steps,
        {"model": vae},
        optimizer,
        config,
        checkpoint_every=options.checkpoint_every,
        extend_when_done=False,
    )
    if (state := run.resume()) is not None:
        print(f"vae: done earlier ({state['step']} steps, PSNR {state['psnr']:.2f} dB)", flush=True)
        return vae.eval()
    progress = run.train(lambda start, on_step: train_vae_steps(vae, optimizer, config, start, device, on_step))
    images, _ = data.sample_batch(np.random.default_rng([config.seed, 7]), 256, config.image_size)
    means, _ = encode_images(vae, images, device)
    normalize_latents(vae, means)
    value = reconstruction_psnr(vae, config.seed, 64, device, config.image_size)
    print(
        f"vae: {config.steps} steps in {progress.elapsed:.0f} s, loss {progress.smooth:.4f}, PSNR {value:.2f} dB",
        flush=True,
    )
    run.finish(progress, psnr=value)
    return vae


def run_decoder_phase(options: DemoOptions, device: torch.device) -> AutoencoderKL:
    """Fine-tune the finished VAE's decoder on its frozen encoder's latents; saved to ``decoder.pt``."""
    config, run_dir = options.decoder, options.run_dir
    vae_state = load_state(run_dir / "vae.pt")
    if vae_state is None or not vae_state["done"]:
        raise SystemExit(f"{run_dir}: the VAE phase has not finished; nothing to fine-tune")
    vae = AutoencoderKL(options.architecture.vae).to(device)
    vae.load_state_dict(vae_state["model"])
    optimizer = torch.optim.AdamW(decoder_parameters(vae), lr=config.lr, weight_decay=0.0)
    run = PhaseRun(
        "decoder", run_dir, config.steps, {"model": vae}, optimizer, config, checkpoint_every=options.checkpoint_every
    )
    if run.resume() is not None:
        return vae.eval()
    progress = run.train(
        lambda start, on_step: train_vae_steps(vae, optimizer, config, start, device, on_step, decoder_only=True)
    )
    value = reconstruction_psnr(vae, config.seed, 64, device, config.image_size)
    print(
        f"decoder: {config.steps} steps in {progress.elapsed:.0f} s, PSNR {value:.2f} dB "
        f"(before: {vae_state['psnr']:.2f} dB)",
        flush=True,
    )
    run.finish(progress, psnr=value)
    return vae


def get_pool(options: DemoOptions, vae: AutoencoderKL, device: torch.device) -> LatentPool:
    config, path = options.diffusion, options.run_dir / "pool.pt"
    state = load_state(path)
    scenes = pool_scenes(config.seed, config.pool_size)
    # The file keeps only latents; the scenes (and so the captions) are drawn again from the seed.
    # A digest of them tells whether the latents still belong to them, e.g. after the data code changed.
    digest = hashlib.sha256(repr(scenes).encode()).hexdigest()
    if state is not None and state.get("scenes_sha256") == digest:
        return LatentPool(scenes, state["means"], state["stds"])
    if state is not None:
        print("pool: the saved latents were made from other scenes; encoding the pool again", flush=True)
    t0 = time.perf_counter()
    bar = tqdm(total=config.pool_size, desc="encode pool", mininterval=10.0)
    pool = build_pool(vae, scenes, config.image_size, device, progress=lambda n: bar.update(n - bar.n))
    bar.close()
    latents = pool.means.float() * vae.config.scale_factor
    print(
        f"pool: {config.pool_size} latents in {time.perf_counter() - t0:.0f} s; scaled mean "
        f"{latents.mean():.3f} std {latents.std():.3f}",
        flush=True,
    )
    save_state(path, {"scenes_sha256": digest, "means": pool.means, "stds": pool.stds})
    return pool


def run_text_phase(
    options: DemoOptions, vae: AutoencoderKL, pool: LatentPool, tokenizer, device: torch.device
) -> dict[str, torch.Tensor] | None:
    """Pretrain the text encoder contrastively; returns its state dict (None when ``text.steps`` is 0)."""
    config, run_dir, arch = options.text, options.run_dir, options.architecture
    if config.steps == 0:
        return None
    torch.manual_seed(config.seed)
    text_model = build_text_model(arch, tokenizer).to(device)
    latent_size = arch.image_size // 2 ** (len(arch.vae.ch_mult) - 1)
    towers = ContrastiveTowers(arch.vae.z_channels, latent_size, arch.text_width).to(device)
    optimizer = torch.optim.AdamW([*text_model.parameters(), *towers.parameters()], lr=config.lr, weight_decay=0.01)
    run = PhaseRun(
        "text",
        run_dir,
        config.steps,
        {"text": text_model, "towers": towers},
        optimizer,
        config,
        checkpoint_every=options.checkpoint_every,
    )
    if (state := run.resume()) is not None:
        print(f"text: done earlier ({state['step']} steps, shape separation {state['separation']:.0%})", flush=True)
        return state["text"]
    progress = run.train(
        lambda start, on_step: train_text_steps(
            text_model, towers, tokenizer, optimizer, pool, config, start, device, vae.config.scale_factor, on_step
        )
    )
    separation = shape_separation(text_model, tokenizer, device)
    print(
        f"text: {config.steps} steps in {progress.elapsed:.0f} s, loss {progress.smooth:.4f}, shape separation "
        f"{separation:.0%} (chance 20%)",
        flush=True,
    )
    run.finish(progress, separation=separation)
    return text_model.state_dict()


def run_diffusion_phase(
    options: DemoOptions,
    vae: AutoencoderKL,
    pool: LatentPool,
    tokenizer,
    device: torch.device,
    text_init: dict[str, torch.Tensor] | None = None,
):
    """Train the UNet, and the text encoder unless it was pretrained (``text_init``) and is kept frozen."""
    from webui.train.preview import PREVIEW_PROMPTS, ddim_sample, grid

    config, run_dir, arch = options.diffusion, options.run_dir, options.architecture
    torch.manual_seed(config.seed)
    unet = UNetModel(arch.unet_config())
    zero_init_unet(unet)
    unet = unet.to(device)
    text_model = build_text_model(arch, tokenizer).to(device)
    if text_init is not None:
        text_model.load_state_dict(text_init)
        if config.freeze_pretrained_text:
            text_model.requires_grad_(False)  # AdamW skips parameters that get no gradient
    ema_unet, ema_text = make_ema(unet), make_ema(text_model)
    optimizer = torch.optim.AdamW([*unet.parameters(), *text_model.parameters()], lr=config.lr, weight_decay=0.01)
    samples = run_dir / "samples"

    def draw_samples(step: int, done: bool) -> None:
        if done or step % options.sample_every == 0:
            images = ddim_sample(
                ema_unet,
                ema_text,
                tokenizer,
                vae,
                PREVIEW_PROMPTS,
                steps=20,
                seed=config.seed,
                size=arch.image_size,
                device=device,
            )
            grid(images).save(samples / f"step-{step:06d}.png")
            unet.train()
            text_model.train()

    modules = {"unet": unet, "text": text_model, "ema_unet": ema_unet, "ema_text": ema_text}
    run = PhaseRun(
        "diffusion",
        run_dir,
        config.steps,
        modules,
        optimizer,
        config,
        checkpoint_every=options.checkpoint_every,
        after_save=draw_samples,
    )
    if (state := run.resume()) is not None:
        print(f"diffusion: done earlier ({state['step']} steps)", flush=True)
        return ema_unet, ema_text
    samples.mkdir(exist_ok=True)
    progress = run.train(
        lambda start, on_step: train_diffusion_steps(
            unet,
            text_model,
            ema_unet,
            ema_text,
            tokenizer,
            optimizer,
            pool,
            config,
            start,
            device,
            vae.config.scale_factor,
            on_step,
        )
    )
    print(f"diffusion: {config.steps} steps in {progress.elapsed:.0f} s, loss {progress.smooth:.4f}", flush=True)
    run.finish(progress)
    return ema_unet, ema_text


def run_demo(options: DemoOptions) -> Path | None:
    """All phases; returns the shipped checkpoint path (None when ``ship_dir`` is None)."""
    started = time.perf_counter()
    if options.threads:
        torch.set_num_threads(options.threads)
    device = pick_device(options.device)
    _check_run_dir(options)
    (options.run_dir / "options.json").write_text(json.dumps(asdict(options), default=str, indent=2))
    tokenizer_dir = options.run_dir / "tokenizer"
    if not (tokenizer_dir / "tokenizer_config.json").is_file():
        write_tokenizer(tokenizer_dir, data.caption_corpus(options.diffusion.seed))
    tokenizer = load_tokenizer(tokenizer_dir)
    print(f"device {device}, threads {torch.get_num_threads()}, vocabulary {len(tokenizer)}", flush=True)
    vae = run_vae_phase(options, device)
    pool = get_pool(options, vae, device)
    text_init = run_text_phase(options, vae, pool, tokenizer, device)
    run_diffusion_phase(options, vae, pool, tokenizer, device, text_init)
    if options.decoder.steps > 0:
        run_decoder_phase(options, device)
    path = None
    if options.ship_dir is not None:
        path = ship(options.run_dir, options.ship_dir, options.architecture, dtype=options.ship_dtype)
    print(f"total: {time.perf_counter() - started:.0f} s in this invocation", flush=True)
    return path


def load_run(run_dir: Path, architecture: DemoArchitecture) -> tuple[UNetModel, AutoencoderKL, Any, Any]:
    """The trained (EMA) UNet, VAE (with the fine-tuned decoder if any), CLIP text model and tokenizer of a run."""
    tokenizer = load_tokenizer(run_dir / "tokenizer")
    vae_state, diffusion_state = load_state(run_dir / "vae.pt"), load_state(run_dir / "diffusion.pt")
    if vae_state is None or diffusion_state is None or not vae_state["done"]:
        raise SystemExit(f"{run_dir} has no finished run to ship")
    decoder_state = load_state(run_dir / "decoder.pt")
    if decoder_state is not None and decoder_state["done"]:
        vae_state = decoder_state
    vae = AutoencoderKL(architecture.vae)
    vae.load_state_dict(vae_state["model"])
    unet = UNetModel(architecture.unet_config())
    unet.load_state_dict(diffusion_state["ema_unet"])
    text_model = build_text_model(architecture, tokenizer)
    text_model.load_state_dict(diffusion_state["ema_text"])
    return unet.eval(), vae.eval(), text_model.eval(), tokenizer


def ship(run_dir: Path, ship_dir: Path, architecture: DemoArchitecture | None = None, dtype: str = "auto") -> Path:
    """Write ``ship_dir/demo.safetensors`` (SD 1.x single file) and ``ship_dir/tokenizer/``."""
    from webui.models.checkpoint import save_single_file

    architecture = architecture or DemoArchitecture()
    unet, vae, text_model, tokenizer = load_run(run_dir, architecture)
    params = sum(p.numel() for m in (unet, vae, text_model) for p in m.parameters())
    if dtype == "auto":
        dtype = "fp32" if params * 4 < SHIP_BUDGET_BYTES else "fp16"
    if dtype == "fp16":
        unet, vae, text_model = unet.half(), vae.half(), text_model.half()
    ship_dir.mkdir(parents=True, exist_ok=True)
    path = save_single_file(ship_dir / CHECKPOINT_NAME, unet, vae, text_model)
    if (ship_dir / "tokenizer").exists():
        shutil.rmtree(ship_dir / "tokenizer")
    shutil.copytree(run_dir / "tokenizer", ship_dir / "tokenizer")
    print(
        f"shipped {path} ({path.stat().st_size / 2**20:.1f} MiB, {params / 1e6:.2f}M parameters, {dtype})", flush=True
    )
    return path
