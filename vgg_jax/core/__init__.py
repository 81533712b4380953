"""The core: the VGG networks (models, winograd), how inputs are normalised, checkpoints and
model directories (checked as untrusted input), compilation, sharding, devices and the command
lines' shared flags. Every wing builds on it; it imports no wing.
"""
