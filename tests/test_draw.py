"""Grounding boxes painted where they belong: on the edges, not inside, not elsewhere."""

import pytest
from PIL import Image, ImageColor

from demo.draw import PALETTE, draw_boxes


def test_box_is_painted_on_its_edges_only():
    image = Image.new("RGB", (300, 200), "white")
    out = draw_boxes(image, [(50, 40, 250, 160)])
    color = ImageColor.getrgb(PALETTE[0])
    assert out.getpixel((50, 100)) == color  # left edge
    assert out.getpixel((150, 40)) == color  # top edge
    assert out.getpixel((249, 159)) == color  # bottom-right corner, inside the line width
    assert out.getpixel((150, 100)) == (255, 255, 255)  # interior untouched
    assert out.getpixel((10, 10)) == (255, 255, 255)  # outside untouched
    assert image.getpixel((50, 100)) == (255, 255, 255)  # the input is not modified


def test_each_box_gets_its_own_colour_and_a_label():
    image = Image.new("RGB", (400, 400), "white")
    out = draw_boxes(image, [(10, 100, 100, 200), (200, 100, 300, 200)], labels=["cat", "dog"])
    assert out.getpixel((10, 150)) == ImageColor.getrgb(PALETTE[0])
    assert out.getpixel((200, 150)) == ImageColor.getrgb(PALETTE[1])
    # the label sits above the box on a filled tag of the box's colour
    tag = out.crop((200, 60, 300, 99))
    assert ImageColor.getrgb(PALETTE[1]) in {c for _, c in tag.getcolors(10000)}


def test_point_is_drawn_around_its_centre():
    out = draw_boxes(Image.new("RGB", (100, 100), "white"), [(50, 50)])
    assert out.getpixel((50, 50)) == ImageColor.getrgb(PALETTE[0])  # the cross passes through the point


def test_bad_boxes_are_refused_with_the_value():
    image = Image.new("RGB", (10, 10))
    with pytest.raises(ValueError, match=r"x2 < x1"):
        draw_boxes(image, [(8, 0, 2, 5)])
    with pytest.raises(ValueError, match=r"has 3 numbers"):
        draw_boxes(image, [(1, 2, 3)])
    with pytest.raises(ValueError, match=r"1 labels for 2 boxes"):
        draw_boxes(image, [(0, 0, 1, 1), (0, 0, 2, 2)], labels=["a"])
