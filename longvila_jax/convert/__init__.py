"""longvila_jax.convert"""
