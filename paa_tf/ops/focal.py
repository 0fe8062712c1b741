"""Sigmoid focal loss (Lin et al. 2017), element-wise."""

import tensorflow as tf


def sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0):
    """Focal loss of each logit against a {0, 1} target, without reduction.

    FL = −α_t (1 − p_t)^γ log p_t, with p_t = σ(z) for a positive target and
    1 − σ(z) otherwise; α_t = α for positives and 1 − α for negatives.

    Args:
      logits: float [...] class logits (cast to float32: losses stay float32
        under mixed precision).
      targets: float [...] of 0/1, same shape.
    Returns:
      float32 [...] loss per element.
    """
    logits = tf.cast(logits, tf.float32)
    targets = tf.cast(targets, tf.float32)
    probs = tf.sigmoid(logits)
    # The stable BCE avoids log(0) for saturated logits.
    ce = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits)
    p_t = probs * targets + (1.0 - probs) * (1.0 - targets)
    alpha_t = alpha * targets + (1.0 - alpha) * (1.0 - targets)
    return alpha_t * tf.pow(1.0 - p_t, gamma) * ce
