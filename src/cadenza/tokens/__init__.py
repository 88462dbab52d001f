"""Tokenization: miditok tokenizers from params, augmentation, encoding to flat arrays."""
