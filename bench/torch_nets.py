"""PyTorch versions of the project's networks, written from SPEC §2 independently of the Rust
code, with parameter names equal to the project's safetensors names (state_dict keys minus
`num_batches_tracked`). Used by train_vs_pytorch.py (speed) and by
stages/tests/fixtures/models/make_fixtures.py (forward parity)."""
import torch
import torch.nn as nn
import torch.nn.functional as F


def bn(channels, affine=False):
    return nn.BatchNorm2d(channels, affine=affine, eps=1e-5, momentum=0.1)


def conv(inp, out, k, stride=1):
    return nn.Conv2d(inp, out, k, stride=stride, padding=k // 2, bias=False)


class Normalise(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)

    def forward(self, x):
        return (x - self.mean) / self.std


class SmallCnn(nn.Module):
    """conv3×3 → BN → ReLU per width, global average pooling, dropout, linear."""

    def __init__(self, in_channels, widths, strides, classes, dropout, mean, std):
        super().__init__()
        self.normalise = Normalise(mean, std)
        self.strides = strides
        channels = in_channels
        for i, width in enumerate(widths, start=1):
            setattr(self, f"conv{i}", conv(channels, width, 3, strides[i - 1]))
            setattr(self, f"bn{i}", bn(width))
            channels = width
        self.blocks = len(widths)
        self.dropout = dropout
        self.fc = nn.Linear(channels, classes)

    def forward(self, x):
        x = self.normalise(x)
        for i in range(1, self.blocks + 1):
            x = F.relu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
        x = x.mean(dim=(2, 3))
        return self.fc(F.dropout(x, self.dropout, self.training))


class WideResNet(nn.Module):
    """Pre-activation wide ResNet: stem 3→16, three groups of (depth−4)/6 basic blocks of widths
    16k, 32k, 64k (strides 1, 2, 2), 1×1 projection of the activated input where the shape
    changes, then BN → ReLU → average pooling → linear."""

    def __init__(self, depth, widen, classes, dropout, mean, std, in_channels=3):
        super().__init__()
        self.normalise = Normalise(mean, std)
        self.conv1 = conv(in_channels, 16, 3)
        self.dropout = dropout
        per_group = (depth - 4) // 6
        width, self.plan = 16, []
        for g, stride in enumerate([1, 2, 2]):
            out = 16 * widen * 2**g
            for b in range(per_group):
                s = stride if b == 0 else 1
                i = len(self.plan)
                setattr(self, f"block{i}", nn.Module())
                block = getattr(self, f"block{i}")
                block.bn1, block.conv1 = bn(width), conv(width, out, 3, s)
                block.bn2, block.conv2 = bn(out), conv(out, out, 3)
                if width != out or s != 1:
                    block.shortcut = conv(width, out, 1, s)
                self.plan.append(s)
                width = out
        self.bn = bn(width)
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        x = self.conv1(self.normalise(x))
        for i, stride in enumerate(self.plan):
            block = getattr(self, f"block{i}")
            o = F.relu(block.bn1(x))
            y = F.relu(block.bn2(block.conv1(o)))
            y = block.conv2(F.dropout(y, self.dropout, self.training))
            x = y + (block.shortcut(o) if hasattr(block, "shortcut") else x)
        x = F.relu(self.bn(x)).mean(dim=(2, 3))
        return self.fc(x)


class DenseNetBc(nn.Module):
    """DenseNet-BC: stem 3→2k, three dense blocks of (depth−4)/6 bottlenecks (BN-ReLU-1×1 to
    4k, dropout, BN-ReLU-3×3 to k, dropout, concatenated), transitions (BN-ReLU-1×1 to
    ⌊C·reduction⌋, dropout, 2×2 average pooling) after the first two, then BN → ReLU →
    average pooling → linear."""

    def __init__(self, depth, growth, reduction, classes, dropout, mean, std, in_channels=3):
        super().__init__()
        self.normalise = Normalise(mean, std)
        self.dropout = dropout
        layers = (depth - 4) // 6
        channels = 2 * growth
        self.conv1 = conv(in_channels, channels, 3)
        self.layers = layers
        for b in range(1, 4):
            block = nn.Module()
            setattr(self, f"block{b}", block)
            for l in range(layers):
                layer = nn.Module()
                layer.bn1, layer.conv1 = bn(channels), conv(channels, 4 * growth, 1)
                layer.bn2, layer.conv2 = bn(4 * growth), conv(4 * growth, growth, 3)
                setattr(block, f"layer{l}", layer)
                channels += growth
            if b < 3:
                out = int(channels * reduction)
                trans = nn.Module()
                trans.bn, trans.conv = bn(channels), conv(channels, out, 1)
                setattr(self, f"trans{b}", trans)
                channels = out
        self.bn = bn(channels)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x):
        drop = lambda t: F.dropout(t, self.dropout, self.training)
        x = self.conv1(self.normalise(x))
        for b in range(1, 4):
            block = getattr(self, f"block{b}")
            for l in range(self.layers):
                layer = getattr(block, f"layer{l}")
                out = drop(layer.conv1(F.relu(layer.bn1(x))))
                out = drop(layer.conv2(F.relu(layer.bn2(out))))
                x = torch.cat([x, out], 1)
            if b < 3:
                trans = getattr(self, f"trans{b}")
                x = F.avg_pool2d(drop(trans.conv(F.relu(trans.bn(x)))), 2)
        return self.fc(F.relu(self.bn(x)).mean(dim=(2, 3)))


