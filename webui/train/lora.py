"""Train a LoRA that teaches the bundled demo model a word it cannot draw: ``diamond`` (a square on its tip).

``python -m webui.train lora`` loads ``models/demo``, adds rank-``r`` LoRA pairs (kohya-ss's layout: ``down``
random, ``up`` zero, so training starts from the unchanged model) to every attention and projection layer of the
UNet's transformers and every linear layer of the text encoder, and trains only those on the demo's own
objective (:func:`webui.train.diffusion_training.diffusion_loss`). Half of each batch are diamonds with captions
in the demo's caption style ("a red diamond on a blue background"), half the demo's ordinary scenes with their
captions, so that the other shapes keep their meaning (DreamBooth's prior preservation, Ruiz et al. 2023,
arXiv 2208.12242). The result is written as a kohya-ss ``.safetensors`` LoRA that ``<lora:NAME:1>`` loads.

:func:`measure_diamonds` is the proof: the same diamond prompts, seeds and sampler with and without the LoRA,
each image read back by :func:`is_diamond` (a convex shape, widest across its middle, filling about half its
bounding box: what a square on its tip looks like and none of the demo's five shapes does).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn

from webui.train import data

NEW_WORD = "diamond"


@dataclass(frozen=True)
class LoraTrainConfig:
    steps: int = 300
    batch_size: int = 16
    rank: int = 8
    alpha: float = 8.0
    lr: float = 3e-3
    warmup: int = 50
    pool_size: int = 512  # diamonds, and as many ordinary scenes
    diamond_fraction: float = 0.75
    uncond_probability: float = 0.1
    seed: int = 0


# --- the new shape --------------------------------------------------------------------------------


def diamond_polygon(cx: float, cy: float, half: float) -> list[tuple[float, float]]:
    """A square standing on a corner, a little narrower than tall (as a playing-card diamond)."""
    return [(cx, cy - half), (cx + half * 0.8, cy), (cx, cy + half), (cx - half * 0.8, cy)]


def render_diamond(colour: str, background: str, cx: float, cy: float, half: float, size: int = 64) -> Image.Image:
    big = size * data.SUPERSAMPLE
    image = Image.new("RGB", (big, big), data.COLOURS[background])
    points = [(x * big, y * big) for x, y in diamond_polygon(cx, cy, half)]
    ImageDraw.Draw(image).polygon(points, fill=data.COLOURS[colour])
    return image.reduce(data.SUPERSAMPLE)


@dataclass(frozen=True)
class DiamondScene:
    colour: str
    background: str
    size: str
    position: str
    cx: float
    cy: float
    half: float


def random_diamond(rng: np.random.Generator) -> DiamondScene:
    names = list(data.COLOURS)
    background = names[rng.integers(len(names))]
    others = [c for c in names if c != background]
    size = list(data.SIZES)[rng.integers(len(data.SIZES))]
    position = "center" if size == "large" or rng.random() < 0.5 else list(data.POSITIONS)[rng.integers(9)]
    x, y = data.POSITIONS[position]
    return DiamondScene(
        colour=others[rng.integers(len(others))],
        background=background,
        size=size,
        position=position,
        cx=x + float(rng.uniform(-0.03, 0.03)),
        cy=y + float(rng.uniform(-0.03, 0.03)),
        half=data.SIZES[size] * float(rng.uniform(0.9, 1.1)),
    )


def diamond_caption(scene: DiamondScene, rng: np.random.Generator) -> str:
    """A caption in the demo's style (its templates, size and position words) with the new word."""
    size = (
        data._choice(rng, data.SIZE_WORDS[scene.size])
        if rng.random() < (0.3 if scene.size == "medium" else 0.9)
        else ""
    )
    phrase = " ".join(w for w in (size, scene.colour, NEW_WORD) if w)
    thing = f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"
    if rng.random() < (0.3 if scene.position == "center" else 0.9):
        thing = f"{thing} {data._choice(rng, data.POSITION_WORDS[scene.position])}"
    return data._choice(rng, data.BACKGROUND_TEMPLATES).format(thing=thing, bg=scene.background)


