"""VolumeMaskInferer: cached and uncached backbone features give the same volume; liver AND lesion; label pasting."""

import pytest
import torch
from monai.data import MetaTensor

from shared.engines.inferers.volume_mask import VolumeMaskInferer
from shared.networks.va_rcnn import build_va_mask_rcnn, paste_labels
from shared.transforms.slice_bags import image_slice_indices

SIZE, DEPTH = 32, 8


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    small = {"rpn_pre_nms_top_n_test": 50, "rpn_post_nms_top_n_test": 20, "box_detections_per_img": 5}
    net = build_va_mask_rcnn(
        bag_size=3, min_size=SIZE, max_size=SIZE, backbone="resnet18", box_score_thresh=0.0, **small
    )
    return net.eval()


@pytest.fixture(scope="module")
def volume():
    g = torch.Generator().manual_seed(3)
    vol = 0.2 * torch.rand(1, 1, SIZE, SIZE, DEPTH, generator=g)
    vol[..., 8:24, 6:26, 2:7] += 0.6
    return vol


def _detections(run, volume: torch.Tensor, network) -> list[dict]:
    """The per-slice detections of one pass of a VolumeMaskInferer (collected through its ``store`` callback)."""
    found = [None] * volume.shape[0]
    run(volume, network, found.__setitem__)
    return found


def test_each_slice_is_pasted_before_the_next_is_detected(model, volume, monkeypatch):
    """Detections (with their full-size masks) are freed slice by slice: memory does not grow with the depth."""
    events = []
    inferer = VolumeMaskInferer(score_threshold=0.0)
    paste = inferer.slice_labels
    monkeypatch.setattr(inferer, "slice_labels", lambda *a: events.append("paste") or paste(*a))
    hook = model.roi_heads.register_forward_hook(lambda *_: events.append("detect"))
    try:
        inferer(volume, model)
    finally:
        hook.remove()
    assert events == ["detect", "paste"] * DEPTH


def test_cached_and_uncached_inference_agree(model, volume):
    cached, uncached = VolumeMaskInferer(cache_features=True), VolumeMaskInferer(cache_features=False)
    plain = volume[0, 0].permute(2, 0, 1).contiguous()
    with torch.no_grad():
        det_c = _detections(cached._volume_cached, plain, model)
        det_u = _detections(uncached._volume_uncached, plain, model)
    assert len(det_c) == len(det_u) == DEPTH
    assert sum(len(d["scores"]) for d in det_u) > 0  # the comparison is not vacuous
    for a, b in zip(det_c, det_u):
        assert a["labels"].tolist() == b["labels"].tolist()
        for key in ("boxes", "scores", "masks"):
            torch.testing.assert_close(a[key], b[key], atol=1e-4, rtol=1e-4)
    low = dict(score_threshold=0.0)
    out_c = VolumeMaskInferer(**low)(volume, model)
    out_u = VolumeMaskInferer(cache_features=False, **low)(volume, model)
    assert out_c.shape == volume.shape
    assert (out_c != out_u).float().mean() < 1e-3  # only pixels at a threshold may flip


def test_cache_computes_each_image_once(model, volume):
    inferer = VolumeMaskInferer()
    inferer(volume, model)
    offsets = model.backbone.image_offsets  # [-3, 0, 3]
    distinct = sum(
        len({tuple(image_slice_indices(t + o, DEPTH).tolist()) for t in range(r, DEPTH, 3) for o in offsets})
        for r in range(3)
    )
    assert inferer.images_computed == distinct < 3 * DEPTH
    uncached = VolumeMaskInferer(cache_features=False)
    uncached(volume, model)
    assert uncached.images_computed == 3 * DEPTH


def test_mask_head_runs_only_on_pasted_detections_with_the_same_labels(model, volume):
    plain = volume[0, 0].permute(2, 0, 1).contiguous()
    with torch.no_grad():
        everything = _detections(
            VolumeMaskInferer()._volume_cached, plain, model
        )  # the heads' own threshold (0): every detection
    scores = torch.cat([d["scores"] for d in everything])
    threshold = scores.median().item()  # half the detections are pasted; one scores exactly at the threshold
    reference = torch.stack([paste_labels(d, (SIZE, SIZE), threshold) for d in everything], dim=-1)
    mask_rois = []
    hook = model.roi_heads.mask_head.register_forward_hook(lambda m, i, o: mask_rois.append(o.shape[0]))
    try:
        out = VolumeMaskInferer(score_threshold=threshold)(volume, model)
    finally:
        hook.remove()
    assert 0 < sum(mask_rois) == int((scores >= threshold).sum()) < len(scores)
    assert torch.equal(out[0, 0].as_subclass(torch.Tensor), reference)
    assert (reference == 1).any()  # the comparison is not vacuous
    assert model.roi_heads.score_thresh == 0.0  # restored after the call


def test_slice_labels_keep_lesions_inside_the_liver():
    masks = torch.zeros(3, 1, 4, 6)
    masks[0, 0, :, :4] = 0.9  # liver, columns 0-3
    masks[1, 0, 1:3, 2:6] = 0.8  # lesion, half outside the liver
    masks[2, 0, 0, 0] = 0.9  # a lesion scoring below the threshold
    det = {
        "boxes": torch.zeros(3, 4),
        "labels": torch.tensor([1, 2, 2]),
        "scores": torch.tensor([0.9, 0.7, 0.3]),
        "masks": masks,
    }
    out = VolumeMaskInferer(score_threshold=0.5).slice_labels(det, (4, 6))
    expected = torch.zeros(4, 6)
    expected[:, :4] = 1
    expected[1:3, 2:4] = 2  # lesion AND liver
    torch.testing.assert_close(out, expected)


def test_output_keeps_the_metadata_and_bad_shapes_are_refused(model):
    volume = MetaTensor(torch.rand(1, 1, SIZE, SIZE, 2), affine=torch.diag(torch.tensor([2.0, 2.0, 1.5, 1.0])))
    out = VolumeMaskInferer()(volume, model)  # shorter than a bag: edge slices are replicated
    assert isinstance(out, MetaTensor) and torch.equal(out.affine, volume.affine)
    assert set(out.unique().tolist()) <= {0.0, 1.0, 2.0}
    with pytest.raises(ValueError, match=r"\(B, 1, H, W, D\)"):
        VolumeMaskInferer()(torch.rand(1, SIZE, SIZE, 2), model)


def test_rcnn_location_cached_and_uncached_agree():
    torch.manual_seed(0)
    small = {"rpn_pre_nms_top_n_test": 20, "rpn_post_nms_top_n_test": 10, "box_detections_per_img": 3}
    net = build_va_mask_rcnn(
        bag_size=3, location="roi", min_size=SIZE, max_size=SIZE, backbone="resnet18", box_score_thresh=0.0, **small
    ).eval()
    plain = torch.rand(4, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        det_c = _detections(VolumeMaskInferer()._volume_cached, plain, net)
        det_u = _detections(VolumeMaskInferer()._volume_uncached, plain, net)
    for a, b in zip(det_c, det_u):
        assert len(a["scores"]) > 0
        torch.testing.assert_close(a["scores"], b["scores"], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(a["masks"], b["masks"], atol=1e-4, rtol=1e-4)
