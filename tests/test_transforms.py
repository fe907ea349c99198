"""Device-side batch transforms."""

import torch

from tl_space.transforms import Preprocessing, preprocessing_for, progressive_size, random_crop_flip, to_model_input


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


def _per_image_reference(images: torch.Tensor, size: int, config: dict) -> torch.Tensor:
    """timm's own per-image PIL eval transform (resize, centre crop of the whole image, normalise), image by image."""
    import timm.data
    from PIL import Image

    transform = timm.data.create_transform(input_size=(3, size, size), interpolation=config["interpolation"],
                                           mean=config["mean"], std=config["std"], crop_pct=1.0)
    return torch.stack([transform(Image.fromarray(image.permute(1, 2, 0).numpy())) for image in images])


def test_batched_model_input_matches_timms_per_image_path():
    config = {"input_size": (3, 64, 64), "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
              "interpolation": "bicubic"}
    generator = torch.Generator().manual_seed(0)
    # Smooth images (upscaled noise), like photos: interpolation kernels then agree closely.
    images = torch.nn.functional.interpolate(torch.rand(8, 3, 8, 8, generator=generator), size=32, mode="bilinear")
    images = (images * 255).round().to(torch.uint8)
    for size in (32, 64, 20):  # the same, enlarged, shrunk
        ours = to_model_input(images, preprocessing_for(config, size))
        reference = _per_image_reference(images, size, config)
        assert ours.shape == reference.shape == (8, 3, size, size)
        assert ours.dtype == reference.dtype == torch.float32
        low = (0 - torch.tensor(config["mean"])) / torch.tensor(config["std"])
        high = (1 - torch.tensor(config["mean"])) / torch.tensor(config["std"])
        per_channel = ours.transpose(0, 1).flatten(1)
        assert (per_channel.min(dim=1).values >= low - 1e-5).all() and (per_channel.max(dim=1).values <= high + 1e-5).all()
        # PIL and torch bicubic differ in rounding and antialias kernels: close on average, never far.
        assert (ours - reference).abs().mean() < 0.03  # about 1/255 of a pixel value
        assert (ours - reference).abs().max() < 0.15


def test_crop_and_flip_vary_per_image_and_per_call():
    # A horizontal ramp: the first column says the crop offset and whether the image was flipped.
    ramp = torch.arange(32, dtype=torch.uint8).mul(8).view(1, 1, 1, 32).expand(512, 3, 32, 32).contiguous()
    generator = torch.Generator().manual_seed(0)
    first = random_crop_flip(ramp, generator)
    second = random_crop_flip(ramp, generator)
    assert not torch.equal(first, second)  # another epoch, other crops
    flipped = first[:, 0, 0, 0] > first[:, 0, 0, -1]
    assert 0.4 < flipped.float().mean() < 0.6  # p = 0.5 over 512 images
    left_edges = torch.where(flipped, first[:, 0, 0, -1], first[:, 0, 0, 0])
    # Reflect padding of 4 px: the unflipped left edge shows ramp values of columns 4,3,2,1,0,1,2,3,4 (x8).
    assert set(left_edges.div(8, rounding_mode="floor").tolist()) == {0, 1, 2, 3, 4}
    rows = torch.arange(32, dtype=torch.uint8).mul(8).view(1, 1, 32, 1).expand(512, 3, 32, 32).contiguous()
    vertical = random_crop_flip(rows, torch.Generator().manual_seed(1))[:, 0, 0, 0].div(8, rounding_mode="floor")
    assert set(vertical.tolist()) == {0, 1, 2, 3, 4}  # vertical offsets vary too


def test_progressive_size_grows_in_steps_to_the_end_size_by_three_quarters():
    sizes = [progressive_size(64, 96, step / 100) for step in range(101)]
    assert sizes[0] == 64 and sizes[74] < 96 and sizes[75:] == [96] * 26
    assert sizes == sorted(sizes) and set(sizes) == {64, 80, 96}
    assert progressive_size(96, 96, 0.0) == 96
