"""Training an InfoGAN on a crop store: device data, the step, averaging, run directory, the loop."""
