"""Sampler plugins: discovery order, lookup, a pip-installed example package, and broken plugins being skipped."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from webui.models.noise_schedule import scaled_linear_alphas_cumprod
from webui.sampling import (
    DiscreteEpsDenoiser,
    Sampler,
    UnknownSamplerError,
    create_sampler_registry,
    sample,
)

BUILTINS = [
    "DDIM",
    "DDPM",
    "DEIS",
    "DPM2",
    "DPM2 a",
    "DPM++ 2M",
    "DPM++ 2S a",
    "DPM++ SDE",
    "DPM++ 2M SDE",
    "DPM++ 2M SDE Heun",
    "DPM++ 3M SDE",
    "Euler",
    "Euler a",
    "Heun",
    "LCM",
    "LMS",
    "PLMS",
    "Restart",
    "UniPC",
]
EXAMPLE = Path(__file__).parent / "plugins" / "webui-sampler-midpoint"


def toy_eps(x_in: torch.Tensor, t: torch.Tensor, step: int = 0) -> torch.Tensor:
    tt = (t / 1000).reshape(-1, 1, 1, 1)
    return torch.tanh(0.8 * x_in + 0.3 * torch.sin(5 * tt + x_in.roll(1, dims=-1))) * (0.5 + tt)


def generate(sampler: Sampler, steps: int = 8) -> torch.Tensor:
    alphas_cumprod = scaled_linear_alphas_cumprod()
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    return sample(
        sampler,
        DiscreteEpsDenoiser(toy_eps, alphas_cumprod),
        noise,
        steps=steps,
        alphas_cumprod=alphas_cumprod,
        generator=torch.Generator().manual_seed(1),
    )


def write_plugin(folder: Path, name: str, body: str) -> Path:
    path = folder / f"{name}.py"
    path.write_text("from webui.sampling import Sampler, hookimpl\n\n" + textwrap.dedent(body))
    return path


GOOD = """
def sample_copy(model, x, sigmas, *, generator, callback=None):
    for i in range(len(sigmas) - 1):
        x = model(x, sigmas[i])
    return x

@hookimpl
def register_samplers(register):
    register(Sampler(name="{name}", function=sample_copy, aliases=("{alias}",)))
