"""SAM2's predictor at both ends on the model's device (deployments/sam2_predictor.py) against
sam2's own calls: ``set_images`` gives ``set_image`` / ``set_image_batch``'s embedding on numpy
images, bit for bit on CPU, for one image and a batch of two of different sizes;
``predict_masks`` gives ``predict``'s masks and scores for every prompt shape the Segmenter
sends; the Segmenter decodes the file it is sent (EXIF orientation applied) and answers masks
of the oriented image's size."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from deployments.decoding import rgb_tensor
from deployments.protocol import image_id_of
from deployments.sam2_predictor import (
    MAX_CUDA_DOWNSCALE,
    model_input,
    predict_masks,
    resize_device,
    set_images,
)
from deployments.segmenter import Sam2Segmenter
from tests.helpers import make_scene


def _features(predictor: object) -> list[torch.Tensor]:
    features = predictor._features  # type: ignore[attr-defined]
    return [features["image_embed"], *features["high_res_feats"]]


def test_one_image_embeds_as_set_image_does(segmenter: Sam2Segmenter) -> None:
    predictor = segmenter.predictor
    image = make_scene("box", 180, 260).image
    with torch.inference_mode():
        predictor.set_image(image)
        expected, expected_hw = _features(predictor), list(predictor._orig_hw)
        set_images(predictor, [rgb_tensor(image, "cpu")])
        got = _features(predictor)
    assert predictor._orig_hw == expected_hw == [(180, 260)]
    assert predictor._is_image_set and not predictor._is_batch
    assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))
    # The prompt decoder then answers the same masks.
    point = np.array([[130.0, 90.0]], dtype=np.float32)
    with torch.inference_mode():
        ours = predictor.predict(point_coords=point, point_labels=np.array([1]))
        predictor.set_image(image)
        theirs = predictor.predict(point_coords=point, point_labels=np.array([1]))
    predictor.reset_predictor()
    assert np.array_equal(ours[0], theirs[0]) and np.allclose(ours[1], theirs[1])


def test_a_batch_embeds_as_set_image_batch_does(segmenter: Sam2Segmenter) -> None:
    predictor = segmenter.predictor
    images = [make_scene("disk", 120, 160).image, make_scene("box", 200, 150).image]
    with torch.inference_mode():
        predictor.set_image_batch(images)
        expected, expected_hw = _features(predictor), list(predictor._orig_hw)
        set_images(predictor, [rgb_tensor(image, "cpu") for image in images])
        got = _features(predictor)
    predictor.reset_predictor()
    assert [tuple(hw) for hw in expected_hw] == [(120, 160), (200, 150)]
    assert [tuple(hw) for hw in segmenter.predictor._orig_hw or expected_hw] == [
        tuple(hw) for hw in expected_hw
    ]
    assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))


def test_masks_come_back_as_predict_gives_them(segmenter: Sam2Segmenter) -> None:
    """A click, a click with three candidates, one box and a batch of three boxes: the same
    masks (bool, thresholded on the device) in the same shapes, and the same scores."""
    predictor = segmenter.predictor
    image = make_scene("disk", 150, 210).image
    boxes = np.array([[10, 10, 120, 100], [60, 40, 200, 140], [0, 0, 209, 149]], np.float32)
    prompts = [
        {"point_coords": np.array([[105.0, 75.0]], np.float32), "point_labels": np.array([1])},
        {
            "point_coords": np.array([[105.0, 75.0], [20.0, 20.0]], np.float32),
            "point_labels": np.array([1, 0]),
            "multimask_output": True,
        },
        {"box": boxes[0]},
        {"box": boxes},
    ]
    shapes = []
    with torch.inference_mode():
        predictor.set_image(image)
        for prompt in prompts:
            multimask = bool(prompt.pop("multimask_output", False))
            masks, scores = predict_masks(predictor, multimask_output=multimask, **prompt)
            theirs, their_scores, _ = predictor.predict(multimask_output=multimask, **prompt)
            assert masks.dtype == np.bool_ and masks.shape == theirs.shape
            assert np.array_equal(masks, theirs > 0) and masks.any()
            assert np.allclose(scores, their_scores)
            shapes.append(masks.shape)
    predictor.reset_predictor()
    assert shapes == [(1, 150, 210), (3, 150, 210), (1, 150, 210), (3, 1, 150, 210)]


def test_the_segmenter_decodes_the_file_on_its_device(segmenter: Sam2Segmenter) -> None:
    """A JPEG whose EXIF says 'turn a quarter': masks come at the turned size, as the
    ingress's decoder (and PIL's exif_transpose) sees the image."""
    out = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(make_scene("disk", 120, 200).image).save(out, format="JPEG", exif=exif)
    data = out.getvalue()
    tensor = segmenter.load_image(image_id_of(data), data, None)
    assert tensor.dtype == torch.uint8 and tuple(tensor.shape) == (3, 200, 120)
    result = segmenter.segment_image(image_id_of(data), data, points=[[60.0, 100.0]])
    assert result.masks.shape == (1, 200, 120) and result.cached is False


def test_a_downscale_cuda_cannot_do_is_resized_on_the_cpu(segmenter: Sam2Segmenter) -> None:
    """CUDA's antialiased resize refuses a downscale of ~190x; a strip that long (it fits the
    pixel bound) is resized on the CPU there, anything else on the model's device."""
    resolution = 1024
    strip = (200, MAX_CUDA_DOWNSCALE * resolution + 1)
    assert resize_device(strip, resolution, "cuda") == "cpu"
    assert resize_device(strip[::-1], resolution, torch.device("cuda", 0)) == "cpu"
    assert resize_device((1080, 810), resolution, "cuda") == "cuda"
    assert resize_device(strip, resolution, "cpu") == "cpu"
    # The CPU path takes such a strip (at the test model's resolution), as it takes any image.
    transforms = segmenter.predictor._transforms
    long_side = MAX_CUDA_DOWNSCALE * transforms.resolution + 1
    image = torch.zeros((3, 2, long_side), dtype=torch.uint8)
    made = model_input([image], transforms, "cpu")
    assert made.shape == (1, 3, transforms.resolution, transforms.resolution)
