"""Predictor: resize/pad/undo, input types, batch invariance, with a deterministic colour model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from _fakes import CAR_ID, INFO, PERSON_ID, SKY_ID, ColourModel, scene
from cmt_deeplab.inference.predictor import Predictor, to_rgb_array


def test_uniform_image_covers_everything_after_undoing_pad_and_resize() -> None:
    # 34x66 fits a 33x33 canvas as 17x33 (4k + 1 rows: no mixing with the padding below).
    model = ColourModel()
    predictor = Predictor(model, INFO, size=33, device="cpu")
    image = np.zeros((34, 66, 3), dtype=np.uint8)
    image[..., 0] = 255
    result = predictor(image)
    assert predictor.model.input_shapes == [(1, 3, 33, 33)]
    assert result.panoptic.shape == (34, 66)
    assert (result.panoptic == PERSON_ID).all()  # no void band where the padding was
    assert result.segments_info == [{"id": PERSON_ID, "category_id": 1, "isthing": True,
                                     "score": pytest.approx(0.95, abs=1e-4), "area": 34 * 66,
                                     "bbox": [0, 0, 66, 34]}]


def test_scene_segments_at_original_size() -> None:
    predictor = Predictor(ColourModel(), INFO, size=(41, 33), device="cpu",
                          thing_area_limit=0, stuff_area_limit=0)
    image = scene(45, 70)
    result = predictor(image)
    assert result.panoptic.shape == (45, 70) and result.semantic.shape == (45, 70)
    # Interior pixels (3 px away from any colour edge) get their colour's segment.
    expected = np.select([image[..., 2] == 255, image[..., 0] == 255], [CAR_ID, PERSON_ID], SKY_ID)
    edges = np.zeros(expected.shape, dtype=bool)
    edges[:-1] |= expected[:-1] != expected[1:]
    edges[1:] |= expected[:-1] != expected[1:]
    edges[:, :-1] |= expected[:, :-1] != expected[:, 1:]
    edges[:, 1:] |= expected[:, :-1] != expected[:, 1:]
    near_edge = F.max_pool2d(torch.from_numpy(edges).float()[None, None], 7, 1, 3)[0, 0] > 0
    interior = ~near_edge.numpy()
    np.testing.assert_array_equal(result.panoptic[interior], expected[interior])
    assert interior.mean() > 0.5
    ids = {s["id"] for s in result.segments_info}
    assert ids == {PERSON_ID, SKY_ID, CAR_ID}


def test_batch_invariance() -> None:
    model = ColourModel()
    predictor = Predictor(model, INFO, size=65, device="cpu", batch_size=3)
    first, second, third = scene(45, 70), scene(80, 30), scene(65, 65)
    alone = [predictor(image).panoptic for image in (first, second, third)]
    together = [r.panoptic for r in predictor([first, second, third])]
    reversed_order = [r.panoptic for r in predictor([third, second, first])][::-1]
    for single, batched, other in zip(alone, together, reversed_order, strict=True):
        np.testing.assert_array_equal(single, batched)
        np.testing.assert_array_equal(single, other)
    assert predictor.model.input_shapes[-1] == (3, 3, 65, 65)  # images of three sizes in one batch
    assert {r.shape for r in together} == {(45, 70), (80, 30), (65, 65)}


def test_input_types_agree(tmp_path) -> None:
    image = scene(40, 50)
    path = tmp_path / "scene.png"
    Image.fromarray(image).save(path)
    predictor = Predictor(ColourModel(), INFO, size=33, device="cpu")
    from_array = predictor(image).panoptic
    np.testing.assert_array_equal(predictor(str(path)).panoptic, from_array)
    np.testing.assert_array_equal(predictor(path).panoptic, from_array)
    np.testing.assert_array_equal(predictor(Image.fromarray(image)).panoptic, from_array)
    rgba = np.concatenate([image, np.full((40, 50, 1), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(predictor(rgba).panoptic, from_array)
    np.testing.assert_array_equal(predictor(image.astype(np.float32)).panoptic, from_array)
    assert to_rgb_array(np.full((3, 4), 9, np.uint8)).shape == (3, 4, 3)


def test_maskwise_method_and_thresholds_pass_through() -> None:
    image = scene(45, 70)
    pixelwise = Predictor(ColourModel(), INFO, size=65, device="cpu")(image)
    maskwise = Predictor(ColourModel(), INFO, size=65, device="cpu", method="maskwise")(image)
    assert {s["id"] for s in maskwise.segments_info} == {PERSON_ID, SKY_ID, CAR_ID}
    agree = (pixelwise.panoptic == maskwise.panoptic).mean()
    assert agree > 0.95
    # A class threshold above every slot's confidence leaves nothing.
    strict = Predictor(ColourModel(), INFO, size=65, device="cpu", class_threshold=0.99)(image)
    assert not strict.panoptic.any() and strict.segments_info == []


def test_bad_arguments_and_inputs() -> None:
    with pytest.raises(ValueError, match="unknown post-processing method"):
        Predictor(ColourModel(), INFO, method="boxwise")
    with pytest.raises(ValueError, match="overlap_threshold"):
        Predictor(ColourModel(), INFO, method="pixelwise", overlap_threshold=0.5)
    predictor = Predictor(ColourModel(), INFO, size=33, device="cpu")
    with pytest.raises(ValueError, match="RGB array"):
        predictor(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        predictor("missing.jpg")


def test_real_model_batch_invariance() -> None:
    import cmt_deeplab

    if not hasattr(cmt_deeplab, "build_model"):
        pytest.skip("cmt_deeplab.build_model (model registry) is not available yet")
    torch.manual_seed(0)
    model = cmt_deeplab.build_model("cmt-deeplab-tiny", num_classes=INFO.num_classes,
                                    num_thing_classes=INFO.num_thing_classes)
    # Thresholds at 0: every pixel gets a slot, so the maps are not trivially all void.
    predictor = Predictor(model, INFO, size=65, device="cpu", batch_size=2, class_threshold=0.0,
                          pixel_threshold=0.0, thing_area_limit=0, stuff_area_limit=0)
    first, second = scene(45, 70), scene(70, 30)
    alone = predictor(first).panoptic
    batched = predictor([first, second])[0].panoptic
    assert alone.shape == (45, 70) and alone.any()
    # Batched BLAS kernels may round differently: near-tied pixels could flip, nothing more.
    assert (alone == batched).mean() > 0.999
