"""The `train` step: every training run of the paper (VGG on CIFAR-10, the deep linear network), resumable."""
