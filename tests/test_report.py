"""``revsnn report``: the page is one self-contained file whose plots load in a real browser (headless Chromium),
its numbers are the library's, and bad options end with one sentence."""

import json
import re
import shutil
import subprocess

import pytest
from typer.testing import CliRunner

from revsnn.checkpoint import save_checkpoint
from revsnn.cli.main import app
from revsnn.exporters.activity import E_AC_PJ, E_MAC_PJ
from revsnn.report import write_report
from revsnn.testing import trained_like


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    model = trained_like("revsresnet-digits", 0, planes=[2, 4]).float()
    ckpt = root / "model.pt"
    save_checkpoint(ckpt, model, train={"time_steps": 4, "encoding": "rate"})
    out = root / "out"
    data = write_report(ckpt, out, samples=2, targets=("torch", "onnxruntime"), memory_depths=(1, 2))
    return out, data


def test_report_is_self_contained_and_its_numbers_are_the_librarys(report_dir):
    out, data = report_dir
    page = (out / "report.html").read_text()
    assert json.loads((out / "report.json").read_text())["model"] == "revsresnet-digits"
    for heading in ("Model", "Verify", "Activation memory against depth", "Activity and energy per inference",
                    "Loihi 2 resources"):
        assert f"<h2>{heading}" in page
    srcs = re.findall(r"<img [^>]*src='([^']*)'", page)
    assert len(srcs) == data["images"] == 3 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "http://" not in page and "https://" not in page     # nothing to fetch: it opens with no server
    for a in data["costs"]["activities"].values():
        assert a["energy_pj"] == pytest.approx(a["macs"] * E_MAC_PJ + a["synops"] * E_AC_PJ)
    assert set(data["costs"]["activities"]) == {"float", "onnxruntime"}   # lava not asked for: no Loihi runs
    assert data["costs"]["activities"]["onnxruntime"]["synops"] == \
        pytest.approx(data["costs"]["activities"]["float"]["synops"])      # same spikes, same count
    assert data["costs"]["loihi_resources"] is None and data["verify"]["ok"]
    assert len({r["depth"] for r in data["memory"]}) == 2                  # 1 and 2 blocks per stage
    assert {r["variant"] for r in data["memory"]} >= {"reversible", "plain"}


def test_report_renders_in_headless_chromium(report_dir, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("headless Chromium is not installed here (Debian: apt-get install chromium)")
    out, data = report_dir
    url = (out / "report.html").resolve().as_uri()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"]
    dom = subprocess.run([browser, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    # The page's own script counts the images that decoded once it has loaded.
    loaded = re.search(r'data-images-loaded="(\d+)"', dom)
    assert loaded is not None, dom[:500]
    assert int(loaded.group(1)) == data["images"] == 3
    shot = tmp_path / "report.png"
    subprocess.run([browser, *flags, "--window-size=1200,2400", f"--screenshot={shot}", url], capture_output=True,
                   timeout=120)
    assert shot.stat().st_size > 20_000


def test_report_bad_options_fail_with_one_sentence(tmp_path):
    not_a_dir = tmp_path / "file.txt"
    not_a_dir.write_text("x")
    result = CliRunner().invoke(app, ["report", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "does not exist" in result.output and "Traceback" not in result.output
    model = trained_like("scnn-digits", 0, channels=[4, 4]).float()
    save_checkpoint(tmp_path / "m.pt", model, train={"time_steps": 4, "encoding": "rate"})
    result = CliRunner().invoke(app, ["report", str(tmp_path / "m.pt"), "--out", str(not_a_dir)])
    assert result.exit_code == 2 and "is a file" in result.output
    result = CliRunner().invoke(app, ["report", str(tmp_path / "m.pt"), "--out", str(tmp_path / "r"),
                                      "--targets", "nope"])
    assert result.exit_code == 2 and "unknown target" in result.output
    # a depth sweep far beyond this machine is refused from the estimate, before any verify run or model build
    model = trained_like("revsresnet-digits", 0, planes=[2, 4]).float()
    save_checkpoint(tmp_path / "rev.pt", model, train={"time_steps": 4, "encoding": "rate"})
    result = CliRunner().invoke(app, ["report", str(tmp_path / "rev.pt"), "--out", str(tmp_path / "r"),
                                      "--memory-depths", "1,10000000"])
    assert result.exit_code == 2 and "needs at least" in result.output and "--memory-depths" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "r").exists()


def test_report_counts_from_verifys_own_runs(tmp_path):
    """`revsnn report` reuses the runs verify made (norse/onnxruntime spikes, Lava's chain spikes) instead of
    running each target twice: the counts from those traces equal the counts of fresh, independent runs."""
    from revsnn.report import model_costs
    from revsnn.verify import verify

    model = trained_like("scnn-digits", 0).float()
    ckpt = tmp_path / "model.pt"
    save_checkpoint(ckpt, model, train={"time_steps": 4, "encoding": "rate"})
    targets = ("torch", "onnxruntime", "lava")
    report = verify(ckpt, targets, 2, lava_synapses="dense")
    assert report.ok and report.traces["lava"].layer_spikes
    reused = model_costs(ckpt, 2, targets, "dense", traces=report.traces)
    fresh = model_costs(ckpt, 2, targets, "dense")
    for name in ("onnxruntime", "lava", "chain", "quantised"):
        a, b = reused.activities[name], fresh.activities[name]
        assert (a.spikes, a.synops, a.relay_synops) == (b.spikes, b.synops, b.relay_synops), name
    assert reused.activities["lava"].synops > 0 and reused.lava_equals_chain
