"""The classic LeNet-style CIFAR-10 network, on cnnfast layers."""
import torch
from torch import nn

from . import functional as F
from .nn import Conv2d

__all__ = ["Net", "TorchNet", "NetBN"]


class Net(nn.Module):
    """conv 3→6 3×3, pool 2, conv 6→16 3×3, pool 2, fc 576→120→84→10, for 3×32×32 images.

    Each conv block runs as one fused conv+bias+ReLU+max_pool2d op. The ``state_dict`` keys are those of
    the plain PyTorch network (``conv1.weight`` … ``fc3.bias``), so checkpoints load both ways.
    """

    def __init__(self, num_classes: int = 10, *, backend=None):
        super().__init__()
        self.backend = backend
        self.conv1 = Conv2d(3, 6, 3, backend=backend)
        self.conv2 = Conv2d(6, 16, 3, backend=backend)
        self.fc1 = nn.Linear(16 * 6 * 6, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x):
        for conv in (self.conv1, self.conv2):
            x = F.conv_relu_maxpool2d(x, conv.weight, conv.bias, pool_kernel_size=2, backend=self.backend)
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


class TorchNet(nn.Module):
    """The same network in stock PyTorch layers (the reference ``Net`` is compared against)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3)
        self.conv2 = nn.Conv2d(6, 16, 3)
        self.fc1 = nn.Linear(16 * 6 * 6, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


class NetBN(nn.Module):
    """``Net`` with BatchNorm after each convolution and Dropout before ``fc2`` and ``fc3``, on stock
    layers (``cnnfast.convert`` puts it onto cnnfast's; in eval mode each conv block then folds and
    fuses into one ``ConvReLUMaxPool2d``)."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 16, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(16 * 6 * 6, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))
        x = self.pool(torch.relu(self.bn2(self.conv2(x))))
        x = torch.flatten(x, 1)
        x = self.dropout(torch.relu(self.fc1(x)))
        x = self.dropout(torch.relu(self.fc2(x)))
        return self.fc3(x)
