"""Model loaders behind one generation interface (see :mod:`backends.base`)."""
