"""The common-corruption probe (CIFAR-10-C / ImageNet-C style) and its metrics."""
