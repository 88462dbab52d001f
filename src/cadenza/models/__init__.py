"""Pure torch modules: the Transformer-XL generator and sampling. No I/O, no tracking."""
