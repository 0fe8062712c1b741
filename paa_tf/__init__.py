"""paa-tf: PAA (Probabilistic Anchor Assignment with IoU Prediction) in TensorFlow/Keras.

Keras 3 must stay out of the process: its layers inside a tf_keras model are
silently left untracked. With TF_USE_LEGACY_KERAS=1 (set before TensorFlow is
first imported) `tf.keras` is tf_keras and TensorFlow does not import Keras 3.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

__version__ = "0.1.0"
