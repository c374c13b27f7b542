"""prunekit: pruning neural networks and their training data, on PyTorch."""
