"""The zoo's facts in one place: model-name grammar, families, depths, datasets, Hub org, citation, paper grid.

Every other module (models, data, tools, tests) imports these; nothing here imports torch or timm, so the tools
and the autoload hook can read the grammar cheaply (the ``timm/data/constants.py`` pattern).

Model names follow ``{family}resnet{depth}_{dataset}`` with an optional pretrained tag ``.{tag}``, e.g.
``mlan_resnet20_cifar10`` or ``mlan_resnet20_cifar10.paper``.
"""
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Tuple

__all__ = [
    "FAMILIES", "Family", "DEPTHS", "DATASETS", "DatasetInfo", "ModelId", "PAPER_VARIANTS", "PaperVariant",
    "HF_ORG", "DOI", "PAPER_TITLE", "PAPER_AUTHORS", "CITATION_BIBTEX", "REPO_URL",
    "PAPER_MEAN", "PAPER_STD", "CIFAR10_CLASSES", "CIFAR100_CLASSES",
    "model_name", "parse_model_name", "model_names", "hub_repo_id", "dataset_of",
]


# ----------------------------------------------------------------------------------------------------------------
# The paper
# ----------------------------------------------------------------------------------------------------------------
DOI = "10.1109/ACCESS.2022.3210711"
PAPER_TITLE = "MLAN: Multi-Level Attention Network"
PAPER_AUTHORS = ("Wang, Qinxuan", "Qin, Peinuan", "Zhang, Yue", "Wei, Xueyao", "Gao, Meiguo")
CITATION_BIBTEX = f"""@article{{wang2022mlan,
  title   = {{{{MLAN}}: Multi-Level Attention Network}},
  author  = {{{' and '.join(PAPER_AUTHORS)}}},
  journal = {{IEEE Access}},
  volume  = {{10}},
  pages   = {{105437--105446}},
  year    = {{2022}},
  doi     = {{{DOI}}}
}}"""

#: Hugging Face Hub organisation of the published weights, and this project's repository.
HF_ORG = "mlan-timm"
REPO_URL = "https://github.com/mlan-timm/mlan-timm"


# ----------------------------------------------------------------------------------------------------------------
# Families (name prefixes), depths, datasets
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Family:
    """A model family: its name prefix, network structure, attention type and a one-line description."""
    prefix: str
    structure: str  # "plain", "classic" or "mlan"
    attn: Optional[str]
    what: str


FAMILIES: Dict[str, Family] = {f.prefix: f for f in (
    Family("", "plain", None, "plain CIFAR ResNet backbone"),
    Family("mlan_", "mlan", "sma", "MLAN: SMA at layer, block and group level, plus fusion"),
    Family("mlan_v2_", "mlan", "sma_v2", "MLAN with SMAv2 (channel mean before the mask convs)"),
    Family("se_", "classic", "se", "SE in every block (SE-ResNet placement)"),
    Family("cbam_", "classic", "cbam", "CBAM in every block (SE-ResNet placement)"),
    Family("ta_", "classic", "ta", "triplet attention in every block (SE-ResNet placement)"),
    Family("gc_", "classic", "gc", "GC in every block (SE-ResNet placement)"),
)}

#: ResNet depth (6n + 2) -> basic blocks n per group.
DEPTHS: Dict[int, int] = {14: 2, 20: 3, 26: 4, 32: 5}

#: Normalisation of the paper recipe (the authors' public code): mean (125.3, 123.0, 113.9)/255,
#: std (63.0, 62.1, 66.7)/255, for both datasets. Models' pretrained_cfg uses the constants they were trained with.
PAPER_MEAN: Tuple[float, float, float] = (125.3 / 255, 123.0 / 255, 113.9 / 255)
PAPER_STD: Tuple[float, float, float] = (63.0 / 255, 62.1 / 255, 66.7 / 255)

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle", "bowl", "boy",
    "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle", "chair", "chimpanzee", "clock",
    "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish",
    "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange",
    "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy", "porcupine",
    "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk",
    "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale",
    "willow_tree", "wolf", "woman", "worm",
)


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset: group widths of its models (the paper's Tables 1/8), classes, normalisation, torchvision folder."""
    name: str
    widths: Tuple[int, int, int]
    labels: Tuple[str, ...]
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    tv_folder: str
    input_size: Tuple[int, int, int] = (3, 32, 32)

    @property
    def num_classes(self) -> int:
        return len(self.labels)


DATASETS: Dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo("cifar10", (8, 16, 32), CIFAR10_CLASSES, PAPER_MEAN, PAPER_STD, "cifar-10-batches-py"),
    "cifar100": DatasetInfo("cifar100", (16, 32, 64), CIFAR100_CLASSES, PAPER_MEAN, PAPER_STD, "cifar-100-python"),
}


# ----------------------------------------------------------------------------------------------------------------
# Name grammar
# ----------------------------------------------------------------------------------------------------------------
class ModelId(NamedTuple):
    """A parsed model name: family prefix, depth, dataset and optional pretrained tag."""
    family: str
    depth: int
    dataset: str
    tag: str = ""

    @property
    def name(self) -> str:
        """The architecture name without the tag."""
        return model_name(self.family, self.depth, self.dataset)


