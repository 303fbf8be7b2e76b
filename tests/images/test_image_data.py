import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from genloom.core import registry
from genloom.core.errors import ConfigError, DataError
from genloom.images.data import (
    GLYPH_CHARACTERS,
    ImageData,
    ImageDataConfig,
    glyph_caption,
    load_labels,
    render_glyphs,
    save_image_grid,
    save_images,
)


def _write(path, size=(8, 8), mode="RGB", colour=(200, 30, 30), pattern=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    if pattern:  # left half bright, right half dark: mirroring must swap them
        pixels = np.zeros((size[1], size[0]), dtype=np.uint8)
        pixels[:, : size[0] // 2] = 255
        image = Image.fromarray(pixels).convert(mode)
    else:
        image = Image.new(mode, size, colour)
    image.save(path)
    return path


def _data(path, **settings) -> ImageData:
    data = ImageData(ImageDataConfig(path=str(path), **settings))
    data.prepare()
    return data


# -- built-in sources ----------------------------------------------------------------------------

def test_digits_shapes_range_and_labels():
    data = _data("builtin:digits")
    assert data.model_settings() == {"image_size": 8, "channels": 1, "num_classes": 10}
    assert data.classes == [str(d) for d in range(10)]
    assert data.num_examples("train") + data.num_examples("val") == 1797
    assert data.num_examples("val") == 180
    images, labels = data.batch(torch.arange(data.num_examples("train")))
    assert images.shape == (1617, 1, 8, 8) and images.dtype == torch.float32
    assert images.min() == -1 and images.max() == 1
    assert labels.dtype == torch.int64 and set(labels.tolist()) == set(range(10))
    # sklearn's values 0..16 map linearly onto [-1, 1]
    from sklearn.datasets import load_digits
    ids, _ = data.example_ids(torch.arange(4))
    expected = torch.from_numpy(load_digits().images[ids.numpy()]).float() / 8 - 1
    assert torch.allclose(images[:4, 0], expected, atol=1.01 / 255)  # uint8 rounding


def test_digits_resized_to_rgb():
    data = _data("builtin:digits", image_size=16, channels=3)
    images, _ = data.batch(torch.arange(3), "val")
    assert images.shape == (3, 3, 16, 16)
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 1], images[:, 2])  # gray as RGB


def test_glyphs_deterministic_with_attributes_and_captions():
    pixels, attributes = render_glyphs(72, seed=3)
    again, same_attributes = render_glyphs(72, seed=3)
    other, _ = render_glyphs(72, seed=4)
    assert pixels.shape == (72, 32, 32, 3) and pixels.dtype == np.uint8
    assert np.array_equal(pixels, again) and attributes == same_attributes
    assert not np.array_equal(pixels, other)
    assert sorted(a["char"] for a in attributes) == sorted(GLYPH_CHARACTERS * 2)  # each character twice
    assert set(attributes[0]) == {"char", "colour", "size", "horizontal", "vertical", "rotation"}
    lit = (pixels.max(axis=3) > 100).sum(axis=(1, 2))
    assert lit.min() >= 8 and lit.max() < 32 * 32 // 2  # every glyph drawn, on a dark background
    assert (pixels[:, 0, 0] < 30).all()  # corners stay background
    # the colour of the brightest pixel is the named colour
    red = next(i for i, a in enumerate(attributes) if a["colour"] == "red")
    r, g, b = pixels[red].reshape(-1, 3)[pixels[red].sum(axis=2).argmax()]
    assert r > 150 and g < 80 and b < 80

    data = _data("builtin:glyphs", glyphs_count=72, seed=3)
    assert data.model_settings() == {"image_size": 32, "channels": 3, "num_classes": 36}
    ids, _ = data.example_ids(torch.arange(5))
    _, labels = data.batch(torch.arange(5))
    assert [data.classes[k] for k in labels] == [attributes[i]["char"] for i in ids]
    assert data.caption(int(ids[0])) == glyph_caption(attributes[ids[0]])


def test_glyph_caption_wording():
    base = {"char": "A", "colour": "red", "size": "large", "horizontal": "left", "vertical": "top", "rotation": 15}
    assert glyph_caption(base) == "a large red letter A at the top left, rotated 15 degrees left"
    assert glyph_caption({**base, "char": "7", "horizontal": "centre", "vertical": "middle", "rotation": 0}) \
        == "a large red digit 7 in the centre, upright"
    assert glyph_caption({**base, "vertical": "middle", "rotation": -10}).endswith("on the left, rotated 10 degrees right")
    with pytest.raises(DataError, match="captions"):
        _data("builtin:digits").caption(0)


