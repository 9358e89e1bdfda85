"""Training-only networks around a served SegmentationNet: a tap on the backbone's deepest feature,
an auxiliary lower-level output (multi-level adversarial training), and the output-space
discriminator of Tsai et al. 2018. None of them goes into a checkpoint."""
import torch
from torch import nn
from torch.nn import functional as F

from driftseg.models.registry import SegmentationNet


class FeatureTap:
    """Keeps the deepest feature map of `model`'s backbone from its latest forward call: 'high'
    for LRASPP (stride 16, before the head fuses it with the stride-8 'low' feature), 'out' for
    DeepLabV3 (the ASPP head's input)."""

    def __init__(self, model: SegmentationNet):
        self.feature: torch.Tensor | None = None
        self.handle = model.net.backbone.register_forward_hook(self._keep)
        with torch.no_grad():
            was_training = model.training
            model.eval()(torch.zeros(1, 3, 64, 64, device=model.mean.device))
            model.train(was_training)
        self.channels = self.take().shape[1]

    def _keep(self, module, inputs, output: dict[str, torch.Tensor]) -> None:
        self.feature = output["high"] if "high" in output else output["out"]

    def take(self) -> torch.Tensor:
        feature, self.feature = self.feature, None
        if feature is None:
            raise RuntimeError("no backbone feature: the model has not run since the last take()")
        return feature


class MultiLevelNet(nn.Module):
    """`model` returning (main logits, auxiliary logits); the auxiliary classifier reads the
    backbone's deepest feature, as AdaptSegNet's reads conv4 beside the main ASPP on conv5."""

    def __init__(self, model: SegmentationNet, num_classes: int, width: int = 128):
        super().__init__()
        self.model = model
        self.tap = FeatureTap(model)
        self.aux = nn.Sequential(
            nn.Conv2d(self.tap.channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
            nn.ReLU(inplace=True), nn.Conv2d(width, num_classes, 1),
        ).to(model.mean.device)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        main = self.model(images)
        aux = F.interpolate(self.aux(self.tap.take()), size=images.shape[-2:], mode="bilinear", align_corners=False)
        return main, aux


class OutputDiscriminator(nn.Sequential):
    """Fully convolutional discriminator on a softmax map: four 4x4 stride-2 convolutions of
    width, 2, 4, 8 x width with LeakyReLU 0.2, then a 4x4 stride-2 convolution to one logit per
    patch (domain 0: source, 1: target)."""

    def __init__(self, num_classes: int, width: int = 64):
        layers: list[nn.Module] = []
        channels = num_classes
        for w in (width, 2 * width, 4 * width, 8 * width):
            layers += [nn.Conv2d(channels, w, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
            channels = w
        layers.append(nn.Conv2d(channels, 1, 4, stride=2, padding=1))
        super().__init__(*layers)
