"""Caption attacks on CNN+LSTM captioners: the probes, the GAN, target goals and result tables."""