# -- a folder of images ----------------------------------------------------------------------------

def test_folder_classes_from_subfolders_and_labels_saved(tmp_path):
    for name, colour in (("cats", (255, 0, 0)), ("dogs", (0, 0, 255))):
        for i in range(3):
            _write(tmp_path / "images" / name / ("deep" if i == 2 else "") / f"{i}.png", colour=colour)
    _write(tmp_path / "images" / ".hidden" / "x.png")  # hidden folders are not classes
    data = _data(tmp_path / "images", val_fraction=0.3)
    assert data.model_settings() == {"image_size": 8, "channels": 3, "num_classes": 2}
    assert data.classes == ["cats", "dogs"]
    images, labels = data.batch(torch.arange(data.num_examples("train")))
    red = images[:, 0, 0, 0] > 0.9
    assert torch.equal(red, labels == 0)  # every red image is a cat
    data.save_assets(tmp_path)
    assert load_labels(tmp_path) == ["cats", "dogs"]
    assert json.loads((tmp_path / "labels.json").read_text())["image_size"] == 8


def test_root_only_folder_is_unconditional(tmp_path):
    for i in range(3):
        _write(tmp_path / f"{i}.jpg", mode="L", colour=90)
    data = _data(tmp_path)
    assert data.model_settings() == {"image_size": 8, "channels": 1, "num_classes": 0}
    assert data.batch(torch.arange(2))[1].tolist() == [0, 0]
    data.save_assets(tmp_path)
    assert load_labels(tmp_path) == []


def test_folder_mixing_root_images_and_class_folders_is_an_error(tmp_path):
    _write(tmp_path / "a.png")
    _write(tmp_path / "cats" / "b.png")
    with pytest.raises(DataError, match="a.png"):
        _data(tmp_path)


