"""Baton's models: pure nn.Modules (no optimizers, data or training code)."""
