"""The VAE's image-resolution layers run exactly, in bounded memory: layer by layer, band by band.

Why not tiles: every GroupNorm normalises with the mean and variance of its whole input, so a tile that goes
through the network alone (diffusers' ``enable_tiling``), or that normalises with the statistics of a
downscaled overview, drifts from the untiled image: on a random-weight SD 1.x VAE, 23.7 and 33.4 dB PSNR at
1024 px, 22.5 dB at 2048 px with the overview. No tile can know the statistics of a layer before the whole
layer below it exists.

So the layers run one at a time over the whole image. A *stage* is one convolution and what precedes it up to
the previous stored activation: a GroupNorm (with the exact statistics of its input, gathered while that input
was written) and SiLU, or a 2x nearest upsampling; a resnet block's second stage also adds its shortcut. Each
stage runs on horizontal bands of the full width, each read with the one row of context its 3x3 convolution
needs on either side, so the result equals the untiled pass up to float rounding (``tests/test_vae_tiling.py``),
and at a fraction of overlapping tiles' work (a band recomputes 2 rows of its ~64, where tiles overlapping by a
quarter compute 1.8x the pixels).

The price: a stage's input stays whole until the stage is done: up to ~8 GB at 2048 px (256 channels at full
resolution in float32, and the resnet's input beside it). Those activations go to temporary files (in
``TMPDIR``), written and read with plain file I/O, never mapped into the process: the process holds one band
at a time (:data:`BAND_BYTES` per tensor), and the operating system keeps the files in its page cache while
memory is free and writes them to disk when it is not.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

from webui.models.vae import Decoder, Encoder, Level, ResnetBlock

# A band's widest tensor: ~5 of them are alive at once (input, normalised, convolved, shortcut, output),
# so a stage works in ~0.6 GB whatever the image size.
BAND_BYTES = 128 * 1024 * 1024

Resample = Literal["same", "up", "down"]

# Called after every band with the fraction (0..1) of the pass's work done: a 2048 px decode takes minutes on a
# CPU, and the progress bar should say how far it is.
ReportFraction = Callable[[float], None]


class _Work:
    """The fraction of a banded pass done, reported after every band.

    A stage counts for its convolution's multiply-adds (:func:`_stage_work`), so that the fraction moves about
    evenly in time: the full-resolution stages are most of a decode.
    """

    def __init__(self, total: float, report: ReportFraction | None):
        self.total, self.done, self.report = total, 0.0, report

    def advance(self, amount: float) -> None:
        if self.report is None:
            return
        self.done += amount
        self.report(min(self.done / self.total, 1.0) if self.total > 0 else 1.0)


class SpilledActivation:
    """A (B, C, H, W) tensor kept in a temporary file, written and read as bands of rows.

    While rows are written, the per-channel mean and variance of the whole tensor are gathered (combined band by
    band in float64 as Chan et al.'s parallel algorithm), for the GroupNorm that reads it next. Close it (or use
    it as a context manager) to free the file.
    """

    def __init__(self, shape: tuple[int, int, int, int], dtype: torch.dtype, device: torch.device):
        self.shape, self.dtype, self.device = shape, dtype, device
        # Unbuffered: bands are read and written whole, straight from and into the tensors' memory.
        self._file = tempfile.TemporaryFile(buffering=0)  # noqa: SIM115 -- it outlives this call; close() closes it
        self._row_bytes = shape[3] * dtype.itemsize
        self._count = 0  # values per channel written so far
        self._mean = torch.zeros(shape[0], shape[1], dtype=torch.float64)
        self._m2 = torch.zeros(shape[0], shape[1], dtype=torch.float64)  # sum of squared deviations

    @classmethod
    def of(cls, x: torch.Tensor) -> SpilledActivation:
        batch, channels, height, width = x.shape
        spilled = cls((batch, channels, height, width), x.dtype, x.device)
        spilled.write(0, x)
        return spilled

    def _offset(self, b: int, c: int, row: int) -> int:
        _, channels, height, _ = self.shape
        return ((b * channels + c) * height + row) * self._row_bytes

    def write(self, row: int, band: torch.Tensor) -> None:
        """Store ``band`` (B, C, n, W) as rows ``row`` to ``row + n``; each row must be written once."""
        band = band.detach()
        self._gather_statistics(band)  # where the band is (the GPU's reductions beat the CPU's), before the copy
        band = band.to("cpu")
        if band.stride(3) != 1 or band.stride(2) != band.shape[3]:
            band = band.contiguous()  # a band of rows of a contiguous tensor is contiguous within each channel
        data = band.view(torch.uint8)  # bytes of any float type (numpy has no bfloat16)
        try:
            for b in range(self.shape[0]):
                for c in range(self.shape[1]):
                    self._file.seek(self._offset(b, c, row))
                    view = data[b, c].numpy().data.cast("B")
                    while view:  # an unbuffered write may take fewer bytes than it is given
                        view = view[self._file.write(view) :]
        except OSError as err:  # a full disk, most likely: say what the file is and what to do
            size = self._offset(self.shape[0], 0, 0) / 1e9
            raise OSError(
                err.errno,
                f"could not write a layer of the VAE ({size:.1f} GB) to a temporary file in {tempfile.gettempdir()}"
                f" ({err.strerror or err}). Large images are decoded and encoded layer by layer with each layer kept"
                " in such a file: free space there, point TMPDIR at a disk with more, or, where memory allows,"
                " restart with --vae-tiling off",
            ) from err

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``start`` to ``stop`` (B, C, stop - start, W), on the device the tensor came from."""
        batch, channels, _, width = self.shape
        band = torch.empty(batch, channels, stop - start, width, dtype=self.dtype)
        data = band.view(torch.uint8)
        for b in range(batch):
            for c in range(channels):
                self._file.seek(self._offset(b, c, start))
                view = data[b, c].numpy().data.cast("B")
                while view:
                    got = self._file.readinto(view)
                    if not got:
                        raise EOFError(f"rows {start}:{stop} of a spilled activation were never written")
                    view = view[got:]
        return band.to(self.device)

    def read_all(self) -> torch.Tensor:
        return self.read(0, self.shape[2])

    def _gather_statistics(self, band: torch.Tensor) -> None:
        # A band's sum and sum of squares in float32 (6x faster than var_mean here; the variance loses
        # ~1e-7 x (1 + mean^2 / variance) of itself), the bands combined in float64 (Chan et al.).
        count = band.shape[2] * band.shape[3]
        values = band.float()
        total_sum = values.sum((2, 3)).double()
        squares = torch.linalg.vector_norm(values, dim=(2, 3)).double() ** 2
        mean = total_sum / count
        m2 = (squares - total_sum * mean).clamp_min(0.0)
        total = self._count + count
        delta = mean - self._mean
        self._mean += delta * (count / total)
        self._m2 += m2 + delta**2 * (self._count * count / total)
        self._count = total

    def group_statistics(self, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per (batch, group) mean and variance (biased, as GroupNorm's) of everything written."""
        batch, channels = self._mean.shape
        mean = self._mean.reshape(batch, groups, channels // groups)
        m2 = self._m2.reshape(batch, groups, channels // groups)
        group_mean = mean.mean(-1)
        group_m2 = m2.sum(-1) + self._count * ((mean - group_mean[..., None]) ** 2).sum(-1)
        return group_mean, group_m2 / (self._count * (channels // groups))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> SpilledActivation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _affine(norm: nn.GroupNorm, x: SpilledActivation) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (batch, channel) ``scale`` and ``shift``: ``norm(x) == x * scale + shift`` over the whole of ``x``."""
    mean, var = x.group_statistics(norm.num_groups)
    per_group = norm.num_channels // norm.num_groups
    scale = torch.rsqrt(var + norm.eps).repeat_interleave(per_group, dim=1)  # (B, C)
    if norm.weight is not None:
        scale = scale * norm.weight.detach().double().cpu()
    shift = -mean.repeat_interleave(per_group, dim=1) * scale
    if norm.bias is not None:
        shift = shift + norm.bias.detach().double().cpu()
    return scale.float()[:, :, None, None].to(x.device), shift.float()[:, :, None, None].to(x.device)


def _input_rows(kind: Resample, start: int, stop: int, height: int) -> tuple[int, int, int]:
    """For output rows ``start:stop`` of a stage: the input rows it reads, and where in its output they start.

    ``same`` (3x3, padding 1) and ``up`` (nearest 2x, then 3x3) need one row of context above and below, at
    input resolution for ``same`` and at the upsampled one for ``up``; ``down`` (pad right and bottom by 1,
    then 3x3 with stride 2) reads rows ``2 * start`` to ``2 * stop``. Where the context falls outside the image,
    the module's own zero padding is the right context, so the band stops at the image's edge.
    """
    if kind == "same":
        first, last = max(start - 1, 0), min(stop + 1, height)
        return first, last, start - first
    if kind == "up":
        first, last = max((start - 1) // 2, 0), min((stop + 2) // 2, height)
        return first, last, start - 2 * first
    return 2 * start, min(2 * stop + 1, height), 0


def _output_size(kind: Resample, size: int) -> int:
    """A side of a stage's output from that of its input (``down``: stride 2 over the input padded by one)."""
    return {"same": size, "up": 2 * size, "down": (size - 2) // 2 + 1}[kind]


def _stage(
    x: SpilledActivation,
    conv: nn.Module,
    kind: Resample = "same",
    *,
    norm: nn.GroupNorm | None = None,
    shortcut: tuple[SpilledActivation, nn.Module] | None = None,
    band_bytes: int = BAND_BYTES,
    work: _Work | None = None,
) -> SpilledActivation:
    """``conv(silu(norm(x)))`` (or ``conv(x)`` without a norm) + ``shortcut[1](shortcut[0])``, band by band.

    ``conv`` is the module itself (a ``Conv2d``, an ``Upsample`` or a ``Downsample``), called on each band so
    that hooks on it (``--medvram``'s) run as in the untiled pass. ``work`` advances by the stage's share after
    every band.
    """
    batch, channels, height, width = x.shape
    out_height, out_width = _output_size(kind, height), _output_size(kind, width)
    out_channels = _conv_of(conv).out_channels
    row_bytes = batch * max(channels, out_channels) * max(width, out_width) * x.dtype.itemsize
    rows = max(1, band_bytes // (row_bytes * (2 if kind == "down" else 1)))
    affine = _affine(norm, x) if norm is not None else None
    work_per_row = _stage_work(conv, out_height, out_width) / out_height
    out = SpilledActivation((batch, out_channels, out_height, out_width), x.dtype, x.device)
    try:
        for start in range(0, out_height, rows):
            stop = min(start + rows, out_height)
            first, last, offset = _input_rows(kind, start, stop, height)
            band = x.read(first, last)
            if affine is not None:
                scale, shift = affine
                band = F.silu(torch.addcmul(shift, band.float(), scale).to(band.dtype), inplace=True)
            result = conv(band)[:, :, offset : offset + stop - start]
            if shortcut is not None:
                skip, project = shortcut
                result += project(skip.read(start, stop))  # the same sum as the block's shortcut(x) + h
            out.write(start, result)
            if work is not None:
                work.advance(work_per_row * (stop - start))
    except BaseException:
        out.close()
        raise
    return out


def _conv_of(module: nn.Module) -> nn.Conv2d:
    """The convolution itself (``Upsample`` and ``Downsample`` wrap theirs)."""
    return module if isinstance(module, nn.Conv2d) else cast(nn.Conv2d, module.conv)


def _stage_work(conv: nn.Module, out_height: int, out_width: int) -> float:
    """A stage's multiply-adds per image: output pixels x input channels x output channels x kernel area."""
    c = _conv_of(conv)
    return out_height * out_width * c.in_channels * c.out_channels * c.kernel_size[0] * c.kernel_size[1]


def _resnet(block: ResnetBlock, x: SpilledActivation, band_bytes: int, work: _Work | None) -> SpilledActivation:
    """``block(x)`` in two stages (CompVis' ``ResnetBlock.forward``)."""
    with _stage(x, block.conv1, norm=block.norm1, band_bytes=band_bytes, work=work) as h:
        shortcut = (x, block.nin_shortcut)
        return _stage(h, block.conv2, norm=block.norm2, shortcut=shortcut, band_bytes=band_bytes, work=work)


def _steps(levels: Iterable[nn.Module]) -> Iterator[nn.Module]:
    """Each :class:`Level`'s resnet blocks, then its resampler if it has one: the order the levels run in."""
    for level in cast(Iterable[Level], levels):
        yield from level.block
        resample = getattr(level, level.resample_name, None)
        if resample is not None:
            yield resample


def _levels(
    levels: Iterable[nn.Module], x: SpilledActivation, kind: Resample, band_bytes: int, work: _Work | None
) -> SpilledActivation:
    """The levels' steps (resamplers of ``kind``). Takes ``x`` over: every input is closed once the stage that
    reads it is done (on an error too); the result is the caller's to close."""
    try:
        for step in _steps(levels):
            if isinstance(step, ResnetBlock):
                x, previous = _resnet(step, x, band_bytes, work), x
            else:
                x, previous = _stage(x, step, kind, band_bytes=band_bytes, work=work), x
            previous.close()
    except BaseException:
        x.close()
        raise
    return x


def _levels_work(levels: Iterable[nn.Module], kind: Resample, height: int, width: int) -> tuple[float, int, int]:
    """What :func:`_levels` will do (in :func:`_stage_work`'s units) on a ``height`` x ``width`` input, and the
    size of its output."""
    total = 0.0
    for step in _steps(levels):
        if isinstance(step, ResnetBlock):
            total += _stage_work(step.conv1, height, width) + _stage_work(step.conv2, height, width)
        else:
            height, width = _output_size(kind, height), _output_size(kind, width)
            total += _stage_work(step, height, width)
    return total, height, width


def decoder_image_part(
    decoder: Decoder, h: torch.Tensor, band_bytes: int = BAND_BYTES, report: ReportFraction | None = None
) -> torch.Tensor:
    """``decoder.image_part(h)`` (the up levels and out), stage by stage; ``report`` gets the fraction done."""
    levels = list(reversed(decoder.up))
    levels_work, height, width = _levels_work(levels, "up", h.shape[2], h.shape[3])
    work = _Work(levels_work + _stage_work(decoder.conv_out, height, width), report)
    features = _levels(levels, SpilledActivation.of(h), "up", band_bytes, work)
    with features, _stage(features, decoder.conv_out, norm=decoder.norm_out, band_bytes=band_bytes, work=work) as out:
        return out.read_all()


def encoder_image_part(
    encoder: Encoder, image: torch.Tensor, band_bytes: int = BAND_BYTES, report: ReportFraction | None = None
) -> torch.Tensor:
    """``encoder.image_part(image)`` (``conv_in`` and the down levels), stage by stage; ``report`` as in
    :func:`decoder_image_part`."""
    height, width = image.shape[2], image.shape[3]
    levels_work = _levels_work(encoder.down, "down", height, width)[0]
    work = _Work(_stage_work(encoder.conv_in, height, width) + levels_work, report)
    with SpilledActivation.of(image) as pixels:
        x = _stage(pixels, encoder.conv_in, band_bytes=band_bytes, work=work)
    with _levels(encoder.down, x, "down", band_bytes, work) as features:
        return features.read_all()
