"""Reference companion to *Adaptive Adversarial Logits Pairing* (Wu et al., arXiv 2005.11904).

Inputs are images in [0, 1]; every model normalises as its first layer. See the book for what is taken
from the paper's abstract and what is our reconstruction.
"""

__version__ = "0.1.0"
