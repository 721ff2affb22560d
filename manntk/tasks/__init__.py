"""Tasks: the paper's algorithmic tasks, permuted-pixel MNIST and character-level language modelling."""
