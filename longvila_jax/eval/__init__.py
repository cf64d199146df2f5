"""Evaluation: V-NIAH (``vniah``, ``needles``, ``haystack``, ``heatmap``, ``scoring``) and video
multiple-choice QA in the VideoMME format (``mcq``, ``mcq_data``, ``choice``); ``longvila-jax eval``."""

from longvila_jax.eval.mcq import ModelAnswerer, run_mcq
from longvila_jax.eval.vniah import VNIAHConfig, run_vniah

__all__ = ["run_vniah", "VNIAHConfig", "run_mcq", "ModelAnswerer"]
