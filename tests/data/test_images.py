import pytest

from data_helpers import make_awkward_images, make_bad_inputs, noise_image, save
from loraflow.images import ImageError, load_rgb, read_info


@pytest.mark.parametrize("kind, words", [
    ("zero_byte", "empty file"), ("truncated_jpeg", "truncated"), ("truncated_png", "truncated"),
    ("text_as_jpg", "looks like text"), ("bomb", "decompression bomb"), ("missing", "does not exist"),
])
def test_bad_files_give_one_line_reason_naming_the_file(tmp_path, kind, words):
    path = make_bad_inputs(tmp_path)[kind]
    for reader in (read_info, load_rgb):
        with pytest.raises(ImageError) as e:
            reader(path)
        msg = str(e.value)
        assert str(path) in msg and words in msg and "\n" not in msg


def test_header_read_does_not_decode(tmp_path):
    p = save(noise_image(300, 200), tmp_path / "a.jpg")
    info = read_info(p)
    assert (info.width, info.height, info.format) == (300, 200, "JPEG")


def test_awkward_images_become_8bit_rgb(tmp_path):
    paths = make_awkward_images(tmp_path)
    for name, p in paths.items():
        notes = []
        im = load_rgb(p, notes)
        assert im.mode == "RGB", name
        if name == "animated_gif":
            assert im.getpixel((0, 0)) == (255, 0, 0) and "first frame" in notes[0]
    assert load_rgb(paths["exif_rotated"]).size == (30, 40)  # orientation 6 applied
    assert (read_info(paths["exif_rotated"]).width, read_info(paths["exif_rotated"]).height) == (30, 40)
    pal = load_rgb(paths["palette_transparent"])
    assert pal.getpixel((35, 5)) == (255, 255, 255)  # transparent red -> white
    assert pal.getpixel((5, 5)) == (0, 0, 255)
    assert load_rgb(paths["rgba"]).getpixel((0, 0)) == (255, 255, 255)
    g16 = load_rgb(paths["png16"])
    assert g16.getpixel((0, 0))[0] == 0 and g16.getpixel((39, 29))[0] == 255  # scaled, not clipped
    assert read_info(paths["webp"]).format == "WEBP"
