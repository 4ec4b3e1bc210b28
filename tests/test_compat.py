"""torchvision (and so timm) import next to a CPU-only torch once regvit_lib is imported."""

import subprocess
import sys


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_timm_and_torchvision_import_after_regvit_lib() -> None:
    r = _run(
        "import regvit_lib, torchvision, timm, torch\n"
        "from torchvision import transforms\n"
        "assert transforms.ToTensor() is not None\n"
        "m = timm.create_model('vit_tiny_patch16_224', pretrained=False, num_classes=2, img_size=32)\n"
        "print(m(torch.rand(1, 3, 32, 32)).shape)\n"
    )
    assert r.returncode == 0, r.stderr
    assert "torch.Size([1, 2])" in r.stdout


def test_shim_only_when_needed_and_ops_fail_clearly() -> None:
    """Without the shim, a CPU torch + CUDA torchvision fails on import; with it, ops fail clearly."""
    bare = _run("import torchvision")
    shim = _run(
        "from regvit_lib._compat import ensure_torchvision_importable\n"
        "print('installed' if ensure_torchvision_importable() else 'not-needed')\n"
        "import torch, torchvision\n"
        "try:\n"
        "    torchvision.ops.nms(torch.rand(3, 4), torch.rand(3), 0.5)\n"
        "    print('nms-ran')\n"
        "except RuntimeError as e:\n"
        "    print('nms-refused:', str(e)[:60])\n"
    )
    assert shim.returncode == 0, shim.stderr
    if bare.returncode == 0:  # torchvision's ops load here (matching build): shim must stay out
        assert shim.stdout.startswith("not-needed") and "nms-ran" in shim.stdout
    else:
        assert "torchvision::nms does not exist" in bare.stderr
        assert shim.stdout.startswith("installed")
        assert "nms-refused: Couldn't load custom C++ ops" in shim.stdout


def test_shim_is_a_no_op_once_torchvision_is_imported() -> None:
    r = _run(
        "import regvit_lib, torchvision\n"
        "from regvit_lib._compat import ensure_torchvision_importable, _shim_state\n"
        "first = _shim_state['library'] is not None\n"
        "again = ensure_torchvision_importable()\n"
        "print(first == again)\n"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "True"
