"""Grad-CAM heat maps of the last group (``groups.2``) of MLAN and its backbone, side by side.

Uses the ``grad-cam`` package (pytorch-grad-cam: ``GradCAM`` + ``show_cam_on_image``) and matplotlib
(``pip install mlan-timm[examples]``).

    python examples/gradcam.py --out docs/img/gradcam.png
    python examples/gradcam.py --checkpoint mlan_resnet20_cifar10=runs/mlan20/model_best.pth.tar \
        --checkpoint resnet20_cifar10=runs/r20/model_best.pth.tar

Images: one CIFAR-10 test image per class (up to ``--num-images``) read straight from the test tarball
(``--data-dir``, default ../shared/data/cifar10, either the tarball ``test.tar.gz`` or an extracted ``test/``
folder). Without data, synthetic images are used and the figure title says so. Weights: ``--checkpoint
model=path`` or ``--pretrained`` when available; otherwise the models keep their random initialisation and the
figure title says "random weights (untrained)". The CAM is taken for the true class when it is known, else for the
predicted class.
"""
import argparse
import io
import os
import sys
import tarfile
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

DEFAULT_MODELS = ("resnet20_cifar10", "mlan_resnet20_cifar10")
CELL_IN = 1.7  # inches per image cell
DPI = 100
TOP_IN = 0.9  # inches above the grid for the title and column heads


def figure_size_px(num_images: int, num_models: int) -> Tuple[int, int]:
    """(width, height) in pixels of the PNG for ``num_images`` rows and ``num_models`` CAM columns."""
    w, h = _figsize(num_images, num_models)
    return int(round(w * DPI)), int(round(h * DPI))


def _figsize(num_images: int, num_models: int) -> Tuple[float, float]:
    return CELL_IN * (1 + num_models), CELL_IN * num_images + TOP_IN


def load_cifar10_test_images(data_dir: str, num_images: int) -> Optional[Tuple[np.ndarray, List[int], List[str]]]:
    """Up to ``num_images`` test images, one per class in class order: (uint8 N x 32 x 32 x 3, labels, classes)."""
    from PIL import Image

    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    wanted = classes[:num_images]
    found: Dict[str, np.ndarray] = {}
    folder = os.path.join(data_dir, "test")
    tar_path = os.path.join(data_dir, "test.tar.gz")
    if os.path.isdir(folder):
        for c in wanted:
            d = os.path.join(folder, c)
            if os.path.isdir(d):
                files = sorted(f for f in os.listdir(d) if f.endswith(".png"))
                if files:
                    found[c] = np.asarray(Image.open(os.path.join(d, files[0])).convert("RGB"))
    elif os.path.isfile(tar_path):
        with tarfile.open(tar_path, "r:gz") as tar:
            for member in tar:
                parts = member.name.split("/")
                if member.isfile() and len(parts) >= 3 and parts[-2] in wanted and parts[-2] not in found:
                    data = tar.extractfile(member).read()
                    found[parts[-2]] = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
                    if len(found) == len(wanted):
                        break
    if not found:
        return None
    names = [c for c in wanted if c in found]
    return np.stack([found[c] for c in names]), [classes.index(c) for c in names], classes


