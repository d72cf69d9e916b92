"""The engine: models and the z convention, activations, the SAE module, training, metrics, SAE file formats.

May import only torch, numpy, safetensors, transformer-lens and other modules of `sae.engine`; it knows no embedded default."""
