"""The inference pre-processing: one image as every program that runs a trained model sees it.

Evaluation (`paa_tf.data.pipeline` with `is_training=False`), test-time augmentation
(`paa_tf.inference.tta`), `paa_predict` (`paa_tf.visualization.predict`), `paa_visualize`
(`paa_tf.visualization.assignment`) and the exported SavedModel (`paa_tf.serving.export`)
all call `InferencePreprocess`, so a picture shows what is scored and served.

One decoded image (uint8 [h, w, 3], EXIF orientation applied by `transforms.decode_image`):
1. normalised ((x - mean) / std) and resized so that its shorter side is `shorter_side`, its
   longer side at most `max_size` and both fit the canvas `image_size` (`transforms`);
2. optionally mirrored left-right (a test-time view);
3. zero-padded bottom/right (zero is the mean colour) to
   - the `canvas` a caller passes (an orientation bucket shared by a batch), else
   - the smallest multiple of `pad_multiple` (32 with `data.buckets: orientation`) holding
     it: what the authors' code does at test time with one image per GPU, and what the
     export does for each image of a request, else
   - the square canvas `image_size` (`data.buckets: square`).

Detections of one image depend on its padding (the head's GroupNorm statistics span the
padded map, and features near the bottom/right edge see the padding through their receptive
field): `docs/SIZES.md` gives the measured effect of the batch's bucket against its own
multiple of 32. A model trained with orientation buckets and run on a much larger canvas
sees padding it never saw in training.
"""

import dataclasses
from typing import Tuple

import tensorflow as tf

from paa_tf.data import buckets, transforms


@dataclasses.dataclass(frozen=True)
class InferencePreprocess:
    """Pre-processing settings of one evaluation scale (all from the experiment config).

    `image_size` (H, W) bounds the resize, and is the padded shape when `pad_multiple` is 0
    and no `canvas` is given; `pad_multiple` > 0 pads each image to its own multiple.
    """
    shorter_side: int
    max_size: int
    image_size: Tuple[int, int]
    pixel_mean: Tuple[float, ...]
    pixel_std: Tuple[float, ...]
    pad_multiple: int = 0

    @classmethod
    def from_config(cls, config, shorter_side=None, max_size=None, image_size=None):
        """The evaluation pre-processing of an `ExperimentConfig` (`from_data_config`)."""
        return cls.from_data_config(config.data, shorter_side, max_size, image_size)

    @classmethod
    def from_data_config(cls, data, shorter_side=None, max_size=None, image_size=None):
        """The evaluation pre-processing of a `DataConfig`: `data.eval_shorter_side`,
        `data.max_size`, the canvas `data.image_size`, each image padded to its own multiple
        of 32 with `data.buckets: orientation`. Test-time views and the export pass their own
        `shorter_side` / `max_size` / `image_size`."""
        own = buckets.mode_of(data) == "orientation"
        return cls(
            shorter_side=int(data.eval_shorter_side if shorter_side is None else shorter_side),
            max_size=int(data.max_size if max_size is None else max_size),
            image_size=tuple(int(s) for s in (data.image_size if image_size is None
                                              else image_size)),
            pixel_mean=tuple(float(v) for v in data.pixel_mean),
            pixel_std=tuple(float(v) for v in data.pixel_std),
            pad_multiple=buckets.STRIDE if own else 0)

    def resized(self, image, flip=False):
        """uint8 [h, w, 3] -> (float32 [h', w', 3] normalised and resized, unpadded;
        image_info float32 [4, 2], see `transforms`), mirrored left-right after resizing
        when `flip`."""
        # float32 first: the same values in TensorFlow, whose bilinear resize turns uint8
        # into float32, while ONNX's Resize keeps uint8 (an exported graph converted by
        # tf2onnx would subtract the mean from uint8 pixels).
        resized, image_info = transforms.resize_image(
            tf.cast(image, tf.float32), self.shorter_side, self.max_size, self.image_size,
            self.pixel_mean, self.pixel_std)
        if flip:
            resized = tf.reverse(resized, axis=[1])
        return resized, image_info

    def padded_size(self, resized_size):
        """The padded (H', W') of an image resized to `resized_size` (int32 [2]): its own
        multiple of `pad_multiple` (tensors), or the canvas `image_size` (Python ints)."""
        if self.pad_multiple:
            return tf.unstack(buckets.round_up(resized_size, self.pad_multiple))
        return self.image_size

    def __call__(self, image, flip=False, canvas=None):
        """uint8 [h, w, 3] -> (float32 [H', W', 3] normalised and padded, image_info [4, 2]).

        `canvas` (H, W), when given, is the padded shape (the batch's bucket; the resize is
        then bounded by it too); otherwise `padded_size` decides. The shape is static unless
        each image gets its own multiple.
        """
        if canvas is not None:
            canvas = tuple(canvas)
            return dataclasses.replace(self, image_size=canvas, pad_multiple=0)(image, flip)
        resized, image_info = self.resized(image, flip)
        return transforms.pad_image(resized, self.padded_size(tf.shape(resized)[:2])), image_info
