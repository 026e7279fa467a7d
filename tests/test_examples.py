"""examples/gradcam.py and examples/plot_training.py run on tiny inputs on CPU and write PNGs of the expected size;
examples/train_and_evaluate.py runs its loop twice on a synthetic set."""
import importlib.util
import json
import math
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", os.path.join(ROOT, "examples", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _png_size(path):
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def _write_log(path, epochs, fn, extra_bad_line=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        for e in range(epochs):
            f.write(json.dumps({"epoch": e, "lr": 0.1, "train_loss": 2.0 / (e + 1), "test_top1": fn(e)}) + "\n")
        if extra_bad_line:
            f.write('{"epoch": 99, "test_to')  # a line cut short by a killed run


def test_plot_training_reads_logs_and_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    pt = _load("plot_training")
    a = tmp_path / "runs" / "resnet20_cifar10" / "log.jsonl"
    b = tmp_path / "runs" / "mlan_resnet20_cifar10" / "log.jsonl"
    _write_log(str(a), 12, lambda e: 50 + 30 * (1 - math.exp(-e / 3)))
    _write_log(str(b), 12, lambda e: 52 + 32 * (1 - math.exp(-e / 3)), extra_bad_line=True)
    epochs, vals = pt.read_log(str(b))
    assert epochs == list(range(12)) and vals[0] == pytest.approx(52.0)  # truncated last line skipped
    paths = pt.expand_paths([str(tmp_path / "runs" / "*" / "log.jsonl")])
    assert paths == sorted([str(a), str(b)])
    assert pt.expand_paths([str(tmp_path / "runs" / "resnet20_cifar10")]) == [str(a)]  # a folder -> its log
    out = tmp_path / "curves.png"
    pt.main([str(tmp_path / "runs" / "*" / "log.jsonl"), "--out", str(out), "--title", "synthetic logs"])
    assert _png_size(out) == pt.figure_size_px() == (640, 400)


def test_plot_training_resumed_run_keeps_last_entry_and_missing_logs_fail(tmp_path):
    pt = _load("plot_training")
    log = tmp_path / "r" / "log.jsonl"
    log.parent.mkdir()
    log.write_text("\n".join(json.dumps(r) for r in [
        {"epoch": 0, "test_top1": 10.0}, {"epoch": 1, "test_top1": 20.0},
        {"epoch": 1, "test_top1": 25.0}, {"epoch": 2, "train_loss": 1.0}]) + "\n")
    assert pt.read_log(str(log)) == ([0, 1], [10.0, 25.0])
    with pytest.raises(FileNotFoundError):
        pt.expand_paths([str(tmp_path / "nothing" / "*.jsonl")])


def test_gradcam_synthetic_random_weights_png(tmp_path, capsys):
    pytest.importorskip("pytorch_grad_cam")
    pytest.importorskip("matplotlib")
    import timm

    import mlan_timm  # noqa: F401

    gc = _load("gradcam")
    models = ["resnet14_cifar10", "mlan_resnet14_cifar10"]
    assert all(timm.is_model(m) for m in models)
    out = tmp_path / "cam.png"
    gc.main(["--synthetic", "--num-images", "2", "--models", ",".join(models), "--out", str(out)])
    assert _png_size(out) == gc.figure_size_px(2, 2)
    assert "wrote" in capsys.readouterr().out


def test_gradcam_maps_are_normalised_and_title_says_untrained(tmp_path):
    pytest.importorskip("pytorch_grad_cam")
    import numpy as np

    gc = _load("gradcam")
    model, note = gc.build_model("mlan_resnet14_cifar10", None, pretrained=False)
    assert note == "random weights (untrained)"
    imgs = gc.synthetic_images(3)
    assert imgs.shape == (3, 32, 32, 3) and imgs.dtype == np.uint8
    maps, pred, conf = gc.grad_cams(model, gc.normalise(imgs, model), targets=[0, 1, 2])
    assert maps.shape == (3, 32, 32)
    assert maps.min() >= 0 and maps.max() <= 1
    assert pred.shape == (3,) and np.all((conf > 0) & (conf <= 1))


def test_gradcam_reads_cifar_images_from_a_folder(tmp_path):
    pytest.importorskip("pytorch_grad_cam")
    import numpy as np
    from PIL import Image

    gc = _load("gradcam")
    for c in ("airplane", "automobile"):
        (tmp_path / "test" / c).mkdir(parents=True)
        Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(tmp_path / "test" / c / "0001.png")
    imgs, labels, classes = gc.load_cifar10_test_images(str(tmp_path), 3)
    assert imgs.shape == (2, 32, 32, 3) and labels == [0, 1] and classes[0] == "airplane"
    assert gc.load_cifar10_test_images(str(tmp_path / "missing"), 3) is None


@pytest.mark.slow
def test_gradcam_on_real_cifar10_tarball(tmp_path):
    pytest.importorskip("pytorch_grad_cam")
    data = os.path.join(ROOT, "..", "shared", "data", "cifar10")
    if not os.path.isfile(os.path.join(data, "test.tar.gz")):
        pytest.skip("offline CIFAR-10 tarball not present")
    gc = _load("gradcam")
    imgs, labels, classes = gc.load_cifar10_test_images(data, 3)
    assert imgs.shape == (3, 32, 32, 3) and labels == [0, 1, 2]
    out = tmp_path / "cam.png"
    gc.main(["--data-dir", data, "--num-images", "3", "--out", str(out)])
    assert _png_size(out) == gc.figure_size_px(3, 2)


def test_train_and_evaluate_example_runs_end_to_end_and_again(tmp_path, cifar_folder, monkeypatch, capsys):
    """examples/train_and_evaluate.py trains, evaluates and exports; run again on the same --out it continues the
    finished run (nothing to train) instead of being refused or replacing it, and exports the same weights."""
    import sys

    from safetensors.torch import load_file
    ex = _load("train_and_evaluate")
    out = tmp_path / "ex"
    monkeypatch.setattr(sys, "argv", ["train_and_evaluate.py", "--data-dir", str(cifar_folder), "--out", str(out),
                                      "--model", "resnet14_cifar10", "--epochs", "1"])
    ex.main()
    weights = (out / "run" / "model.safetensors").read_bytes()
    first = json.loads((out / "eval.json").read_text())
    ex.main()
    assert (out / "run" / "model.safetensors").read_bytes() == weights
    assert "nothing to do" in capsys.readouterr().out
    again = json.loads((out / "eval.json").read_text())
    assert (again["top1"], again["loss"]) == (first["top1"], first["loss"])
    exported = load_file(out / "hub" / "resnet14_cifar10" / "model.safetensors")
    trained = load_file(out / "run" / "model.safetensors")
    assert exported.keys() == trained.keys() and all((exported[k] == trained[k]).all() for k in trained)
    assert f"{first['top1']:.2f}" in (out / "hub" / "resnet14_cifar10" / "README.md").read_text()
