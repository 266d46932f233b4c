"""A loaded Stable Diffusion 1.x model: its three networks, the noise schedule, and the VAE's two directions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from webui.models.registry import SD1_NATIVE_SIZE
from webui.models.text_encoder import TextEncoder
from webui.models.unet import UNetModel
from webui.models.vae import AutoencoderKL

__all__ = ["SD1_NATIVE_SIZE", "StableDiffusionModel", "is_out_of_memory"]


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is a device (or host) out-of-memory error from PyTorch."""
    if isinstance(err, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


@dataclass
class StableDiffusionModel:
    """A loaded SD 1.x model: three networks, the training noise schedule and where they live."""

    unet: UNetModel
    vae: AutoencoderKL
    text_encoder: TextEncoder
    alphas_cumprod: torch.Tensor  # (1000,) float32, on the CPU
    name: str
    short_hash: str | None  # first 10 hex digits of the file's sha256 (A1111's "Model hash")
    device: torch.device
    dtype: torch.dtype
    vae_dtype: torch.dtype | None = None  # None: same as ``dtype``; becomes float32 after an fp16 NaN retry
    native_size: tuple[int, int] = SD1_NATIVE_SIZE  # (width, height) the model was trained at
    path: Path | None = None
    sha256: str | None = None
    extra: dict[str, object] = field(default_factory=dict)
    # A separate VAE file in use (webui.extra_networks.vae_files.use_vae); None: the checkpoint's own VAE,
    # which waits in ``baked_vae`` (on the CPU) while another is in use. ``vae_hash``: A1111's "VAE hash".
    vae_path: Path | None = None
    vae_hash: str | None = None
    baked_vae: AutoencoderKL | None = None
    # --vae-tiling (issue 19): "auto" tiles images over 1024x1024 or too large for free memory; "on", "off"
    vae_tiling: str = "auto"

    @property
    def scale_factor(self) -> float:
        return self.vae.config.scale_factor

    @property
    def latent_channels(self) -> int:
        return self.unet.config.in_channels

    @property
    def downscale(self) -> int:
        """Image pixels per latent pixel (8 for SD 1.x)."""
        return self.vae.config.downscale

    def decode(self, latents: torch.Tensor, report: Callable[[float], None] | None = None) -> torch.Tensor:
        """Sampler-space latents (B, 4, h, w) -> float32 images (B, 3, 8h, 8w) in [-1, 1].

        Divides by the VAE's ``scale_factor`` (0.18215) first (Rombach et al. 2022, section 4.3.2). A large
        image is decoded in bands (:mod:`webui.models.vae_tiling`), which take minutes on a CPU: ``report`` gets
        the fraction done after every band (nothing is reported for an image decoded in one piece).
        """
        from webui.models.vae_tiling import tiled_decode

        def banded(vae: AutoencoderKL, z: torch.Tensor) -> torch.Tensor:
            return tiled_decode(vae, z, report=report)

        tiled = self._tiles(latents.shape[-2] * self.downscale, latents.shape[-1] * self.downscale)
        z = latents / self.scale_factor
        if tiled:
            images = self._run_vae(banded, z)
        else:
            try:
                images = self._run_vae(lambda vae, z: vae.decode(z), z)  # the instance's decode, as patched
            except Exception as err:  # out of memory in one piece: free what it took, then in bands
                if not is_out_of_memory(err) or self.vae_tiling == "off":
                    raise
                del err
                self._free_memory()
                images = self._run_vae(banded, z)
        return images.clamp(-1.0, 1.0)

    def _free_memory(self) -> None:
        import gc

        from webui.devices import empty_cache

        gc.collect()
        empty_cache(self.device)

    def _tiles(self, height: int, width: int) -> bool:
        """Whether the VAE works in bands on an image this size (:mod:`webui.models.vae_tiling`)."""
        from webui.models.vae_tiling import should_tile

        dtype = self.vae_dtype or self.dtype
        return should_tile(self.vae_tiling, self.vae, height, width, dtype, self.device)

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> sampler-space latents, multiplied by ``scale_factor``.

        With a ``generator``, the latent is sampled from the encoder's Gaussian (mean + std * noise, noise drawn
        on the generator's device, as diffusers' img2img does); without one, the mean is used.
        """

        from webui.models.vae_tiling import tiled_encode

        tiled = self._tiles(images.shape[-2], images.shape[-1])

        def encode(vae: AutoencoderKL, x: torch.Tensor) -> torch.Tensor:
            mean, logvar = tiled_encode(vae, x) if tiled else vae.encode(x)
            if generator is None:
                return mean
            noise = torch.randn(mean.shape, generator=generator, device=generator.device, dtype=torch.float32)
            return mean + torch.exp(0.5 * logvar) * noise.to(mean.device, mean.dtype)

        return self._run_vae(encode, images) * self.scale_factor

    def _run_vae(self, fn: Callable[[AutoencoderKL, torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Run ``fn(vae, x)`` in the VAE's precision; if half precision overflows to NaN/inf, redo it in float32.

        SD 1.x's VAE is known to overflow in fp16 on some inputs (the reason for A1111's ``--no-half-vae``).
        After one overflow the VAE stays in float32 for the rest of the session (``vae_dtype``).
        """
        dtype = self.vae_dtype or self.dtype
        with torch.no_grad():
            out = fn(self.vae, x.to(self.device, dtype))
            if dtype != torch.float32 and not torch.isfinite(out).all():
                self.vae.to(torch.float32)
                self.vae_dtype = torch.float32
                out = fn(self.vae, x.to(self.device, torch.float32))
        return out.float()
