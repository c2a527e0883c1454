"""Tensors: checkpoints, task vectors and merge methods, in-place and streaming merges, safetensors files, devices."""