class ResNet18Block(nn.Module):
    def __init__(self, inp, out, stride):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(inp, out, 3, stride, 1, bias=False), bn(out)
        self.conv2, self.bn2 = nn.Conv2d(out, out, 3, 1, 1, bias=False), bn(out)
        self.shortcut = nn.Sequential()
        if stride != 1 or inp != out:
            self.shortcut = nn.Sequential(nn.Conv2d(inp, out, 1, stride, bias=False), bn(out))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNet18(nn.Module):
    """OpenOOD v1.5's ResNet18_32x32: 3×3 stem, no max-pool, basic blocks 2-2-2-2 of widths
    64-512, global average pooling, linear head (batch norm without affine, as the bench nets)."""

    def __init__(self, classes=10):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False), bn(64)
        layers, inp = [], 64
        for i, width in enumerate([64, 128, 256, 512]):
            for j in range(2):
                layers.append(ResNet18Block(inp, width, 2 if i > 0 and j == 0 else 1))
                inp = width
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        x = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


def bench_net(name, dropout=0.0):
    """The benchmark networks of `pipeline bench-train` (10 classes, identity normalisation,
    the given dropout): (module, input shape)."""
    rgb = dict(classes=10, dropout=dropout, mean=[0.0] * 3, std=[1.0] * 3)
    if name == "small-cnn":
        return SmallCnn(1, [16, 32, 64, 128], [1, 2, 2, 2], 10, dropout, [0.0], [1.0]), (1, 28, 28)
    if name == "resnet-20":
        return WideResNet(22, 1, **rgb), (3, 32, 32)
    if name == "densenet-bc-40":
        return DenseNetBc(40, 12, 0.5, **rgb), (3, 32, 32)
    if name == "densenet-bc-100":
        return DenseNetBc(100, 12, 0.5, **rgb), (3, 32, 32)
    if name == "wrn-40-4":
        return WideResNet(40, 4, **rgb), (3, 32, 32)
    if name == "resnet-18":
        return ResNet18(), (3, 32, 32)
    raise ValueError(f"unknown net {name}")


def learnable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def training_flops(model, shape, batch):
    """2 × multiply-adds of the convolutions and linear layers for one forward pass of `batch`
    images, times 3 (forward, input gradient, weight gradient): the usual training estimate."""
    macs = []

    def hook(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            macs.append(output.numel() * module.in_channels * module.kernel_size[0] * module.kernel_size[1])
        elif isinstance(module, nn.Linear):
            macs.append(output.numel() * module.in_features)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()
        model(torch.zeros(batch, *shape))
    for h in handles:
        h.remove()
    return 3 * 2 * sum(macs)
