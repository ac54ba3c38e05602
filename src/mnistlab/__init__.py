"""mnistlab: MNIST-family classifiers trained exactly as the classic TensorFlow programs did.

The package is layered (see DESIGN.md): ``config`` < ``data``, ``models`` < ``parallel``, ``io``
< ``train`` < ``apps``. Nothing heavy runs at import time.
"""

__version__ = "0.1.0"
