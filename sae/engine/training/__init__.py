"""SAE training: the loop (`loop`), its one config (`config`), the step maths (`steps`), the lr schedule
(`schedule`), dead-latent resampling (`resampling`), sweeps (`sweep`) and data parallelism (`distributed`)."""
