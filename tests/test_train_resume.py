"""``python -m webui.train demo`` on a tiny configuration: ships a loadable file, resumes exactly."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from webui.models.vae import AutoencoderKL, VAEConfig
from webui.train import demo
from webui.train.checkpointing import load_state
from webui.train.diffusion_training import DiffusionTrainConfig
from webui.train.text_pretraining import TextPretrainConfig
from webui.train.vae_training import VAETrainConfig, normalize_latents

TINY = demo.DemoArchitecture(
    image_size=32,
    vae=VAEConfig(ch=32, ch_mult=(1, 1, 1, 1), num_res_blocks=1),
    unet_channels=32,
    unet_mult=(1, 2),
    unet_res_blocks=1,
    unet_attention=(2,),
    text_width=64,
    text_layers=1,
)


def tiny_options(tmp_path, **changes) -> demo.DemoOptions:
    options = demo.DemoOptions(
        run_dir=tmp_path / "run",
        ship_dir=tmp_path / "ship",
        vae=VAETrainConfig(steps=4, batch_size=2, crop=32, image_size=32, bf16=False),
        text=TextPretrainConfig(steps=4, batch_size=4),
        diffusion=DiffusionTrainConfig(steps=4, batch_size=2, pool_size=8, image_size=32),
        architecture=TINY,
        checkpoint_every=2,
        sample_every=1000,
        threads=None,
    )
    return replace(options, **changes)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("uninterrupted")
    options = tiny_options(tmp_path)
    return options, demo.run_demo(options)


@pytest.mark.slow
def test_run_writes_logs_samples_and_ships_a_file_the_app_loads(finished):
    from webui.models.loading import load_model
    from webui.pipeline import generate, resolve_request
    from webui.pipeline.requests import GenerationRequest
    from webui.sampling import create_sampler_registry

    options, path = finished
    assert path == options.ship_dir / "demo.safetensors"
    assert (options.ship_dir / "tokenizer" / "vocab.json").is_file()
    assert (options.run_dir / "log.jsonl").read_text().count('"phase": "diffusion"') >= 1
    assert list((options.run_dir / "samples").glob("step-000004.png"))
    model = load_model(path, native_size=(32, 32))
    assert model.unet.config == TINY.unet_config() and model.vae.config == TINY.vae
    state = load_state(options.run_dir / "diffusion.pt")
    for key, tensor in state["ema_unet"].items():
        assert torch.equal(model.unet.state_dict()[key], tensor), key
    request = GenerationRequest(prompt="a red circle", steps=2, seed=1, width=64, height=64)  # the app's minimum
    assert generate(model, resolve_request(request, create_sampler_registry(), (32, 32))).images[0].size == (64, 64)


@pytest.mark.slow
def test_the_pretrained_text_encoder_stays_fixed_while_the_unet_trains(finished):
    options, _ = finished
    pretrained = load_state(options.run_dir / "text.pt")["text"]
    state = load_state(options.run_dir / "diffusion.pt")
    for name, tensor in pretrained.items():
        assert torch.equal(state["text"][name], tensor) and torch.equal(state["ema_text"][name], tensor), name
    assert state["optimizer"]["state"]  # the UNet did train


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["vae", "text", "diffusion"])
def test_an_interrupted_run_resumes_to_the_same_weights(finished, tmp_path, monkeypatch, phase):
    options = tiny_options(tmp_path, ship_dir=None)
    original = demo.Phase.__call__

    def interrupt_after_step_2(self, step, losses):
        original(self, step, losses)
        if self.name == phase and step == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(demo.Phase, "__call__", interrupt_after_step_2)
    with pytest.raises(KeyboardInterrupt):
        demo.run_demo(options)
    assert load_state(options.run_dir / f"{phase}.pt")["step"] == 3
    monkeypatch.setattr(demo.Phase, "__call__", original)
    with pytest.raises(SystemExit, match="--resume"):
        demo.run_demo(options)
    demo.run_demo(replace(options, resume=True))

    reference = load_state(finished[0].run_dir / "diffusion.pt")
    resumed = load_state(options.run_dir / "diffusion.pt")
    assert resumed["step"] == reference["step"] == 4
    for key in ("ema_unet", "ema_text"):
        for name, tensor in reference[key].items():
            assert torch.equal(resumed[key][name], tensor), (key, name)


def test_latent_normalisation_keeps_reconstructions_and_gives_unit_scaled_latents():
    torch.manual_seed(0)
    vae = AutoencoderKL(VAEConfig(ch=32, ch_mult=(1, 1), num_res_blocks=1)).eval()
    x = torch.rand(16, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        before = vae.decode(vae.encode(x)[0])
        normalize_latents(vae, vae.encode(x)[0])
        mean, _ = vae.encode(x)
        after = vae.decode(mean)
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)
    scaled = mean * vae.config.scale_factor
    per_channel = scaled.transpose(0, 1).reshape(4, -1)
    torch.testing.assert_close(per_channel.mean(dim=1), torch.zeros(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(per_channel.std(dim=1), torch.ones(4), atol=1e-4, rtol=0)


def test_the_latent_pool_is_encoded_again_when_its_scenes_change(tmp_path, monkeypatch, capsys):
    """pool.pt keeps only latents; the scenes come from the seed. Saved latents of other scenes
    (the data code changed since) must not be paired with the new scenes' captions."""
    from webui.train import diffusion_training

    options = tiny_options(tmp_path)
    options.run_dir.mkdir(parents=True)
    torch.manual_seed(0)
    vae = AutoencoderKL(TINY.vae).eval()
    first = demo.get_pool(options, vae, torch.device("cpu"))
    again = demo.get_pool(options, vae, torch.device("cpu"))
    assert torch.equal(first.means, again.means) and "encoding the pool again" not in capsys.readouterr().out

    original = diffusion_training.pool_scenes

    def other_scenes(seed, count):  # as if random_scene had changed
        return original(seed + 1, count)

    monkeypatch.setattr(demo, "pool_scenes", other_scenes)
    changed = demo.get_pool(options, vae, torch.device("cpu"))
    assert "encoding the pool again" in capsys.readouterr().out
    assert changed.scenes == other_scenes(options.diffusion.seed, options.diffusion.pool_size)
    assert not torch.equal(changed.means, first.means)
