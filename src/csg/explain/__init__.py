"""Explain one image: the prediction, the filters that gave most to it, their gate classes and maps."""
from .core import Explanation, FilterContribution, explain, explain_run, explanation_figure, load_image

__all__ = ["Explanation", "FilterContribution", "explain", "explain_run", "explanation_figure", "load_image"]
