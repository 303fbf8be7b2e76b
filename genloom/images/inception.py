"""The standard FID network: InceptionV3 as used by Heusel et al.'s TensorFlow FID, from user-supplied weights.

This is the network behind the FID numbers in papers: the 2015-12-05 TensorFlow Inception graph, as
ported to PyTorch by the `pytorch-fid` package. It differs from torchvision's ImageNet InceptionV3 in
its weights (1008 output classes) and in three kinds of pooling branch: the A, C and first E blocks
average-pool without counting the zero padding (TensorFlow's behaviour), and the last E block
max-pools. Features are the 2048-d global average pool ("pool3") of 299x299 inputs in [-1, 1].

genloom never downloads and never unpickles weights. Convert pytorch-fid's file once, yourself::

    import torch
    from safetensors.torch import save_file
    state = torch.load("pt_inception-2015-12-05-6726825d.pth", map_location="cpu", weights_only=True)
    save_file({name: t.contiguous() for name, t in state.items()}, "pt_inception-2015-12-05.safetensors")

then `load_inception("pt_inception-2015-12-05.safetensors")`. The names of pytorch-fid's
`fid_inception_v3()` state dict (`Mixed_5b.branch1x1.conv.weight`, ...) and of its `InceptionV3`
wrapper (`blocks.2.0.branch1x1.conv.weight`, ...) are both accepted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.errors import CheckpointError, GenloomError
from ..core.io import load_tensors

__all__ = ["InceptionFeatures", "load_inception", "INCEPTION_FEATURE_DIM"]

INCEPTION_FEATURE_DIM = 2048
INPUT_SIZE = 299
FID_NUM_CLASSES = 1008   # the TF graph's classifier; torchvision's ImageNet Inception has 1000

# pytorch-fid's `InceptionV3` wrapper keeps the same modules in four Sequential blocks.
_WRAPPER_NAMES = {
    "blocks.0.0": "Conv2d_1a_3x3", "blocks.0.1": "Conv2d_2a_3x3", "blocks.0.2": "Conv2d_2b_3x3",
    "blocks.1.0": "Conv2d_3b_1x1", "blocks.1.1": "Conv2d_4a_3x3",
    **{f"blocks.2.{i}": name for i, name in enumerate(
        ["Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"])},
    "blocks.3.0": "Mixed_7a", "blocks.3.1": "Mixed_7b", "blocks.3.2": "Mixed_7c",
}
_UNUSED_HEADS = ("fc.", "AuxLogits.")   # the classifier heads: not needed for pool3 features


class ConvBNReLU(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3, as in the TF graph), ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int = 1, padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-3)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _pool_3x3(x: Tensor, kind: Literal["avg", "max"]) -> Tensor:
    """The same-size 3x3 pooling of a branch; the average ignores padded zeros, as TensorFlow's does."""
    if kind == "max":
        return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block: 1x1, 5x5, double 3x3 and pooled branches."""

    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = ConvBNReLU(in_channels, 64, 1)
        self.branch5x5_1 = ConvBNReLU(in_channels, 48, 1)
        self.branch5x5_2 = ConvBNReLU(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBNReLU(in_channels, 64, 1)
        self.branch3x3dbl_2 = ConvBNReLU(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBNReLU(96, 96, 3, padding=1)
        self.branch_pool = ConvBNReLU(in_channels, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_pool_3x3(x, "avg")),
        ], dim=1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17: strided 3x3, strided double 3x3 and a max pool."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = ConvBNReLU(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBNReLU(in_channels, 64, 1)
        self.branch3x3dbl_2 = ConvBNReLU(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBNReLU(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, kernel_size=3, stride=2),
        ], dim=1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (1x7 then 7x1)."""

    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c = channels_7x7
        self.branch1x1 = ConvBNReLU(in_channels, 192, 1)
        self.branch7x7_1 = ConvBNReLU(in_channels, c, 1)
        self.branch7x7_2 = ConvBNReLU(c, c, (1, 7), padding=(0, 3))
        self.branch7x7_3 = ConvBNReLU(c, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = ConvBNReLU(in_channels, c, 1)
        self.branch7x7dbl_2 = ConvBNReLU(c, c, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = ConvBNReLU(c, c, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = ConvBNReLU(c, c, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = ConvBNReLU(c, 192, (1, 7), padding=(0, 3))
        self.branch_pool = ConvBNReLU(in_channels, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        seven = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        double = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                      self.branch7x7dbl_4, self.branch7x7dbl_5):
            double = layer(double)
        return torch.cat([self.branch1x1(x), seven, double, self.branch_pool(_pool_3x3(x, "avg"))], dim=1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8: strided 3x3, 7x7-then-strided-3x3, and a max pool."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = ConvBNReLU(in_channels, 192, 1)
        self.branch3x3_2 = ConvBNReLU(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBNReLU(in_channels, 192, 1)
        self.branch7x7x3_2 = ConvBNReLU(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBNReLU(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBNReLU(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        seven = x
        for layer in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            seven = layer(seven)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), seven,
                          F.max_pool2d(x, kernel_size=3, stride=2)], dim=1)


class InceptionE(nn.Module):
    """8x8 block whose 3x3 branches split into parallel 1x3 and 3x1 convolutions."""

    def __init__(self, in_channels: int, pool: Literal["avg", "max"]) -> None:
        super().__init__()
        self.pool = pool
        self.branch1x1 = ConvBNReLU(in_channels, 320, 1)
        self.branch3x3_1 = ConvBNReLU(in_channels, 384, 1)
        self.branch3x3_2a = ConvBNReLU(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBNReLU(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvBNReLU(in_channels, 448, 1)
        self.branch3x3dbl_2 = ConvBNReLU(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBNReLU(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBNReLU(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = ConvBNReLU(in_channels, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        single = self.branch3x3_1(x)
        double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(single), self.branch3x3_2b(single),
            self.branch3x3dbl_3a(double), self.branch3x3dbl_3b(double),
            self.branch_pool(_pool_3x3(x, self.pool)),
        ], dim=1)


class InceptionFeatures(nn.Module):
    """Images (N, C, H, W) in [-1, 1], C = 1 or 3 -> (N, 2048) pool3 features of the FID Inception."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBNReLU(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBNReLU(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBNReLU(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBNReLU(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBNReLU(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")   # max here is a quirk of the TF graph; FID depends on it

    def forward(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise GenloomError(f"the Inception takes images of shape (N, 1 or 3, H, W), got {tuple(images.shape)}")
        x = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images   # grayscale -> RGB
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))        # (N, 64, 147, 147)
        x = F.max_pool2d(x, kernel_size=3, stride=2)                               # (N, 64, 73, 73)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))                              # (N, 192, 71, 71)
        x = F.max_pool2d(x, kernel_size=3, stride=2)                               # (N, 192, 35, 35)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a,  # -> (N, 768, 17, 17)
                      self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e,
                      self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):                 # -> (N, 2048, 8, 8)
            x = block(x)
        return x.mean(dim=(2, 3))                                                  # (N, 2048)

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        """The pool3 features, without gradients (the same interface as genloom's feature classifiers)."""
        return self(images)


def _show(names: list[str], limit: int = 4) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def load_inception(path: str | Path) -> InceptionFeatures:
    """Build the FID Inception and load its weights from a `.safetensors` file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Inception weights not found at {path}: pass the path of a .safetensors file "
                              "converted from pytorch-fid's pt_inception-2015-12-05-*.pth (see genloom.eval.inception)")
    if path.suffix in (".pth", ".pt", ".bin", ".pkl"):
        raise CheckpointError(f"{path} is a pickle file, which genloom never loads (unpickling can run code); "
                              "convert it once to .safetensors with the script in genloom.eval.inception's docstring")
    tensors = load_tensors(path)
    for short, full in _WRAPPER_NAMES.items():   # pytorch-fid's InceptionV3 wrapper names -> module names
        tensors = {(full + k[len(short):] if k.startswith(short + ".") else k): v for k, v in tensors.items()}
    if "fc.weight" in tensors and tensors["fc.weight"].shape[0] != FID_NUM_CLASSES:
        raise CheckpointError(f"{path} has a {tensors['fc.weight'].shape[0]}-class classifier: these look like "
                              "torchvision's ImageNet Inception weights, not the FID Inception (1008 classes) "
                              "that the standard FID needs")
    tensors = {k: v for k, v in tensors.items() if not k.startswith(_UNUSED_HEADS)}

    model = InceptionFeatures()
    # `num_batches_tracked` counts training steps; the 2015 weights have none and inference ignores it.
    expected = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected and not k.endswith("num_batches_tracked")]
    misshapen = [f"{k} {tuple(tensors[k].shape)} (expected {tuple(v.shape)})"
                 for k, v in expected.items() if k in tensors and tensors[k].shape != v.shape]
    problems = ([f"missing tensors: {_show(missing)}"] if missing else []) + \
               ([f"unexpected tensors: {_show(unexpected)}"] if unexpected else []) + \
               ([f"wrong shapes: {_show(misshapen)}"] if misshapen else [])
    if problems:
        raise CheckpointError(f"{path} does not hold the FID Inception's weights "
                              f"(pytorch-fid's FIDInceptionV3/InceptionV3 names): " + "; ".join(problems))
    model.load_state_dict({k: v.float() for k, v in tensors.items() if k in expected}, strict=False)
    return model.eval().requires_grad_(False)