def is_diamond(image: Image.Image) -> bool:
    """Whether the one shape of ``image`` reads as a diamond (see the module docstring)."""
    from webui.train.measure import MASK_DISTANCE, MIN_AREA_FRACTION, convex_hull_area

    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    h, w, _ = rgb.shape
    border = np.concatenate(
        [rgb[:2].reshape(-1, 3), rgb[-2:].reshape(-1, 3), rgb[:, :2].reshape(-1, 3), rgb[:, -2:].reshape(-1, 3)]
    )
    mask = np.sqrt(((rgb - np.median(border, axis=0)) ** 2).sum(axis=2)) > MASK_DISTANCE
    area = int(mask.sum())
    if area < MIN_AREA_FRACTION * h * w:
        return False
    ys, xs = np.nonzero(mask)
    height, width = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    fill = area / float(height * width)
    corners = np.concatenate([np.stack([xs + dx, ys + dy], axis=1) for dx in (0, 1) for dy in (0, 1)])
    solidity = area / max(convex_hull_area(corners), 1.0)
    rows = mask[ys.min() : ys.max() + 1].sum(axis=1)
    widest = (int(np.argmax(rows)) + 0.5) / height
    # top and bottom come to a point: the first and last rows are much narrower than the widest
    pointed = rows[0] <= 0.35 * rows.max() and rows[-1] <= 0.35 * rows.max()
    return bool(0.38 <= fill <= 0.64 and solidity >= 0.85 and 0.35 <= widest <= 0.65 and pointed)


# --- LoRA layers for training --------------------------------------------------------------------


class LoraPair(nn.Module):
    """``down`` (r, in[, k, k]) and ``up`` (out, r[, 1, 1]) of one layer; adds ``scale * up(down(x))``."""

    def __init__(self, layer: nn.Linear | nn.Conv2d, rank: int, alpha: float, generator: torch.Generator):
        super().__init__()
        weight = layer.weight
        out_dim, in_dim = weight.shape[:2]
        kernel = tuple(weight.shape[2:])
        down = torch.randn((rank, in_dim, *kernel), generator=generator) / math.sqrt(in_dim * max(1, math.prod(kernel)))
        self.down = nn.Parameter(down)
        self.up = nn.Parameter(torch.zeros((out_dim, rank, *([1] * len(kernel)))))
        self.scale = alpha / rank
        self.conv = isinstance(layer, nn.Conv2d)
        self.stride = layer.stride if isinstance(layer, nn.Conv2d) else 1
        self.padding = layer.padding if isinstance(layer, nn.Conv2d) else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv:
            return F.conv2d(F.conv2d(x, self.down, stride=self.stride, padding=self.padding), self.up) * self.scale
        return F.linear(F.linear(x, self.down), self.up) * self.scale


def lora_targets(model: object) -> dict[str, tuple[nn.Module, str]]:
    """kohya key -> (our layer, its name) of the layers the LoRA trains: the UNet transformers', the text encoder's."""
    from webui.extra_networks.lora_keys import UNET, model_key_map

    unet, text = model.unet, model.text_encoder.model  # type: ignore[attr-defined]
    chosen: dict[str, tuple[nn.Module, str]] = {}
    seen: set[tuple[str, str]] = set()
    for key, target in model_key_map(model).items():  # the diffusers spelling of each module comes first
        if (target.component, target.module) in seen:
            continue
        seen.add((target.component, target.module))
        if target.component == UNET and "_attentions_" not in key:
            continue
        root = unet if target.component == UNET else text
        chosen[key] = (root.get_submodule(target.module), target.module)
    return chosen


@dataclass
class AttachedLora:
    pairs: dict[str, LoraPair]
    handles: list[torch.utils.hooks.RemovableHandle]

    def parameters(self) -> list[nn.Parameter]:
        return [p for pair in self.pairs.values() for p in pair.parameters()]

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()

    def state_dict(self, alpha: float) -> dict[str, torch.Tensor]:
        """kohya-ss tensors: ``<key>.lora_down.weight``, ``<key>.lora_up.weight``, ``<key>.alpha``."""
        out: dict[str, torch.Tensor] = {}
        for key, pair in self.pairs.items():
            out[f"{key}.lora_down.weight"] = pair.down.detach().clone().contiguous()
            out[f"{key}.lora_up.weight"] = pair.up.detach().clone().contiguous()
            out[f"{key}.alpha"] = torch.tensor(float(alpha))
        return out


def attach_lora(model: object, rank: int, alpha: float, seed: int) -> AttachedLora:
    """Add a trainable :class:`LoraPair` to each target layer through a forward hook (the model is untouched)."""
    generator = torch.Generator().manual_seed(seed)
    pairs: dict[str, LoraPair] = {}
    handles = []
    for key, (layer, _) in lora_targets(model).items():
        assert isinstance(layer, (nn.Linear, nn.Conv2d))  # the key map lists only these
        pair = LoraPair(layer, rank, alpha, generator)
        pairs[key] = pair
        handles.append(layer.register_forward_hook(lambda m, args, out, pair=pair: out + pair(args[0])))
    return AttachedLora(pairs, handles)


# --- training ------------------------------------------------------------------------------------