def synthetic_images(num_images: int, seed: int = 0) -> np.ndarray:
    """Smooth random colour blobs (uint8 N x 32 x 32 x 3), for when no CIFAR data is available."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(num_images, 3, 4, 4, generator=g)
    img = torch.nn.functional.interpolate(low, size=(32, 32), mode="bicubic", align_corners=False).clamp(0, 1)
    return (img.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)


def build_model(name: str, checkpoint: Optional[str], pretrained: bool) -> Tuple[torch.nn.Module, str]:
    """The model and a note on its weights: 'checkpoint <path>', 'pretrained' or 'random weights (untrained)'."""
    import timm

    import mlan_timm  # noqa: F401  (registers the models)

    if checkpoint:
        model = timm.create_model(name, checkpoint_path=checkpoint)
        return model.eval(), f"checkpoint {os.path.basename(checkpoint)}"
    if pretrained:
        try:
            return timm.create_model(name, pretrained=True).eval(), "pretrained"
        except Exception as e:  # no weights published/bundled yet, or no network
            print(f"{name}: pretrained weights unavailable ({type(e).__name__}: {e}); using random weights",
                  file=sys.stderr)
    torch.manual_seed(0)
    return timm.create_model(name).eval(), "random weights (untrained)"


def normalise(images: np.ndarray, model: torch.nn.Module) -> torch.Tensor:
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    mean = torch.tensor(cfg.get("mean", (0.4914, 0.4822, 0.4465))).view(1, 3, 1, 1)
    std = torch.tensor(cfg.get("std", (0.2470, 0.2435, 0.2616))).view(1, 3, 1, 1)
    # NCHW-contiguous on purpose: a channels_last input reaches the 1x1 stride-2 shortcut conv, whose CPU backward
    # corrupts the heap in torch 2.14.1 (reproduced with a bare nn.Conv2d(8, 16, 1, stride=2), batch 3)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().float() / 255.0
    return (x - mean) / std


def grad_cams(model: torch.nn.Module, x: torch.Tensor, targets: Optional[Sequence[int]],
              layer: str = "groups.2") -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grad-CAM maps (N x H x W in [0, 1]) of ``model.<layer>``, plus predicted classes and their probabilities."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with torch.no_grad():
        prob = model(x).softmax(-1)
    pred = prob.argmax(-1)
    cls = list(targets) if targets is not None else pred.tolist()
    with GradCAM(model=model, target_layers=[model.get_submodule(layer)]) as cam:
        maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in cls])
    return maps, pred.numpy(), prob[torch.arange(len(pred)), pred].numpy()


def make_figure(images: np.ndarray, labels: Optional[List[int]], classes: List[str], models: Dict[str, Tuple],
                title: str, out: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from pytorch_grad_cam.utils.image import show_cam_on_image

    n, m = len(images), len(models)
    fig, axes = plt.subplots(n, 1 + m, figsize=_figsize(n, m), dpi=DPI, squeeze=False)
    for i in range(n):
        ax = axes[i, 0]
        ax.imshow(images[i], interpolation="nearest")
        ax.set_title(classes[labels[i]] if labels is not None else f"synthetic {i}", fontsize=7)
        for j, (name, (maps, pred, conf)) in enumerate(models.items()):
            overlay = show_cam_on_image(images[i].astype(np.float32) / 255.0, maps[i], use_rgb=True)
            ax = axes[i, 1 + j]
            ax.imshow(overlay, interpolation="bilinear")
            head = f"{name}\n" if i == 0 else ""
            ax.set_title(f"{head}pred {classes[pred[i]]} ({conf[i]:.2f})", fontsize=6)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    import textwrap

    fig.suptitle(textwrap.fill(title, width=int(fig.get_figwidth() * DPI / 5.2)), fontsize=7, y=0.995, va="top")
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.01, top=1 - (TOP_IN - 0.05) / fig.get_figheight(),
                        hspace=0.45, wspace=0.05)
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return out


def main(argv: Optional[Sequence[str]] = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma list of timm model names")
    p.add_argument("--checkpoint", action="append", default=[], help="MODEL=PATH (repeatable)")
    p.add_argument("--pretrained", action="store_true", help="try pretrained weights (falls back to random)")
    p.add_argument("--data-dir", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                                                      "cifar10"))
    p.add_argument("--synthetic", action="store_true", help="use synthetic images even if data exists")
    p.add_argument("--num-images", type=int, default=6)
    p.add_argument("--layer", default="groups.2", help="module for Grad-CAM (the last group)")
    p.add_argument("--out", default="docs/img/gradcam.png")
    args = p.parse_args(argv)

    ckpts = dict(c.split("=", 1) for c in args.checkpoint)
    data = None if args.synthetic else load_cifar10_test_images(args.data_dir, args.num_images)
    if data is None:
        images, labels, classes = synthetic_images(args.num_images), None, None
        source = "SYNTHETIC images (no CIFAR-10 data found)"
    else:
        images, labels, classes = data
        source = "CIFAR-10 test images"
    results, notes = {}, []
    for name in args.models.split(","):
        model, note = build_model(name, ckpts.get(name), args.pretrained)
        if classes is None:
            classes = list((getattr(model, "pretrained_cfg", {}) or {}).get("label_names") or
                           [str(k) for k in range(model.num_classes)])
        results[name] = grad_cams(model, normalise(images, model), labels, args.layer)
        notes.append(f"{name}: {note}")
    title = f"Grad-CAM of {args.layer}, {source}; " + "; ".join(notes)
    if all("random weights" in n for n in notes):
        title = f"Grad-CAM of {args.layer}, {source}; random weights (untrained): " + ", ".join(results)
    out = make_figure(images, labels, classes, results, title, args.out)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
