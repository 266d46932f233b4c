"""LoRAs, textual-inversion embeddings and VAE files from the user's folders (AUTOMATIC1111's "extra networks")."""
