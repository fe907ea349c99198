"""Device-side batch transforms."""

import torch

from tl_space.transforms import Preprocessing, preprocessing_for, random_crop_flip, to_model_input


def test_crop_flip_keeps_shape_dtype_and_moves_pixels():
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    augmented = random_crop_flip(images, torch.Generator().manual_seed(0))
    assert augmented.shape == images.shape and augmented.dtype == torch.uint8
    changed = (augmented != images).flatten(1).any(dim=1)
    assert changed.float().mean() > 0.9  # nearly every image is shifted or flipped


def test_crop_flip_is_a_shifted_or_mirrored_window_of_the_padded_image():
    image = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4).expand(1, 3, 4, 4).contiguous()
    padded = torch.nn.functional.pad(image.float(), (1, 1, 1, 1), mode="reflect")
    windows = [padded[..., y:y + 4, x:x + 4] for y in range(3) for x in range(3)]
    windows += [w.flip(-1) for w in windows]
    for seed in range(10):
        out = random_crop_flip(image, torch.Generator().manual_seed(seed)).float()
        assert any(torch.equal(out, w) for w in windows)


def test_model_input_uses_the_config_mean_std_and_size():
    preprocessing = preprocessing_for({"input_size": (3, 224, 224), "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25),
                                       "interpolation": "bilinear"}, image_size=48)
    assert preprocessing == Preprocessing(48, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "bilinear")
    white = torch.full((2, 3, 16, 16), 255, dtype=torch.uint8)
    inputs = to_model_input(white, preprocessing)
    assert inputs.shape == (2, 3, 48, 48)
    assert torch.allclose(inputs, torch.full_like(inputs, 2.0))  # (1 - 0.5) / 0.25
