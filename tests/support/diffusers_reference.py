"""The tiny random-weight model as diffusers modules: the reference that parity tests compare against."""

from __future__ import annotations

from typing import Any


def build_diffusers_parts(tiny_components: Any) -> dict[str, Any]:
    """diffusers' UNet and VAE with the tiny model's weights (through diffusers' own key converters), and its
    text encoder and tokenizer: the parts of a diffusers pipeline equal to the tiny checkpoint."""
    import diffusers
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    from webui.models.checkpoint import single_file_state_dict

    c = tiny_components
    state = single_file_state_dict(c.unet, c.vae, c.text_model)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=128,
        attention_head_dim=8,
    )
    unet.load_state_dict(convert_ldm_unet_checkpoint(state, dict(unet.config)))
    vae = diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        sample_size=64,
    )
    vae.load_state_dict(convert_ldm_vae_checkpoint(state, dict(vae.config)))
    return {"unet": unet.eval(), "vae": vae.eval(), "text_encoder": c.text_model, "tokenizer": c.tokenizer}
