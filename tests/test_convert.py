"""cnnfast.convert: torch models onto cnnfast layers, with Conv→ReLU→MaxPool fused and, in eval mode,
Conv→BatchNorm folded; outputs compared with the original model on the "torch" backend (float32)."""
import pytest
import torch
import torch.nn.functional as TF
from torch import fx, nn

import cnnfast
import cnnfast.nn as cnn
from cnnfast.convert import convert

torchvision = pytest.importorskip("torchvision")

ATOL, RTOL = 1e-5, 1e-4      # float32, a few rounding steps apart (folding reorders the arithmetic)


def _randomise_batchnorm(model, seed=0):
    """Non-trivial BatchNorm statistics and affine parameters, so folding is really tested."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model


def _count(model, cls):
    return sum(type(m) is cls for m in model.modules())


def _no_torch_layers_left(model):
    return not any(type(m) in (nn.Conv2d, nn.MaxPool2d) for m in model.modules())


@pytest.mark.parametrize("name", ["resnet18", "densenet121"])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_converted_torchvision_model_matches_original(name, mode):
    torch.manual_seed(0)
    model = _randomise_batchnorm(getattr(torchvision.models, name)(num_classes=10))
    getattr(model, mode)()
    converted = convert(model, backend="torch")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, actual = model(x), converted(x)
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=RTOL)
    assert _no_torch_layers_left(converted)
    assert all(m.backend == "torch" for m in converted.modules() if isinstance(m, (cnn.Conv2d, cnn.MaxPool2d,
                                                                                    cnn.ConvReLUMaxPool2d)))
    assert converted.training == (mode == "train")
    fused = _count(converted, cnn.ConvReLUMaxPool2d)
    if mode == "eval":        # the stem conv → bn → relu → maxpool folds and fuses
        assert fused == 1
        assert _count(converted, nn.BatchNorm2d) < _count(model, nn.BatchNorm2d)
    else:                     # batch statistics in training: nothing to fold, BN sits between conv and relu
        assert fused == 0
        assert _count(converted, nn.BatchNorm2d) == _count(model, nn.BatchNorm2d)


def test_converted_resnet18_eval_mode_has_no_batchnorm_left():
    model = _randomise_batchnorm(torchvision.models.resnet18(num_classes=10)).eval()
    converted = convert(model)
    assert _count(converted, nn.BatchNorm2d) == 0
    assert type(converted) is type(model)                            # module swaps: class and forward kept
    assert isinstance(converted.conv1, cnn.ConvReLUMaxPool2d)       # same name as the original stem conv
    assert [type(converted.bn1), type(converted.relu), type(converted.maxpool)] == [nn.Identity] * 3
    assert isinstance(converted.layer2[0].downsample[0], cnn.Conv2d)   # folded inside a Sequential
    assert not any(k.startswith("bn1.") or ".bn" in k for k in converted.state_dict())


def test_converted_resnet18_in_training_gives_the_same_gradients_and_running_stats():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).train()
    converted = convert(model, backend="torch")
    x = torch.randn(2, 3, 64, 64)
    model(x).square().sum().backward()
    converted(x).square().sum().backward()
    torch.testing.assert_close(converted.conv1.weight.grad, model.conv1.weight.grad, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(converted.layer4[1].conv2.weight.grad, model.layer4[1].conv2.weight.grad,
                               atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(converted.bn1.running_mean, model.bn1.running_mean)
    assert converted.conv1.weight is not model.conv1.weight            # a copy: the original is untouched
    assert type(model.conv1) is nn.Conv2d


class _Plain(nn.Module):
    """The tutorial's Net, with both module and functional ReLU/pooling in forward code."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3)
        self.conv2 = nn.Conv2d(6, 16, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(16 * 7 * 7, 10)

    def forward(self, x):
        x = self.pool(TF.relu(self.conv1(x)))
        x = TF.max_pool2d(torch.relu(self.conv2(x)), kernel_size=2, stride=2)
        return self.fc(torch.flatten(x, 1))


def test_convert_fuses_conv_relu_maxpool_in_forward_code_and_keeps_gradients():
    torch.manual_seed(0)
    model = _Plain()
    converted = convert(model, backend="torch")
    assert isinstance(converted, fx.GraphModule)        # F.max_pool2d had to leave the forward code
    assert isinstance(converted.conv1, cnn.ConvReLUMaxPool2d) and isinstance(converted.conv2, cnn.ConvReLUMaxPool2d)
    assert converted.conv2.padding == (1, 1) and converted.conv2.pool_stride == 2
    assert set(converted.state_dict()) == set(model.state_dict())
    x = torch.randn(3, 3, 32, 32, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    y, y2 = model(x), converted(x2)
    torch.testing.assert_close(y2, y, atol=ATOL, rtol=RTOL)
    y.sum().backward()
    y2.sum().backward()
    torch.testing.assert_close(x2.grad, x.grad, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(converted.conv1.weight.grad, model.conv1.weight.grad, atol=ATOL, rtol=RTOL)


def test_convert_fuses_and_folds_in_sequential_keeping_entry_names():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(8, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(8 * 3 * 3, 4))
    _randomise_batchnorm(model)
    x = torch.randn(2, 3, 16, 16)

    train = convert(model.train(), backend="torch")
    assert isinstance(train[0], cnn.ConvReLUMaxPool2d)
    assert [type(m) for m in list(train)[1:5]] == [cnn.Conv2d, nn.BatchNorm2d, nn.ReLU, cnn.MaxPool2d]
    assert set(train.state_dict()) == set(model.state_dict())
    torch.testing.assert_close(train(x), model(x), atol=ATOL, rtol=RTOL)

    model.eval()
    ev = convert(model, backend="torch")
    assert type(ev) is nn.Sequential
    assert [type(m) for m in ev] == [cnn.ConvReLUMaxPool2d, cnn.ConvReLUMaxPool2d, nn.Flatten, nn.Linear]
    assert list(ev._modules) == ["0", "3", "7", "8"]       # names kept: state_dict keys stay the original's
    assert ev[1].bias is not None                          # the folded BatchNorm became the bias
    with torch.no_grad():
        torch.testing.assert_close(ev(x), model(x), atol=ATOL, rtol=RTOL)


def test_convert_inplace_keeps_the_parameter_objects():
    model = _Plain()
    weight = model.conv1.weight
    converted = convert(model, inplace=True)
    assert converted.conv1.weight is weight
    assert convert(model, fuse=False, inplace=True).conv1.weight is weight


def test_convert_without_fuse_only_replaces_layers():
    model = _Plain()
    converted = convert(model, fuse=False)
    assert type(converted) is _Plain
    assert type(converted.conv1) is cnn.Conv2d and type(converted.pool) is cnn.MaxPool2d
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(converted(x), model(x))


class _MyConv(cnn.Conv2d):
    pass


class _OtherConv(nn.Conv2d):
    def forward(self, x):
        return super().forward(x) * 2


def test_convert_does_not_convert_cnnfast_or_foreign_subclasses():
    model = nn.Sequential(_MyConv(3, 4, 3), nn.ReLU(), _OtherConv(4, 4, 3), nn.ReLU(), nn.MaxPool2d(2),
                          cnn.MaxPool2d(1))
    converted = convert(model)
    assert [type(m) for m in converted] == [_MyConv, nn.ReLU, _OtherConv, nn.ReLU, cnn.MaxPool2d, cnn.MaxPool2d]
    again = convert(converted)
    assert [type(m) for m in again] == [type(m) for m in converted]
    x = torch.randn(1, 3, 12, 12)
    torch.testing.assert_close(again(x), model(x))


def test_convert_of_cnnfast_net_changes_nothing_but_the_backend():
    torch.manual_seed(0)
    net = cnnfast.Net()
    converted = convert(net, backend="torch")
    assert type(converted) is cnnfast.Net
    x = torch.randn(2, 3, 32, 32)
    with cnnfast.backends.use("torch"):
        torch.testing.assert_close(converted(x), net(x))


class _Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2))
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        x = self.features(x)
        if x.sum() > 0:
            x = self.conv(x)
        return x


def test_convert_falls_back_to_module_replacement_for_untraceable_models():
    torch.manual_seed(0)
    model = _Untraceable()
    converted = convert(model, backend="torch")
    assert type(converted) is _Untraceable
    assert isinstance(converted.features[0], cnn.ConvReLUMaxPool2d)
    assert type(converted.conv) is cnn.Conv2d
    x = torch.randn(2, 3, 10, 10)
    torch.testing.assert_close(converted(x), model(x), atol=ATOL, rtol=RTOL)


class _Shared(nn.Module):
    """One conv module called twice: fusing it at one call site would break the other."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        a = TF.max_pool2d(TF.relu(self.conv(x)), 2)
        return a + TF.max_pool2d(self.conv(x), 2)


def test_convert_does_not_fuse_a_module_called_twice():
    model = _Shared()
    converted = convert(model)
    assert type(converted.conv) is cnn.Conv2d
    x = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(converted(x), model(x))


def test_convert_leaves_unfusable_pools_unfused():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
                          nn.Conv2d(4, 4, 3), nn.ReLU(), nn.MaxPool2d(2, return_indices=True))
    converted = convert(model)
    assert [type(m) for m in converted] == [cnn.Conv2d, nn.ReLU, cnn.MaxPool2d] * 2
    assert converted[2].ceil_mode and converted[5].return_indices


def test_convert_a_bare_layer_returns_the_cnnfast_layer():
    conv = nn.Conv2d(3, 4, 3)
    converted = convert(conv, backend="torch")
    assert type(converted) is cnn.Conv2d and converted.backend == "torch"
    torch.testing.assert_close(converted.weight, conv.weight)
    assert type(convert(nn.MaxPool2d(2))) is cnn.MaxPool2d
    assert convert(cnn.Conv2d(3, 4, 3), backend="torch").backend == "torch"