def test_corrupt_file_skipped_with_one_warning(tmp_path, caplog):
    for i in range(3):
        _write(tmp_path / "ok" / f"{i}.png")
    (tmp_path / "ok" / "broken.png").write_bytes(b"not a png at all")
    truncated = (tmp_path / "ok" / "0.png").read_bytes()
    (tmp_path / "ok" / "truncated.png").write_bytes(truncated[: len(truncated) // 2])
    with caplog.at_level(logging.WARNING, logger="genloom.images.data"):
        data = _data(tmp_path)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "skipped 2 unreadable" in warnings[0].getMessage() and "broken.png" in warnings[0].getMessage()
    assert data.num_examples("train") + data.num_examples("val") == 3


def test_mixed_sizes_name_the_files_or_are_resized(tmp_path):
    _write(tmp_path / "x" / "a.png", size=(8, 8))
    _write(tmp_path / "x" / "b.png", size=(16, 16))
    _write(tmp_path / "x" / "c.png", size=(20, 10))
    with pytest.raises(DataError, match=r"a\.png is 8x8 but .*b\.png is 16x16.*data\.image_size=N"):
        _data(tmp_path)
    data = _data(tmp_path, image_size=12)
    images, _ = data.batch(torch.arange(data.num_examples("train")))
    assert images.shape[1:] == (3, 12, 12)
    assert torch.allclose(images[:, 0], torch.full_like(images[:, 0], 200 / 127.5 - 1), atol=2 / 255)


def test_gray_and_rgb_mixed_are_converted(tmp_path):
    _write(tmp_path / "a.png", mode="L", colour=255)
    _write(tmp_path / "b.png", mode="RGB", colour=(0, 255, 0))
    _write(tmp_path / "c.png", mode="RGBA", colour=(0, 0, 0, 0))  # fully transparent: white
    rgb = _data(tmp_path, val_fraction=0.5)
    assert rgb.model_settings()["channels"] == 3
    everything = torch.cat([rgb.batch(torch.arange(rgb.num_examples(s)), s)[0] for s in ("train", "val")])
    colours = sorted(tuple(image[:, 0, 0].round().tolist()) for image in everything)
    assert colours == [(-1.0, 1.0, -1.0), (1.0, 1.0, 1.0), (1.0, 1.0, 1.0)]
    gray = _data(tmp_path, channels=1)
    assert gray.batch(torch.arange(2))[0].shape == (2, 1, 8, 8)


def test_empty_and_missing_folders(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"no images in .*\.png, \.jpg"):
        _data(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        _data(tmp_path / "nowhere")


def test_config_validation_names_the_field():
    with pytest.raises(ConfigError, match="data.channels"):
        ImageDataConfig(channels=2)
    with pytest.raises(ConfigError, match="data.path.*builtin:digits, builtin:glyphs"):
        ImageDataConfig(path="builtin:cifar")
    with pytest.raises(ConfigError, match="data.val_fraction"):
        ImageDataConfig(val_fraction=1.0)
    with pytest.raises(ConfigError, match="data.image_size"):
        ImageDataConfig(image_size=-1)


# -- split, indices and batches --------------------------------------------------------------------

def test_split_is_deterministic_and_disjoint():
    a, b = _data("builtin:digits"), _data("builtin:digits")
    train, _ = a.example_ids(torch.arange(a.num_examples("train")), "train")
    val, _ = a.example_ids(torch.arange(a.num_examples("val")), "val")
    assert torch.equal(train, b.example_ids(torch.arange(len(train)), "train")[0])
    assert not set(train.tolist()) & set(val.tolist())
    assert len(set(train.tolist()) | set(val.tolist())) == 1797
    reseeded = _data("builtin:digits", seed=1)
    assert not torch.equal(val, reseeded.example_ids(torch.arange(len(val)), "val")[0])
    assert torch.equal(a.val_indices(200), torch.arange(200) % 180)
    assert torch.equal(a.batch(a.val_indices(8), "val")[0], a.batch(a.val_indices(8), "val")[0])


def test_flip_is_encoded_in_the_index_and_batch_is_pure(tmp_path):
    for i in range(4):
        _write(tmp_path / f"{i}.png", mode="L", pattern=True)
    data = _data(tmp_path, flip=True, val_fraction=0.25)
    n = data.num_examples("train")
    plain, _ = data.batch(torch.arange(n))
    mirrored, _ = data.batch(torch.arange(n, 2 * n))
    assert (plain[:, 0, :, 0] == 1).all() and (plain[:, 0, :, -1] == -1).all()
    assert torch.equal(mirrored, plain.flip(-1))
    indices = data.sample_indices(torch.Generator().manual_seed(0), 200)
    assert indices.max() >= n and indices.min() < n  # both halves are drawn
    assert torch.equal(data.batch(indices)[0], data.batch(indices.clone())[0])
    unflipped = _data(tmp_path, val_fraction=0.25)
    assert unflipped.sample_indices(torch.Generator().manual_seed(0), 200).max() < n
    with pytest.raises(IndexError):
        data.batch(torch.tensor([2 * n]))


def test_sample_indices_come_only_from_the_generator():
    data = _data("builtin:digits")
    first = data.sample_indices(torch.Generator().manual_seed(7), 64)
    torch.manual_seed(123)  # the global RNG must not matter
    assert torch.equal(first, data.sample_indices(torch.Generator().manual_seed(7), 64))
    assert not torch.equal(first, data.sample_indices(torch.Generator().manual_seed(8), 64))
    assert 0 <= first.min() and first.max() < data.num_examples("train")


# -- writing images --------------------------------------------------------------------------------

def test_grid_and_single_images_written(tmp_path):
    images = torch.linspace(-1, 1, 7 * 3 * 8 * 8).reshape(7, 3, 8, 8)
    path = save_image_grid(images, tmp_path / "sub" / "grid.png", nrow=4, scale=3, padding=2)
    with Image.open(path) as grid:
        assert grid.size == (4 * (8 * 3 + 2) + 2, 2 * (8 * 3 + 2) + 2) and grid.mode == "RGB"
        pixels = np.asarray(grid)
    expected = ((images[0].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()
    assert np.array_equal(pixels[2:26:3, 2:26:3], expected)  # first cell, every third pixel
    assert (pixels[0] == 128).all()  # padding
    paths = save_images(images[:, :1], tmp_path / "each", prefix="digit", scale=2)
    assert [p.name for p in paths[:2]] == ["digit_0000.png", "digit_0001.png"] and len(paths) == 7
    with Image.open(paths[0]) as one:
        assert one.size == (16, 16) and one.mode == "L"
    with pytest.raises(ValueError):
        save_image_grid(torch.zeros(2, 2, 8, 8), tmp_path / "bad.png")


def test_builder_resolves_through_the_registry():
    component = registry.lookup("data", "images")
    assert component.config_class is ImageDataConfig
    data = component.build(ImageDataConfig(path="builtin:digits"), None)
    assert isinstance(data, ImageData) and data.item_name == "img" and data.items_per_example == 1
