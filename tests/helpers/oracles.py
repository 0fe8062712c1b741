"""Independent compositions the tests compare the library's code paths with."""

from paa_tf.data import transforms


def canvas_preprocess(image, *, shorter_side, max_size, image_size, pixel_mean, pixel_std):
    """The square-canvas evaluation input composed from `transforms` directly (not through
    `InferencePreprocess`): uint8 [h, w, 3] -> (float32 [H, W, 3] resized, normalised and
    zero-padded bottom/right to `image_size`, image_info float32 [4, 2])."""
    resized, info = transforms.resize_image(image, shorter_side, max_size, image_size,
                                            pixel_mean, pixel_std)
    return transforms.pad_image(resized, image_size), info
