"""livedoc's shared modules: the pieces that are neither a blueprint nor a worker."""
