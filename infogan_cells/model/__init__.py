"""The InfoGAN itself: latent space, networks, losses, augmentation, checkpoints."""
