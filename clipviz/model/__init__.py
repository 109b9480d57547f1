"""The hooked model: loading from every backend, architecture inspection, hook points and token layouts."""