def train_lora(
    model: object, config: LoraTrainConfig, on_step: Callable[[int, float], None] | None = None
) -> AttachedLora:
    """Train a LoRA on ``model`` (frozen) and return it attached; see the module docstring."""
    from webui.models.noise_schedule import scaled_linear_alphas_cumprod
    from webui.train.checkpointing import step_generator
    from webui.train.diffusion_training import (
        DiffusionTrainConfig,
        LatentPool,
        batch_captions,
        build_pool,
        diffusion_loss,
        pool_scenes,
        tokenize,
    )
    from webui.train.vae_training import encode_images, lr_at

    unet, text_model, vae = model.unet, model.text_encoder.model, model.vae  # type: ignore[attr-defined]
    tokenizer = model.text_encoder.tokenizer  # type: ignore[attr-defined]
    for module in (unet, text_model, vae):
        module.requires_grad_(False)
    device, scale_factor = torch.device("cpu"), float(model.scale_factor)  # type: ignore[attr-defined]
    demo = DiffusionTrainConfig()
    rng = np.random.default_rng([config.seed, 11])
    diamonds = [random_diamond(rng) for _ in range(config.pool_size)]
    with torch.no_grad():
        images = np.stack(
            [data.image_to_array(render_diamond(d.colour, d.background, d.cx, d.cy, d.half)) for d in diamonds]
        )
        d_means, d_stds = encode_images(vae, images, device)
        ordinary: LatentPool = build_pool(vae, pool_scenes(config.seed + 1, config.pool_size), 64, device)
    lora = attach_lora(model, config.rank, config.alpha, config.seed)
    params = lora.parameters()
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    alphas_cumprod = scaled_linear_alphas_cumprod()
    n_diamond = int(round(config.batch_size * config.diamond_fraction))
    unet.train()
    text_model.train()
    for step in range(config.steps):
        rng = np.random.default_rng([config.seed, 12, step])
        generator = step_generator(config.seed, 12, step)
        di = rng.integers(0, len(diamonds), size=n_diamond)
        oi = rng.integers(0, len(ordinary.scenes), size=config.batch_size - n_diamond)
        captions = [diamond_caption(diamonds[i], rng) for i in di]
        captions = ["" if rng.random() < config.uncond_probability else c for c in captions]
        captions += batch_captions(ordinary, oi, rng, config.uncond_probability)
        means = torch.cat([d_means[torch.from_numpy(di)], ordinary.means[torch.from_numpy(oi)].float()])
        stds = torch.cat([d_stds[torch.from_numpy(di)], ordinary.stds[torch.from_numpy(oi)].float()])
        x0 = (means + stds * torch.randn(means.shape, generator=generator)) * scale_factor
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config.steps, config.lr, config.warmup)
        loss = diffusion_loss(
            unet, text_model, tokenize(tokenizer, captions), x0, alphas_cumprod, generator,
            demo.min_snr_gamma, demo.offset_noise, demo.high_noise_weight,
        )  # fmt: skip
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if on_step is not None:
            on_step(step, float(loss.detach()))
    unet.eval()
    text_model.eval()
    return lora


