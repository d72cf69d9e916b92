"""SAE training: the loop (`loop`), its one config (`config`), the step kernels (`steps`; each architecture's step
is its `sae.engine.autoencoder` registry class), the lr schedule (`schedule`), dead-latent resampling
(`resampling`), sweeps (`sweep`), data parallelism and the torchrun launcher (`distributed`) and the run's files
(`checkpoint`)."""
