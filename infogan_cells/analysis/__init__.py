"""What a trained InfoGAN learned: agreement, codes, morphology, quality, seeds."""
