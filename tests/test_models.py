"""Wiring of the MLAN levels (docs/architecture.md A2-A9) against hand-written forward passes."""
import pytest
import timm
import torch

import mlan_timm
from mlan_timm.models.blocks import BasicBlock, MLANBlock, MLANGroup, SingleLevelBlock
from mlan_timm.models.cifar_resnet import parse_model_name


def _randomize_bn(module):
    """Give BN layers non-trivial statistics so eval-mode comparisons exercise them."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.normal_(1, 0.1)
                m.bias.normal_(0, 0.1)
    return module.eval()


@pytest.fixture(params=["sma", "sma_v2", "cbam"])
def attn(request):
    return request.param


def _factory(attn):
    return lambda c: mlan_timm.layers.create_attention(attn, c)


@torch.no_grad()
def test_mlan_block_is_fusion_of_backbone_la_and_residual(attn):
    block = _randomize_bn(MLANBlock(8, 16, 2, _factory(attn), "weighted"))
    x = torch.randn(2, 8, 16, 16)
    o1 = torch.relu(block.bn1(block.conv1(x)))
    o2 = block.bn2(block.conv2(o1))
    a1, a2 = block.layer_attn[0](o1), block.layer_attn[1](o2)
    la = block.block_attn.attn(torch.cat([a1, a2], 1))
    x_a = (la[:, :16] + la[:, 16:]) / 2
    expected = torch.relu(block.fusion(o2, x_a, block.downsample(x)))
    out, attn_out = block(x)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(attn_out, x_a)
    assert out.shape == (2, 16, 8, 8)


@torch.no_grad()
def test_mlan_group_fuses_ba_with_projected_group_input(attn):
    group = _randomize_bn(MLANGroup(8, 16, 3, 2, _factory(attn), "plus"))
    x = torch.randn(2, 8, 16, 16)
    y, attns = x, []
    for block in group.blocks:
        y, a = block(y)
        attns.append(a)
    ba = group.group_attn.attn(torch.cat(attns, 1))
    g_a = sum(ba.chunk(3, dim=1)) / 3
    expected = torch.relu(y + g_a + group.downsample(x))
    torch.testing.assert_close(group(x), expected)
    assert isinstance(group.downsample, torch.nn.Sequential)  # 8 -> 16 channels, stride 2: 1x1 conv + BN


@torch.no_grad()
def test_first_group_has_identity_group_residual():
    model = timm.create_model("mlan_resnet14_cifar10")
    assert isinstance(model.layer1.downsample, torch.nn.Identity)
    assert isinstance(model.layer2.downsample, torch.nn.Sequential)


@torch.no_grad()
def test_single_level_block():
    block = _randomize_bn(SingleLevelBlock(16, 16, 1, _factory("sma"), "plus"))
    x = torch.randn(2, 16, 8, 8)
    o2 = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x)))))
    torch.testing.assert_close(block(x), torch.relu(o2 + block.attn(o2) + x))


@torch.no_grad()
def test_classic_block_applies_attention_on_the_residual_branch():
    block = _randomize_bn(BasicBlock(16, 16, 1, _factory("sma")))
    x = torch.randn(2, 16, 8, 8)
    o2 = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x)))))
    torch.testing.assert_close(block(x), torch.relu(block.attn(o2) + x))


def test_structures_are_what_the_names_say():
    plain = timm.create_model("resnet20_cifar10")
    assert all(type(m) is BasicBlock and isinstance(m.attn, torch.nn.Identity)
               for m in plain.modules() if isinstance(m, BasicBlock))
    se = timm.create_model("se_resnet20_cifar10")
    assert sum(type(m).__name__ == "SEModule" for m in se.modules()) == 9
    mlan = timm.create_model("mlan_v2_resnet26_cifar100")
    assert [len(g.blocks) for g in (mlan.layer1, mlan.layer2, mlan.layer3)] == [4, 4, 4]
    assert [g.blocks[0].conv1.out_channels for g in (mlan.layer1, mlan.layer2, mlan.layer3)] == [16, 32, 64]
    single = timm.create_model("mlan_resnet14_cifar10", levels="single")
    assert sum(isinstance(m, SingleLevelBlock) for m in single.modules()) == 6
    assert not any(isinstance(m, MLANGroup) for m in single.modules())


def test_model_names_and_parse():
    names = mlan_timm.list_models()
    assert len(names) == 56 == len(set(names))
    assert set(names) <= set(timm.list_models("*_cifar*"))
    assert parse_model_name("mlan_v2_resnet32_cifar100") == ("mlan_v2_", 32, "cifar100")
    with pytest.raises(ValueError, match="unknown mlan_timm model 'mlan_resnet18_cifar10'"):
        parse_model_name("mlan_resnet18_cifar10")


def test_label_names_follow_official_order():
    c10 = timm.create_model("resnet14_cifar10").pretrained_cfg["label_names"]
    c100 = timm.create_model("resnet14_cifar100").pretrained_cfg["label_names"]
    assert c10[0] == "airplane" and c10[9] == "truck"
    assert len(c100) == 100 and c100 == sorted(c100) and c100[0] == "apple" and c100[-1] == "worm"

