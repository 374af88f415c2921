"""scikit-learn integration (``pip install 'bbt[sklearn]'``): :class:`BBTClassifier`."""

from bbt.sklearn.estimator import BBTClassifier

__all__ = ["BBTClassifier"]