def save_lora(lora: AttachedLora, path: Path, config: LoraTrainConfig, extra: dict[str, str] | None = None) -> Path:
    """Write the LoRA as kohya-ss ``.safetensors`` (fp16 tensors) with kohya's ``ss_*`` metadata."""
    from safetensors.torch import save_file

    tensors = {k: (v if k.endswith(".alpha") else v.half()) for k, v in lora.state_dict(config.alpha).items()}
    metadata = {
        "ss_output_name": path.stem,
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(config.rank),
        "ss_network_alpha": str(config.alpha),
        "ss_base_model_version": "sd_v1",
        "ss_sd_model_name": "demo",
        "ss_steps": str(config.steps),
        "ss_training_comment": f"python -m webui.train lora: teaches the demo model the word '{NEW_WORD}'",
        "webui_train_config": json.dumps(asdict(config)),
        **(extra or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path


# --- measuring -----------------------------------------------------------------------------------


def diamond_prompts(count: int) -> list[str]:
    """``count`` plain prompts "a red diamond on a blue background", colour pairs in a fixed order."""
    names = list(data.COLOURS)
    pairs = [(c, b) for c in names for b in names if c != b]
    rng = np.random.default_rng(5)
    chosen = [pairs[i] for i in rng.permutation(len(pairs))[:count]]
    return [data.simple_caption(NEW_WORD, c, b) for c, b in chosen]


@dataclass(frozen=True)
class DiamondMeasurement:
    prompts: int
    with_lora: int  # images read as a diamond
    without_lora: int
    seconds: float

    @property
    def text(self) -> str:
        return (
            f"'{NEW_WORD}' followed in {self.with_lora}/{self.prompts} images with the LoRA "
            f"({self.with_lora / self.prompts:.0%}) and {self.without_lora}/{self.prompts} without "
            f"({self.without_lora / self.prompts:.0%})"
        )


def measure_diamonds(
    model: object, lora_dir: Path, lora_name: str, count: int = 40, weight: float = 1.0
) -> DiamondMeasurement:
    """Generate ``count`` diamond prompts with and without ``<lora:lora_name:weight>`` (DPM++ 2M, 8 steps, CFG 3,
    the demo's recommended settings; seeds 0..count-1) and count the images read as diamonds."""
    from webui.extra_networks.lora_library import LoraLibrary
    from webui.pipeline import generate, resolve_request
    from webui.pipeline.requests import GenerationRequest
    from webui.sampling import create_sampler_registry

    started = time.monotonic()
    samplers, library = create_sampler_registry(), LoraLibrary(lora_dir)
    counts = {True: 0, False: 0}
    for i, prompt in enumerate(diamond_prompts(count)):
        for use_lora in (True, False):
            text = f"{prompt} <lora:{lora_name}:{weight:g}>" if use_lora else prompt
            request = GenerationRequest(prompt=text, sampler_name="DPM++ 2M", steps=8, cfg_scale=3.0, seed=i)
            image = generate(model, resolve_request(request, samplers, (64, 64), loras=library)).images[0]
            counts[use_lora] += is_diamond(image)
    return DiamondMeasurement(count, counts[True], counts[False], time.monotonic() - started)


# --- command line --------------------------------------------------------------------------------

DEMO_MODEL = Path("models/demo/demo.safetensors")
SHIP_PATH = Path("models/Lora/diamond_demo.safetensors")


def add_lora_parser(commands) -> None:  # commands: argparse's sub-parsers action
    """``python -m webui.train lora`` and its options."""
    defaults = LoraTrainConfig()
    parser = commands.add_parser("lora", help=f"train a LoRA that teaches the demo model the word '{NEW_WORD}'")
    parser.add_argument("--model", type=Path, default=DEMO_MODEL, help="the model to teach (default: the demo)")
    parser.add_argument("--out", type=Path, default=SHIP_PATH, help="where the LoRA goes (kohya .safetensors)")
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--rank", type=int, default=defaults.rank)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--pool-size", type=int, default=defaults.pool_size, help="diamonds (and ordinary scenes)")
    parser.add_argument("--diamond-fraction", type=float, default=defaults.diamond_fraction)
    parser.add_argument("--measure", type=int, default=40, help="diamond prompts to measure with and without (0: none)")


def run_lora_command(args) -> int:
    """Train, save, measure; the model card next to the file records the run and the measured effect."""
    from dataclasses import replace

    from webui.models.loading import load_model

    config = replace(
        LoraTrainConfig(),
        steps=args.steps,
        batch_size=args.batch_size,
        rank=args.rank,
        alpha=float(args.rank),
        lr=args.lr,
        seed=args.seed,
        pool_size=args.pool_size,
        diamond_fraction=args.diamond_fraction,
    )
    model = load_model(args.model, native_size=(64, 64), compute_hash=False)
    started = time.monotonic()

    def report(step: int, loss: float) -> None:
        if step % 25 == 0 or step == config.steps - 1:
            print(f"step {step + 1}/{config.steps} loss {loss:.4f} ({time.monotonic() - started:.0f} s)", flush=True)

    lora = train_lora(model, config, report)
    seconds = time.monotonic() - started
    lora.detach()
    path = save_lora(lora, args.out, config, {"ss_training_seconds": f"{seconds:.0f}"})
    print(f"wrote {path} ({path.stat().st_size // 1024} KiB) after {seconds:.0f} s of training", flush=True)
    if args.measure:
        measured = measure_diamonds(model, path.parent, path.stem, count=args.measure)
        print(measured.text, flush=True)
        write_model_card(path, config, seconds, measured)
    return 0


def write_model_card(path: Path, config: LoraTrainConfig, seconds: float, measured: DiamondMeasurement) -> Path:
    card = path.with_suffix(".md")
    card.write_text(
        f"# {path.stem}: the word '{NEW_WORD}' for the demo model\n\n"
        f"A kohya-ss LoRA (rank {config.rank}, alpha {config.alpha:g}; UNet attention layers and the text encoder) "
        f"trained by `python -m webui.train lora` on the bundled demo model in {seconds / 60:.1f} minutes "
        f"({config.steps} steps of {config.batch_size}, half diamonds captioned like the demo's data, half the demo's "
        "own scenes so that the other shapes keep their meaning).\n\n"
        f"Use: `a red {NEW_WORD} on a blue background <lora:{path.stem}:1>` (DPM++ 2M, 8 steps, CFG 3).\n\n"
        f'Measured effect ({measured.prompts} prompts such as "a red {NEW_WORD} on a blue background", seeds '
        f"0..{measured.prompts - 1}, DPM++ 2M, 8 steps, CFG 3; an image counts when `webui.train.lora.is_diamond` "
        f"reads a diamond): {measured.text}.\n"
    )
    return card
