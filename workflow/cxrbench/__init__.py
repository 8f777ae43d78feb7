"""cxrbench: reproduce and extend Tayebi Arasteh et al. (arXiv 2308.07688) on chest radiographs."""

__version__ = "0.1.0"
