"""`cascade-clip export`: the ONNX graph computes the model's logits in ONNX Runtime (tiny width, CPU)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cascadeclip.cli.main import main
from cascadeclip.factory import save_model
from cascadeclip.inference.onnx_export import missing_packages, onnx_runtime_logits, onnx_runtime_session
from cascadeclip.modeling.cascade_clip import CascadeCLIP

from conftest import tiny_model_config

MISSING = missing_packages()
needs_export_extra = pytest.mark.skipif(
    bool(MISSING), reason=f"{', '.join(MISSING)} not installed (pip install -e '.[export]'; CI installs it)"
)


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = CascadeCLIP(tiny_model_config()).eval()
    save_model(tmp_path / "tiny.safetensors", model)
    return tmp_path / "tiny.safetensors", model


@needs_export_extra
def test_exported_graph_equals_pytorch_in_onnx_runtime(checkpoint, tmp_path, capsys):
    path, model = checkpoint
    assert main(["export", str(tmp_path / "tiny.onnx"), "--checkpoint", str(path)]) == 0
    assert "largest logit difference" in capsys.readouterr().out
    session = onnx_runtime_session(tmp_path / "tiny.onnx")
    for windows, classes in ((1, 4), (3, 9)):  # the numbers of windows and classes are free
        images, text = torch.randn(windows, 3, 64, 64), F.normalize(torch.randn(classes, 32), dim=-1)
        with torch.no_grad():
            expected = model(images, text)  # the reference computation
        logits = onnx_runtime_logits(session, images, text)
        assert logits.shape == (windows, classes, 64, 64)
        # fp32 float rounding of another runtime's kernels; a change of function is orders of magnitude larger
        torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)
        assert expected.abs().max() > 100 * 1e-4


def test_export_checks_its_output_before_any_work(checkpoint, tmp_path, capsys):
    path, _ = checkpoint
    existing = tmp_path / "model.onnx"
    existing.write_bytes(b"the user's file")
    assert main(["export", str(existing), "--checkpoint", str(path)]) == 2
    assert existing.read_bytes() == b"the user's file"
    assert main(["export", str(tmp_path / "model.pt"), "--checkpoint", str(path)]) == 2
    assert main(["export", str(tmp_path / "new.onnx"), "--checkpoint", str(tmp_path / "missing.pth")]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 3 and all(line.startswith("cascade-clip export: error:") for line in errors)
    assert "--overwrite" in errors[0] and ".onnx" in errors[1] and "not found" in errors[2]
