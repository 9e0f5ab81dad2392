"""CycleGAN-style image translation: networks, losses and the fake-image history pool."""
