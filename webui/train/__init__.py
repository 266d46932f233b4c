"""Training the bundled demo model: procedural data, tokenizer, VAE and diffusion phases, shipping.

Entry point: ``python -m webui.train demo`` (see :mod:`webui.train.__main__`).
"""