def model_name(family: str, depth: int, dataset: str, tag: str = "") -> str:
    """``('mlan_', 20, 'cifar10')`` -> ``'mlan_resnet20_cifar10'`` (``tag`` appends ``.tag``)."""
    if family not in FAMILIES or depth not in DEPTHS or dataset not in DATASETS:
        raise ValueError(f"no mlan_timm model for family={family!r}, depth={depth!r}, dataset={dataset!r}")
    return f"{family}resnet{depth}_{dataset}" + (f".{tag}" if tag else "")


_NAME_RE = re.compile(
    r"^(?P<family>[a-z0-9_]*?)resnet(?P<depth>\d+)_(?P<dataset>cifar100|cifar10)(?:\.(?P<tag>[\w-]+))?$")


def parse_model_name(name: str) -> ModelId:
    """``'mlan_v2_resnet20_cifar100.paper'`` -> ``ModelId('mlan_v2_', 20, 'cifar100', 'paper')``.

    Accepts timm's ``timm/`` or ``hf-hub:`` style prefixes up to the last ``/`` or ``:``. ValueError for names
    outside the grammar, listing what is valid.
    """
    base = name.split(":")[-1].split("/")[-1]
    m = _NAME_RE.match(base)
    if not m or m.group("family") not in FAMILIES or int(m.group("depth")) not in DEPTHS:
        raise ValueError(
            f"unknown mlan_timm model {name!r}: names are {{family}}resnet{{depth}}_{{dataset}} with family in "
            f"{sorted(FAMILIES)}, depth in {sorted(DEPTHS)}, dataset in {sorted(DATASETS)}")
    return ModelId(m.group("family"), int(m.group("depth")), m.group("dataset"), m.group("tag") or "")


def dataset_of(name: str) -> Optional[str]:
    """The dataset a model name is for (``None`` if ``name`` is not an mlan_timm name)."""
    try:
        return parse_model_name(name).dataset
    except ValueError:
        return None


def model_names() -> List[str]:
    """Every architecture name of the zoo, in a stable order (family, dataset, depth)."""
    return [model_name(f, d, ds) for f in FAMILIES for ds in DATASETS for d in DEPTHS]


def hub_repo_id(name: str) -> str:
    """Hugging Face Hub repo of a model's weights: ``mlan-timm/<architecture name>``."""
    return f"{HF_ORG}/{parse_model_name(name).name}"


# ----------------------------------------------------------------------------------------------------------------
# The paper's grid: which model (family + kwargs) each variant of the paper's tables is
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PaperVariant:
    """A row label of the paper's tables (``tables.tsv``'s ``variant``) and the model that implements it."""
    key: str
    label: str
    family: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def model_name(self, depth: int, dataset: str) -> str:
        return model_name(self.family, depth, dataset)

    @property
    def config(self) -> Tuple[str, Tuple[Tuple[str, Any], ...]]:
        """Hashable identity of the model (family, sorted kwargs): variants with equal config are one model."""
        return self.family, tuple(sorted(self.kwargs.items()))


PAPER_VARIANTS: Dict[str, PaperVariant] = {v.key: v for v in (
    PaperVariant("backbone", "ResNet backbone", ""),
    PaperVariant("mlan_sma_plus", "MLAN (SMA, plus fusion)", "mlan_"),
    PaperVariant("multi_level", "MLAN, multi-level", "mlan_"),
    PaperVariant("single_level", "MLAN, single level", "mlan_", {"levels": "single"}),
    PaperVariant("sma", "MLAN, shared masks (SMA)", "mlan_"),
    PaperVariant("fma", "MLAN, full masks (FMA)", "mlan_", {"attn": "fma"}),
    PaperVariant("fusion_plus", "fusion: plus", "mlan_"),
    PaperVariant("fusion_concat", "fusion: concat + 3x3 conv", "mlan_", {"fusion": "concat"}),
    PaperVariant("fusion_conv1x1", "fusion: concat + 1x1 conv", "mlan_", {"fusion": "conv1x1"}),
    PaperVariant("fusion_weighted", "fusion: weighted plus", "mlan_", {"fusion": "weighted"}),
    PaperVariant("multilevel_sma", "multi-level SMA (MLAN)", "mlan_"),
    PaperVariant("multilevel_sma_v2", "multi-level SMAv2", "mlan_v2_"),
    PaperVariant("multilevel_se", "multi-level SE", "mlan_", {"attn": "se"}),
    PaperVariant("multilevel_cbam", "multi-level CBAM", "mlan_", {"attn": "cbam"}),
    PaperVariant("multilevel_ta", "multi-level triplet attention", "mlan_", {"attn": "ta"}),
    PaperVariant("multilevel_gc", "multi-level GC", "mlan_", {"attn": "gc"}),
    PaperVariant("classic_se", "classic SE-ResNet", "se_"),
    PaperVariant("classic_cbam", "classic CBAM-ResNet", "cbam_"),
    PaperVariant("classic_ta", "classic TA-ResNet", "ta_"),
    PaperVariant("classic_gc", "classic GC-ResNet", "gc_"),
)}
