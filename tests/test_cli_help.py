"""Every console script's --help states each option's default at most once (issue 11)."""
import re

import pytest

from mlan_timm.tools import eval as meval
from mlan_timm.tools import export as mexport
from mlan_timm.tools import train as mtrain
from mlan_timm.tools.bench import cli as mbench


@pytest.mark.parametrize('build', [mtrain.build_parser, meval.build_parser, mexport.build_parser,
                                   mexport.build_push_parser, mbench.build_parser],
                         ids=['mlan-train', 'mlan-eval', 'mlan-export', 'mlan-push', 'mlan-bench'])
def test_help_gives_each_default_once(build):
    text = build().format_help()
    blocks = re.split(r'\n(?=  \S)', text)  # one block per option or positional argument
    doubled = [b for b in blocks[1:] if b.count('(default') > 1]  # blocks[0]: usage and description
    assert not doubled, doubled
    assert '(default: None)' not in text and '(default: False)' not in text


def test_train_help_shows_recipe_defaults_and_hand_written_ones():
    text = ' '.join(mtrain.build_parser().format_help().split())
    assert '--lr LR initial learning rate (default: 0.1)' in text
    assert 'dataset (default: from the model name suffix)' in text
