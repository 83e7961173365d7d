"""DetectionTrainer: loss dict summed and logged, gradient clipping, non-finite loss, a real VA detector."""

import pytest
import torch
from ignite.engine import Events
from torch.utils.data import DataLoader

from shared.engines.trainers import DetectionTrainer, collate_detection
from shared.networks.va_rcnn import build_va_faster_rcnn


class _ToyDetector(torch.nn.Module):
    """Returns two losses from (images, targets): enough to check the trainer's contract by hand."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
        self.scale = scale

    def forward(self, images, targets):
        x = torch.stack([im.mean() for im in images])
        n_boxes = torch.tensor([float(len(t["boxes"])) for t in targets])
        return {"loss_a": self.scale * (self.w[0] * x).square().mean(), "loss_b": (self.w[1] - n_boxes).abs().mean()}


def _samples(n: int = 4, channels: int = 3, size: int = 16):
    g = torch.Generator().manual_seed(0)
    return [
        {
            "image": torch.rand(channels, size, size, generator=g),
            "boxes": torch.tensor([[2.0, 3.0, 9.0, 12.0]]),
            "labels": torch.tensor([1]),
        }
        for _ in range(n)
    ]


def test_collate_keeps_lists_and_skips_absent_keys():
    images, targets = collate_detection(_samples(2))
    assert len(images) == 2 and images[0].shape == (3, 16, 16)
    assert set(targets[0]) == {"boxes", "labels"}


def test_losses_are_summed_logged_and_optimised():
    model = _ToyDetector()
    loader = DataLoader(_samples(), batch_size=2, collate_fn=collate_detection)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = DetectionTrainer("cpu", 1, loader, model, optimizer, loss_weights={"loss_b": 2.0})
    seen = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(dict(e.state.output)))
    images, targets = collate_detection(_samples()[:2])
    expected = model(images, targets)
    trainer.run()
    assert len(seen) == 2
    first = seen[0]
    assert set(first) == {"loss", "loss_a", "loss_b"}
    assert first["loss_a"] == pytest.approx(expected["loss_a"].item())
    assert first["loss"] == pytest.approx(first["loss_a"] + 2.0 * first["loss_b"])
    # loss_b = |w1 - 1| with w1 = -2: d/dw1 (2 * loss_b) = -2, so SGD moves w1 up by lr * 2 per step
    assert model.w[1].item() == pytest.approx(-2.0 + 2 * 0.1 * 2.0)


def test_gradient_clipping_bounds_the_update():
    model = _ToyDetector(scale=1000.0)
    loader = DataLoader(_samples(2), batch_size=2, collate_fn=collate_detection)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    before = model.w.detach().clone()
    DetectionTrainer("cpu", 1, loader, model, optimizer, grad_clip_norm=0.5).run()
    assert torch.linalg.vector_norm(model.w.detach() - before).item() == pytest.approx(0.5, rel=1e-4)


def test_non_finite_loss_stops_training_with_a_message():
    model = _ToyDetector(scale=float("nan"))
    loader = DataLoader(_samples(2), batch_size=2, collate_fn=collate_detection)
    trainer = DetectionTrainer("cpu", 1, loader, model, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(FloatingPointError, match="loss_a=nan"):
        trainer.run()


def test_trains_a_va_faster_rcnn_for_two_iterations():
    torch.manual_seed(0)
    model = build_va_faster_rcnn(num_classes=2, bag_size=3, min_size=32, max_size=32, backbone="resnet18")
    loader = DataLoader(_samples(2, channels=9, size=32), batch_size=1, collate_fn=collate_detection)
    params = [p for p in model.parameters() if p.requires_grad]
    trainer = DetectionTrainer("cpu", 1, loader, model, torch.optim.SGD(params, lr=1e-3), grad_clip_norm=10.0)
    trainer.run()
    out = trainer.state.output
    assert {"loss", "loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"} <= set(out)
    assert all(torch.isfinite(torch.tensor(v)) for v in out.values())
    assert trainer.state.iteration == 2
