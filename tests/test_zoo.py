"""The zoo's facts live in one place (mlan_timm/zoo.py): the rest of the package and the README agree with it."""
import re
from pathlib import Path

import pytest

from mlan_timm import zoo

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mlan_timm"


def _package_sources():
    return {p: p.read_text() for p in PACKAGE.rglob("*.py")}


@pytest.mark.parametrize("fact", [
    '"mlan-timm"', zoo.DOI, '"airplane", "automobile"', '"apple", "aquarium_fish"', "14: 2, 20: 3",
    "125.3 / 255",
], ids=["hf_org", "doi", "cifar10_labels", "cifar100_labels", "depths", "paper_mean"])
def test_each_fact_is_written_once_in_the_package(fact):
    hits = [str(p.relative_to(ROOT)) for p, text in _package_sources().items() if fact in text]
    assert hits == ["mlan_timm/zoo.py"]
    assert sum(text.count(fact) for text in _package_sources().values()) == 1


def test_readme_citation_is_the_zoos():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```bibtex\n(.*?)\n```", readme, re.S).group(1)
    assert block == zoo.CITATION_BIBTEX


def test_name_grammar_round_trips():
    for name in zoo.model_names():
        mid = zoo.parse_model_name(name)
        assert zoo.model_name(mid.family, mid.depth, mid.dataset) == name == mid.name
        assert zoo.parse_model_name(f"{name}.paper") == mid._replace(tag="paper")
        assert zoo.dataset_of(name) == mid.dataset
    assert zoo.dataset_of("resnet50") is None
    assert zoo.hub_repo_id("mlan_resnet20_cifar10.paper") == "mlan-timm/mlan_resnet20_cifar10"
    with pytest.raises(ValueError, match="no mlan_timm model"):
        zoo.model_name("mlan_", 18, "cifar10")


def test_paper_grid_covers_every_variant_of_the_tables():
    from mlan_timm.paper_tables import RECORDS
    assert {r.variant for r in RECORDS} == set(zoo.PAPER_VARIANTS)
    for v in zoo.PAPER_VARIANTS.values():
        assert v.family in zoo.FAMILIES
