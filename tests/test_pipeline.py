"""`revsnn demo` through the library pipeline (revsnn/pipeline.py), on the smallest model: its stages, its
files, and the fingerprints its exports carry."""

from typer.testing import CliRunner

from revsnn.checkpoint import load_model
from revsnn.cli.main import app
from revsnn.exporters.fingerprint import check_file, checkpoint_fingerprint

runner = CliRunner()


def test_demo_cli_runs_the_pipeline(tmp_path):
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--out", str(out), "--model", "scnn-digits", "--epochs", "1",
                                 "--samples", "4", "--no-lava"])
    assert result.exit_code == 0, result.output
    for line in ("1/3 train scnn-digits", "2/3 export", "3/3 verify", "Every target reproduces the training model"):
        assert line in result.output
    for name in ("model.pt", "metrics.json", "model.nir", "model.onnx", "plots/raster_torch.png",
                 "plots/raster_norse.png", "plots/raster_onnxruntime.png"):
        assert (out / name).is_file(), name
    assert not (out / "model.net").exists()
    for target in ("torch", "norse", "onnxruntime", "onnxruntime-unrolled"):
        assert f"│ {target} " in result.output
    fingerprint = checkpoint_fingerprint(*load_model(out / "model.pt"))
    check_file(out / "model.nir", fingerprint)    # the demo's files belong to its checkpoint
    check_file(out / "model.onnx", fingerprint)
