"""Speed-ups that trade a little quality (issue 19), each off by default: token merging and DeepCache.

The names are AUTOMATIC1111's where it has them: the options ``token_merging_ratio``,
``token_merging_ratio_hr`` (hires fix's second pass) and ``token_merging_ratio_img2img``, and the infotext
keys ``Token merging ratio`` / ``Token merging ratio hr`` (written only when not 0). DeepCache, which A1111
lacks, has the options ``deepcache_interval`` (1 = off) and ``deepcache_branch`` and the keys
``DeepCache interval`` / ``DeepCache branch`` (written only when the interval is over 1).

A request's fields left as None take the app's settings (:class:`SpeedupSettings`) when it is submitted, as
A1111's ``get_token_merging_ratio`` does: img2img takes ``token_merging_ratio_img2img`` when that is set, and
the hires pass's ratio 0 falls back on the first pass's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from typing import Any

from webui.models.deep_cache import DeepCache, deep_cache
from webui.models.token_merging import MAX_RATIO, TokenMerging, token_merging
from webui.pipeline.errors import InvalidRequest

MAX_DEEPCACHE_INTERVAL = 10
MAX_DEEPCACHE_BRANCH = 11  # SD 1.x's UNet has 12 input blocks: branch 11 skips only the middle block


def check_ratio(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidRequest(name, f"must be a number, got {value!r}")
    if not 0 <= value <= MAX_RATIO:
        raise InvalidRequest(name, f"must be between 0 and {MAX_RATIO}, got {value:g}")
    return float(value)


def check_whole(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(name, f"must be a whole number, got {value!r}")
    if not low <= value <= high:
        raise InvalidRequest(name, f"must be between {low} and {high}, got {value}")
    return value


_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "token_merging_ratio": check_ratio,
    "token_merging_ratio_hr": check_ratio,
    "token_merging_ratio_img2img": check_ratio,
    "deepcache_interval": lambda n, v: check_whole(n, v, 1, MAX_DEEPCACHE_INTERVAL),
    "deepcache_branch": lambda n, v: check_whole(n, v, 0, MAX_DEEPCACHE_BRANCH),
}
# The request fields (GenerationRequest) of these options; token_merging_ratio_img2img is a setting only.
REQUEST_FIELDS = ("token_merging_ratio", "token_merging_ratio_hr", "deepcache_interval", "deepcache_branch")


@dataclass(frozen=True)
class SpeedupSettings:
    """The app's settings (``GET``/``POST /sdapi/v1/options``), all off by default."""

    token_merging_ratio: float = 0.0
    token_merging_ratio_hr: float = 0.0
    token_merging_ratio_img2img: float = 0.0
    deepcache_interval: int = 1
    deepcache_branch: int = 0

    def options(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def updated(self, options: Mapping[str, Any]) -> SpeedupSettings:
        """These settings with those of ``options`` that are speed-up options changed (others ignored);
        raises :class:`InvalidRequest` naming a bad value."""
        return replace(self, **{name: check(name, options[name]) for name, check in _CHECKS.items() if name in options})

    def fill(self, request: Any) -> dict[str, Any]:
        """The values of ``request``'s speed-up fields left as None (the changes to make to it)."""
        img2img = request.mode == "img2img"
        defaults = {
            "token_merging_ratio": self.token_merging_ratio_img2img or self.token_merging_ratio
            if img2img
            else self.token_merging_ratio,
            "token_merging_ratio_hr": self.token_merging_ratio_hr,
            "deepcache_interval": self.deepcache_interval,
            "deepcache_branch": self.deepcache_branch,
        }
        return {name: value for name, value in defaults.items() if getattr(request, name, 0) is None}

    def filled(self, request: Any) -> Any:
        """``request`` with its None speed-up fields set from these settings, a script's cells' included."""
        plan = getattr(request, "script", None)
        if plan is not None:
            cells = tuple(replace(cell, request=self.filled(cell.request)) for cell in plan.cells)
            request = replace(request, script=replace(plan, cells=cells))
        return replace(request, **self.fill(request))


def overrides(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The request fields that an API request's ``override_settings`` sets (checked when it is resolved)."""
    return {name: settings[name] for name in REQUEST_FIELDS if name in settings}


@dataclass(frozen=True)
class Speedups:
    """What one job uses: ``token_merging_ratio_hr`` is the hires pass's own (already fallen back)."""

    token_merging_ratio: float = 0.0
    token_merging_ratio_hr: float = 0.0
    deepcache_interval: int = 1
    deepcache_branch: int = 0

    @classmethod
    def checked(cls, values: Mapping[str, Any]) -> Speedups:
        """From request fields (None: off); raises :class:`InvalidRequest` naming a bad one."""
        given = {name: _CHECKS[name](name, values[name]) for name in REQUEST_FIELDS if values.get(name) is not None}
        speedups = cls(**given)
        if not speedups.token_merging_ratio_hr:
            speedups = replace(speedups, token_merging_ratio_hr=speedups.token_merging_ratio)
        return speedups

    def infotext(self, hires: bool) -> dict[str, Any]:
        """The infotext keys, A1111's order and rules (None: not written)."""
        on = self.deepcache_interval > 1
        return {
            "Token merging ratio": self.token_merging_ratio or None,
            "Token merging ratio hr": self.token_merging_ratio_hr if hires and self.token_merging_ratio_hr else None,
            "DeepCache interval": self.deepcache_interval if on else None,
            "DeepCache branch": self.deepcache_branch if on else None,
        }

    @contextmanager
    def applied(self, unet: Any, *, hires: bool = False) -> Iterator[None]:
        """While inside, ``unet`` merges tokens and caches features as this job's (hires) pass asks.

        Enter it once per sampling pass: DeepCache's features never outlive it."""
        ratio = self.token_merging_ratio_hr if hires else self.token_merging_ratio
        if not ratio and self.deepcache_interval == 1:
            yield
            return
        blocks = len(unet.input_blocks)
        if self.deepcache_interval > 1 and self.deepcache_branch >= blocks:
            raise InvalidRequest("deepcache_branch", f"this model's UNet has branches 0 to {blocks - 1}")
        with deep_cache(unet, DeepCache(self.deepcache_interval, self.deepcache_branch)):
            with token_merging(unet, TokenMerging(ratio)):
                yield
