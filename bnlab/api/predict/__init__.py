"""Single-image inference with BN on population or batch statistics."""