"""


def test_builtins_are_registered_with_metadata_and_no_warnings():
    registry = create_sampler_registry()
    assert registry.names == BUILTINS
    assert registry.warnings == []
    assert registry.sources["Euler a"] == "samplers.euler"
    euler_a, ddim = registry.get("Euler a"), registry.get("DDIM")
    assert euler_a.stochastic and not ddim.stochastic
    assert dict(euler_a.options) == {"eta": 1.0, "s_noise": 1.0} and dict(ddim.options) == {"eta": 0.0}
    assert ddim.schedules is None and ddim.supports("Karras")  # None: every registered schedule
    assert (ddim.automatic, registry.get("DDPM").automatic) == ("leading-offset", "leading")


def test_lookup_is_case_insensitive_and_knows_aliases():
    registry = create_sampler_registry()
    assert registry.get("euler A").name == "Euler a"
    assert registry.get("k_euler_a").name == "Euler a"
    assert registry.get("K_DPMPP_2M").name == "DPM++ 2M"
    assert "lms" in registry and "nope" not in registry


def test_unknown_sampler_error_lists_available_names():
    with pytest.raises(
        UnknownSamplerError,
        match=r"'Nope'; available: DDIM, DDPM, DEIS, DPM2, DPM2 a, DPM\+\+ 2M, .*, LMS, PLMS, Restart, UniPC$",
    ):
        create_sampler_registry().get("Nope")
    assert issubclass(UnknownSamplerError, ValueError)


def test_importing_the_package_builds_no_registry():
    code = "import sys, webui.sampling; print('samplers' in sys.modules, 'samplers.euler' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_local_folder_plugins_load_after_builtins(tmp_path):
    write_plugin(tmp_path, "copy_sampler", GOOD.format(name="Copy", alias="cp"))
    package = tmp_path / "packaged"
    package.mkdir()
    (package / "__init__.py").write_text("from .impl import register_samplers  # noqa: F401\n")
    write_plugin(package, "impl", GOOD.format(name="Packaged", alias="pk"))
    (tmp_path / "_private.py").write_text("raise RuntimeError('never imported')\n")
    (tmp_path / "notes.txt").write_text("not a plugin")
    registry = create_sampler_registry(tmp_path)
    assert registry.warnings == []
    assert registry.names == [*BUILTINS, "Copy", "Packaged"]
    assert registry.get("cp").name == "Copy" and registry.get("PK").name == "Packaged"
    assert registry.sources["Copy"] == str(tmp_path / "copy_sampler.py")
    assert generate(registry.get("Copy")).shape == (1, 4, 8, 8)


def sample_identity(model, x, sigmas, *, generator, callback=None):
    return x


def test_aliases_repeating_the_name_are_dropped():
    sampler = Sampler(name=" Mine ", function=sample_identity, aliases=("mine", "MY", "my", "k_mine"))
    assert sampler.name == "Mine" and sampler.aliases == ("MY", "k_mine")
    assert sampler.names == ("Mine", "MY", "k_mine")


def test_options_are_the_keyword_only_parameters_of_the_function_with_their_defaults():
    def sample_mine(
        model,
        x,
        sigmas,
        extra=None,
        *,
        generator,
        callback=None,
        eta: float = 0.5,
        order: int = 2,
        karras: bool = False,
        mode: str = "fast",
        **more,
    ):
        return x

    assert dict(Sampler(name="Mine", function=sample_mine).options) == {
        "eta": 0.5,
        "order": 2,
        "karras": False,
        "mode": "fast",
    }
    assert dict(Sampler(name="Plain", function=sample_identity).options) == {}
    registry = create_sampler_registry()
    assert {s.name: dict(s.options) for s in registry} == {
        "DDIM": {"eta": 0.0},
        "DDPM": {},
        "DEIS": {"order": 2},
        "DPM2": {},
        "DPM2 a": {"eta": 1.0, "s_noise": 1.0},
        "DPM++ 2M": {},
        "DPM++ 2S a": {"eta": 1.0, "s_noise": 1.0},
        "DPM++ SDE": {"eta": 1.0, "s_noise": 1.0, "r": 0.5},
        "DPM++ 2M SDE": {"eta": 1.0, "s_noise": 1.0, "noise": "brownian"},
        "DPM++ 2M SDE Heun": {"eta": 1.0, "s_noise": 1.0, "noise": "brownian"},
        "DPM++ 3M SDE": {"eta": 1.0, "s_noise": 1.0, "noise": "brownian"},
        "Euler": {"s_churn": 0.0, "s_noise": 1.0},
        "Euler a": {"eta": 1.0, "s_noise": 1.0},
        "Heun": {"s_churn": 0.0, "s_noise": 1.0},
        "LCM": {},
        "LMS": {"order": 4},
        "PLMS": {},
        "Restart": {"s_noise": 1.0},
        "UniPC": {"order": 2, "variant": "bh2"},
    }
    with pytest.raises(TypeError, match="options"):
        Sampler(name="Twice", function=sample_mine, options={"eta": 0.5})  # no second place to write them


def test_the_types_a_plugin_needs_come_from_webui_sampling():
    import webui.sampling
    from samplers import ddim, ddpm, dpmpp_2m, euler, heun, lms

    assert {"Model", "Generator", "StepCallback", "Sampler", "hookimpl"} <= set(webui.sampling.__all__)
    for module in (ddim, ddpm, dpmpp_2m, euler, heun, lms):
        assert module.Model is webui.sampling.Model and module.Generator is webui.sampling.Generator


def test_missing_samplers_dir_is_not_an_error(tmp_path):
    registry = create_sampler_registry(tmp_path / "does-not-exist")
    assert registry.names == BUILTINS and registry.warnings == []


BROKEN = {
    "import_error": (
        "import does_not_exist_anywhere\n",
        "failed to load: ModuleNotFoundError: No module named 'does_not_exist_anywhere'",
    ),
    "raises": (
        """
        @hookimpl
        def register_samplers(register):
            raise RuntimeError("boom")
        """,
        "register_samplers() raised RuntimeError: boom",
    ),
    "duplicate": (
        GOOD.format(name="euler", alias="my_euler"),
        "sampler name 'euler' is registered already by 'samplers.euler'",
    ),
    "duplicate_alias": (
        GOOD.format(name="Fine name", alias="K_LMS"),
        "sampler name 'K_LMS' is registered already by 'samplers.lms'",
    ),
    "not_a_sampler": (
        """
        @hookimpl
        def register_samplers(register):
            register({"name": "Dict sampler", "function": print})
        """,
        "register() got a dict, not a webui.sampling.Sampler",
    ),
    "malformed_sampler": (
        """
        @hookimpl
        def register_samplers(register):
            register(Sampler(name="Bad", function=None))
        """,
        "register_samplers() raised ValueError: Sampler 'Bad': function must be callable, got None",
    ),
    "bad_schedule": (
        """
        def f(model, x, sigmas, *, generator, callback=None):
            return x

        @hookimpl
        def register_samplers(register):
            register(Sampler(name="Bad", function=f, schedules=("cosine",)))
        """,
        "sampler 'Bad': Unknown schedule 'cosine'; choose one of Automatic, Karras, Exponential",
    ),
    "option_without_default": (
        """
        def sample_strict(model, x, sigmas, *, generator, callback=None, eta):
            return x

        @hookimpl
        def register_samplers(register):
            register(Sampler(name="Strict", function=sample_strict))
        """,
        "Sampler 'Strict': option 'eta' has no default; every keyword-only parameter of 'sample_strict' besides "
        "generator and callback is an option and needs one",
    ),
    "option_default_of_another_type": (
        """
        def sample_listed(model, x, sigmas, *, generator, callback=None, orders=(1, 2)):
            return x

        @hookimpl
        def register_samplers(register):
            register(Sampler(name="Listed", function=sample_listed))
        """,
        "Sampler 'Listed': option 'orders' default must be a finite bool, int, float or str, got (1, 2)",
    ),
    "no_hook": (
        "def register_samplers(register):\n    pass\n",
        "it defines no @hookimpl register_samplers(register) function",
    ),
    "wrong_hook_argument": (
        """
        @hookimpl
        def register_samplers(registry):
            pass
        """,
        "invalid hook",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_plugin_is_skipped_with_one_warning_and_the_rest_keep_working(tmp_path, case, caplog):
    body, reason = BROKEN[case]
    path = write_plugin(tmp_path, f"broken_{case}", body)
    write_plugin(tmp_path, "zz_good", GOOD.format(name="Good one", alias="good"))
    with caplog.at_level("WARNING", logger="webui.sampling.registry"):
        registry = create_sampler_registry(tmp_path)
    assert len(registry.warnings) == 1
    assert registry.warnings[0].startswith(f"Sampler plugin '{path}' skipped: ")
    assert reason in registry.warnings[0]
    assert [r.getMessage() for r in caplog.records] == registry.warnings
    assert registry.names == [*BUILTINS, "Good one"]
    assert registry.get("euler").name == "Euler"  # the builtin, not the duplicate
    assert torch.isfinite(generate(registry.get("Euler"), steps=4)).all()


def test_a_plugin_is_all_or_nothing(tmp_path):
    write_plugin(
        tmp_path,
        "half_good",
        """
        def f(model, x, sigmas, *, generator, callback=None):
            return x

        @hookimpl
        def register_samplers(register):
            register(Sampler(name="First", function=f))
            register(Sampler(name="Heun", function=f))
        """,
    )
    registry = create_sampler_registry(tmp_path)
    assert "First" not in registry and registry.names == BUILTINS
    assert registry.warnings == [
        f"Sampler plugin '{tmp_path / 'half_good.py'}' skipped: sampler name 'Heun' is registered already by "
        "'samplers.heun'"
    ]


def test_a_misspelled_hook_is_caught_by_check_pending(tmp_path):
    write_plugin(
        tmp_path,
        "typo",
        GOOD.format(name="Typo", alias="typo_alias") + "\n@hookimpl\ndef register_sampler(register):\n    pass\n",
    )
    registry = create_sampler_registry(tmp_path)
    assert "Typo" not in registry and registry.names == BUILTINS
    assert len(registry.warnings) == 1 and "unknown hook 'register_sampler'" in registry.warnings[0]


@pytest.fixture
def installed_example(tmp_path):
    """pip-install the example plugin package (offline, no deps), uninstall it afterwards."""
    pytest.importorskip("setuptools.build_meta", reason="--no-build-isolation builds with the venv's setuptools")
    source = shutil.copytree(EXAMPLE, tmp_path / EXAMPLE.name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--no-deps", "--no-build-isolation", str(source)], check=True)
    importlib.invalidate_caches()
    try:
        yield
    finally:
        subprocess.run([*pip, "uninstall", "-y", "webui-sampler-midpoint"], check=True)
        sys.modules.pop("webui_sampler_midpoint", None)
        importlib.invalidate_caches()


@pytest.mark.slow  # pip builds, installs and uninstalls a package: several seconds
def test_pip_installed_plugin_is_listed_and_generates(installed_example):
    registry = create_sampler_registry()
    assert registry.warnings == []
    assert registry.names == [*BUILTINS, "Midpoint"]
    assert registry.sources["Midpoint"] == "midpoint (webui_sampler_midpoint)"
    midpoint = registry.get("RK2")
    calls = []
    infos = []
    alphas_cumprod = scaled_linear_alphas_cumprod()

    def counting_eps(x_in: torch.Tensor, t: torch.Tensor, step: int = 0) -> torch.Tensor:
        calls.append(t)
        return toy_eps(x_in, t)

    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    common = dict(steps=20, alphas_cumprod=alphas_cumprod, generator=torch.Generator().manual_seed(1))
    out = sample(midpoint, DiscreteEpsDenoiser(counting_eps, alphas_cumprod), noise, callback=infos.append, **common)
    assert len(calls) == 2 * 19 + 1 and [i["i"] for i in infos] == list(range(20))
    heun = sample(registry.get("Heun"), DiscreteEpsDenoiser(toy_eps, alphas_cumprod), noise, **common)
    assert ((out - heun).norm() / heun.norm()).item() < 2e-2  # two second-order solvers of the same ODE
