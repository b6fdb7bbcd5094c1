"""Every registered model (timm-style parametrised tests), the registry, and each family's shape:
the seed's CNN exactly, ResNet18's BasicBlock [2, 2, 2, 2], GoogLeNet's Inception modules."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from trainables.models import get_model, list_models, register_model

SMALL = {"resnet18": {"width": 8}, "inception": {"width": 8}, "cnn": {}}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # These nets run tiny batches: with two OpenMP threads on a busy 2-core machine every op
    # waits for a descheduled thread (measured 10-100x slower), so run them on one.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(params=list_models())
def name(request):
    return request.param


def small(name, **kw):
    torch.manual_seed(0)
    return get_model(name, **SMALL[name], **kw)


def test_registry():
    assert list_models() == ["cnn", "inception", "resnet18"]
    assert set(SMALL) == set(list_models())  # a new family needs a small setting here
    with pytest.raises(ValueError, match="already registered"):
        register_model("cnn")(lambda: nn.Linear(1, 1))
    assert list_models() == ["cnn", "inception", "resnet18"]  # the failed one left no trace
    with pytest.raises(ValueError, match="unknown model 'vgg'; choose one of cnn, inception"):
        get_model("vgg")
    with pytest.raises(ValueError, match="model cnn takes no argument 'width'"):
        get_model("cnn", width=16)
    with pytest.raises(ValueError, match="model resnet18 takes no argument 'depth'"):
        get_model("resnet18", depth=34)


def test_shape_and_finite(name):
    out = small(name)(torch.rand(4, 1, 28, 28))
    assert out.shape == (4, 10) and torch.isfinite(out).all()


def test_every_parameter_gets_a_gradient(name):
    model = small(name).train()
    x = torch.rand(4, 1, 28, 28)
    model(x).logsumexp(1).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    # ResNet zero-initialises the last BN of each residual branch, which blocks the branch's
    # gradient until that BN's weight moves: take one step, then every gradient must be non-zero.
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    model.zero_grad()
    model(x).logsumexp(1).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad.abs().sum() > 0, pname


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
    rates = {m.p for m in with_dropout.modules() if isinstance(m, nn.Dropout)}
    assert rates == {0.5}  # ``dropout`` is the rate of every Dropout layer
    with torch.no_grad():
        assert not torch.equal(with_dropout(x), with_dropout(x))  # dropout draws differ


def test_channels_and_classes(name):
    model = small(name, in_channels=3, num_classes=7)
    assert model(torch.rand(2, 3, 28, 28)).shape == (2, 7)


def test_cnn_is_the_seed_s_exactly():
    model = get_model("cnn")
    assert isinstance(model, nn.Sequential)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 1_219_754
    x = torch.rand(2, 1, 28, 28)
    sizes = []
    for layer in model:
        x = layer(x)
        if isinstance(layer, nn.Conv2d | nn.MaxPool2d):
            sizes.append(x.shape[-1])
        if isinstance(layer, nn.Flatten):
            assert x.shape == (2, 2048)
    assert sizes == [26, 24, 12, 10, 8, 4]
    kinds = [type(m).__name__ for m in model]
    assert kinds == [
        "Conv2d", "ReLU", "BatchNorm2d", "Conv2d", "ReLU", "BatchNorm2d", "MaxPool2d", "Dropout",
        "Conv2d", "ReLU", "BatchNorm2d", "Dropout", "Conv2d", "ReLU", "BatchNorm2d",
        "MaxPool2d", "Dropout", "Flatten",
        "Linear", "ReLU", "BatchNorm1d", "Dropout", "Linear", "ReLU", "BatchNorm1d", "Dropout",
        "Linear",
    ]  # docs/seed.md's layer table, in its order
    convs = [(m.in_channels, m.out_channels) for m in model if isinstance(m, nn.Conv2d)]
    assert convs == [(1, 32), (32, 32), (32, 64), (64, 128)]
    linears = [(m.in_features, m.out_features) for m in model if isinstance(m, nn.Linear)]
    assert linears == [(2048, 512), (512, 128), (128, 10)]


def test_resnet18_structure():
    from trainables.models.resnet import BasicBlock, ResNet

    model = get_model("resnet18")
    blocks_per_stage = [sum(isinstance(m, BasicBlock) for m in s.modules()) for s in model.stages]
    assert blocks_per_stage == [2, 2, 2, 2]
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert [b.conv2.out_channels for b in blocks] == [64, 64, 128, 128, 256, 256, 512, 512]
    assert all(b.bn2.weight.eq(0).all() for b in blocks)  # zero_init_residual
    assert model.stem[0].kernel_size == (3, 3) and model.stem[0].stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    dims = [(m.in_features, m.out_features) for m in model.head if isinstance(m, nn.Linear)]
    assert dims == [(512, 1024), (1024, 256), (256, 10)]  # raise, then lower, then classify
    kinds = [type(m).__name__ for m in model.head]
    assert kinds == ["Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear"]

    small_net = ResNet((2, 2, 2, 2), width=4, zero_init_residual=False)
    assert all(b.bn2.weight.eq(1).all() for b in small_net.modules()
               if isinstance(b, BasicBlock))
    x = small_net.stem(torch.rand(1, 1, 28, 28))
    sizes = [x.shape[-1]]
    for stage in small_net.stages:
        x = stage(x)
        sizes.append(x.shape[-1])
    assert sizes == [28, 28, 14, 7, 4]


def test_inception_modules():
    from trainables.models.inception import GOOGLENET, InceptionModule

    model = get_model("inception")
    modules = [m for m in model.features if isinstance(m, InceptionModule)]
    assert len(modules) == sum(len(group) for group in GOOGLENET) == 9
    # GoogLeNet's table 1 output depths, 3a .. 5b
    assert [m.out_channels for m in modules] == [256, 480, 512, 512, 512, 528, 832, 832, 1024]
    first = modules[0]
    assert first.b1[0].kernel_size == (1, 1) and first.b3[1][0].kernel_size == (3, 3)
    assert first.b5[1][0].kernel_size == (5, 5) and isinstance(first.bp[0], nn.MaxPool2d)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == len(norms) == 2 + 6 * 9  # BN after every convolution
    dims = [(m.in_features, m.out_features) for m in model.head if isinstance(m, nn.Linear)]
    assert dims == [(1024, 2048), (2048, 512), (512, 10)]

    narrow = get_model("inception", width=8)
    x = torch.rand(1, 1, 28, 28)
    sizes = []
    for layer in narrow.features:
        x = layer(x)
        if isinstance(layer, nn.MaxPool2d):
            sizes.append(x.shape[-1])
    assert sizes == [14, 7, 4]
    assert min(c.out_channels for c in narrow.modules() if isinstance(c, nn.Conv2d)) >= 4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_dropout_mask_keeps_the_layout_and_the_rate(dtype):
    """The project's Dropout: each unit kept with probability 1 - p and scaled by 1 / (1 - p),
    the output laid out as its input (a channels_last activation stays channels_last, with no
    copy into NCHW), eval an identity."""
    from trainables.models.layers import Dropout

    torch.manual_seed(0)
    x = torch.ones(64, 32, 12, 12, dtype=dtype).contiguous(memory_format=torch.channels_last)
    drop = Dropout(0.25).train()
    y = drop(x)
    assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
    values = y.float().unique().tolist()
    assert len(values) == 2 and values[0] == 0 and values[1] == pytest.approx(1 / 0.75, rel=1e-2)
    kept = (y != 0).double().mean().item()
    assert abs(kept - 0.75) < 0.01  # 294,912 draws: the standard error is 0.0008
    assert torch.equal(drop.eval()(x), x)


def test_a_model_card_holds_what_the_rest_of_the_project_asks():
    """Each family declares its facts when it registers (trainables/models/registry.py); the
    profiles, the augmentation's "auto", the fast path and --model's aliases ask the card."""
    from search.profiles import PROFILES
    from trainables import augment, fastpath
    from trainables.models import aliases, card, register_model

    assert card("cnn").augment == augment.default_policy("cnn") == "offline"
    assert not card("cnn").takes_width and PROFILES["quick"].width("cnn") is None
    assert card("resnet") is card("resnet18") and aliases() == {"resnet": "resnet18"}
    assert [PROFILES[p].width("resnet18") for p in ("smoke", "quick", "standard", "seed")] \
        == [4, 16, 16, 64]
    assert [PROFILES[p].width("inception") for p in ("smoke", "quick", "standard", "seed")] \
        == [4, 8, 8, 64]
    assert fastpath.compile_pays("resnet18") and not fastpath.compile_pays("cnn")
    with pytest.raises(ValueError, match="'resnet' is already registered"):
        register_model("other", aliases=("resnet",))(lambda: None)
    with pytest.raises(ValueError, match="declares a width but takes no width argument"):
        register_model("fixed", width=8)(lambda dropout=0.25: None)
