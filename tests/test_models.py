"""Every registered model (timm-style parametrised tests), and the seed's CNN exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from trainables.models import get_model, list_models, register_model

SMALL = {"resnet18": {"width": 8}, "inception": {"width": 8}, "cnn": {}}


@pytest.fixture(params=list_models())
def name(request):
    return request.param


def small(name, **kw):
    torch.manual_seed(0)
    return get_model(name, **SMALL[name], **kw)


def test_registry():
    assert list_models() == ["cnn", "inception", "resnet18"]
    with pytest.raises(ValueError, match="already registered"):
        register_model("cnn")(lambda: nn.Linear(1, 1))
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        get_model("vgg")
    with pytest.raises(ValueError, match="model cnn takes no argument 'width'"):
        get_model("cnn", width=16)


def test_shape_and_finite(name):
    out = small(name)(torch.rand(4, 1, 28, 28))
    assert out.shape == (4, 10) and torch.isfinite(out).all()


def test_every_parameter_gets_a_gradient(name):
    model = small(name).train()
    model(torch.rand(4, 1, 28, 28)).logsumexp(1).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


def test_modes_differ_only_by_dropout_and_batchnorm(name):
    model = small(name, dropout=0.0)
    x = torch.rand(6, 1, 28, 28)
    model.eval()
    with torch.no_grad():
        a, b = model(x), model(x)
    assert torch.equal(a, b)
    model.train()
    for m in model.modules():  # BN in eval: train mode must now give the eval output
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), a, atol=1e-6)
    with_dropout = small(name, dropout=0.5).train()
    with torch.no_grad():
        assert not torch.equal(with_dropout(x), with_dropout(x))  # dropout draws differ


def test_channels_and_classes(name):
    model = small(name, in_channels=3, num_classes=7)
    assert model(torch.rand(2, 3, 28, 28)).shape == (2, 7)


def test_cnn_is_the_seed_s_exactly():
    model = get_model("cnn")
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 1_219_754
    x = torch.rand(2, 1, 28, 28)
    sizes = []
    for layer in model:
        x = layer(x)
        if isinstance(layer, nn.Conv2d | nn.MaxPool2d):
            sizes.append(x.shape[-1])
    assert sizes == [26, 24, 12, 10, 8, 4]
    kinds = [type(m).__name__ for m in model]
    assert kinds[:3] == ["Conv2d", "ReLU", "BatchNorm2d"]  # the seed's conv, ReLU, BN order
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(2048, 512), (512, 128),
                                                                  (128, 10)]
    assert sum(isinstance(m, nn.MaxPool2d) for m in model) == 2
    assert sum(isinstance(m, nn.Dropout) for m in model) == 5


def test_resnet18_structure():
    from trainables.models.resnet import BasicBlock

    model = get_model("resnet18")
    blocks = [m for m in model.stages if isinstance(m, BasicBlock)]
    assert len(blocks) == 8
    assert [b.conv2.out_channels for b in blocks] == [64, 64, 128, 128, 256, 256, 512, 512]
    assert model.stem[0].kernel_size == (3, 3) and model.stem[0].stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    dims = [(m.in_features, m.out_features) for m in model.head if isinstance(m, nn.Linear)]
    assert dims == [(512, 1024), (1024, 256), (256, 10)]  # raise, then lower, then classify
    assert sum(isinstance(m, nn.Dropout) for m in model.head) == 3


def test_inception_modules():
    from trainables.models.inception import GOOGLENET, InceptionModule

    model = get_model("inception")
    modules = [m for m in model.features if isinstance(m, InceptionModule)]
    assert len(modules) == sum(row != "pool" for row in GOOGLENET) == 9
    assert [m.out_channels for m in modules] == [256, 480, 512, 512, 512, 528, 832, 832, 1024]
    first = modules[0]
    assert first.b1[0].kernel_size == (1, 1) and first.b3[1][0].kernel_size == (3, 3)
    assert first.b5[1][0].kernel_size == (5, 5) and isinstance(first.bp[0], nn.MaxPool2d)
    x = model.features(torch.rand(1, 1, 28, 28))
    assert x.shape[-2:] == (4, 4)
