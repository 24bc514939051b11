"""Reports (ecoinfer.bench.report): JSON, Markdown, text, plots, and a self-contained HTML page
that headless Chromium renders (the test skips when /usr/bin/chromium is absent)."""

from __future__ import annotations

import base64
import json
import math
import re
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

from ecoinfer.bench import report
from ecoinfer.bench.harness import BenchResult, LatencyStats
from ecoinfer.energy import EnergyReading, PowerSample

CHROMIUM = Path("/usr/bin/chromium")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _reading(power_w: float, util: float | None, n: int = 40, method: str = "nvml_counter"):  # noqa: ANN202
    samples = [
        PowerSample(t_s=0.05 * k, power_w=power_w + 5 * math.sin(k), gpu_util_pct=util,
                    sm_clock_mhz=1980.0, temp_c=50.0)  # fmt: skip
        for k in range(n)
    ] if method != "estimated" else []  # fmt: skip
    dur = 3.0
    return EnergyReading(
        method=method,
        measured=method != "estimated",
        energy_j=power_w * dur,
        duration_s=dur,
        mean_power_w=power_w,
        idle_power_w=70.0 if method != "estimated" else None,
        energy_above_idle_j=(power_w - 70.0) * dur if method != "estimated" else None,
        gpu_util_pct=util,
        samples=samples,
        device="NVIDIA H200",
        warnings=[] if method != "estimated" else ["estimated, not measured: energy = 65 W x 3 s"],
    )


def _result(name: str, p50_ms: float, power_w: float, batch: int = 8, **kw) -> BenchResult:  # noqa: ANN003
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    lat_s = list(rng.gamma(20.0, p50_ms / 20.0, size=300) / 1e3)
    calls_per_s = 1e3 / p50_ms
    r = BenchResult(
        name,
        "NVIDIA H200",
        batch,
        LatencyStats.of(lat_s),
        throughput_per_s=calls_per_s * batch,
        energy=_reading(power_w, kw.pop("util", 40.0), method=kw.pop("method", "nvml_counter")),
    )
    r.j_per_inference = power_w / r.throughput_per_s
    if kw.pop("raw", False):
        r.extra["latencies_ms"] = [t * 1e3 for t in lat_s]
    r.extra.update(kw)
    return r


@pytest.fixture
def rep() -> report.Report:
    base = _result("PyTorch eager FP32", 25.0, 300.0, rel_l2_error=0.0, max_abs_error=0.0)
    fp16 = _result(
        "PyTorch eager FP16", 9.0, 260.0, util=85.0, rel_l2_error=2e-4, max_abs_error=1e-3
    )
    eco = _result(
        "ecoinfer reference fp32 (level 2)", 20.0, 280.0, rel_l2_error=1e-7, max_abs_error=1e-6
    )
    for r in (base, fp16, eco):
        r.extra["energy_vs_baseline"] = r.j_per_inference / base.j_per_inference
    eco.latency.p99_ms = float("nan")  # NaN must not break JSON
    skipped = BenchResult.skip("torch.compile FP32", "NVIDIA H200", 8, "torch.compile failed: boom")
    return report.Report(
        title="ecoinfer compare: bert.onnx on NVIDIA H200 <&>",
        results=[base, fp16, skipped, eco],
        baseline="PyTorch eager FP32",
        meta={
            "model": "bert.onnx",
            "device_name": "NVIDIA H200",
            "batch": 8,
            "inputs": {"input_ids": "int64[8x128]"},
        },  # fmt: skip
        environment={"torch": "2.13.0", "driver": "570.1", "date": "2026-01-01T00:00:00+00:00"},
        warnings=["a report-wide warning"],
    )


def test_json_is_strict_and_complete(rep, tmp_path) -> None:  # noqa: ANN001
    (path,) = report.write_reports(rep, json_path=tmp_path / "r.json")
    text = path.read_text()
    data = json.loads(text)  # strict JSON: no NaN
    assert "NaN" not in text
    assert data["schema"] == report.SCHEMA and data["baseline"] == "PyTorch eager FP32"
    names = [r["name"] for r in data["results"]]
    assert names == ["PyTorch eager FP32", "PyTorch eager FP16", "torch.compile FP32",
                     "ecoinfer reference fp32 (level 2)"]  # fmt: skip
    assert data["results"][2]["skipped"] == "torch.compile failed: boom"
    assert data["results"][3]["latency"]["p99_ms"] is None
    assert data["results"][0]["energy"]["method"] == "nvml_counter"
    assert len(data["results"][0]["energy"]["samples"]) == 40
    assert data["environment"]["driver"] == "570.1"


def test_markdown_and_text_tables(rep) -> None:  # noqa: ANN001
    md = report.to_markdown(rep)
    lines = md.splitlines()
    header = next(ln for ln in lines if ln.startswith("| configuration"))
    for col in ("p50 ms", "p99 ms", "throughput/s", "GPU util %", "SM MHz", "J/inference",
                "energy vs FP32", "error vs FP32"):  # fmt: skip
        assert col in header
    # the median of the sampled SM clocks (the fixture's samples: 1980 MHz)
    assert report.sm_clock_mhz(rep.results[0]) == 1980.0
    assert report.sm_clock_mhz(rep.results[2]) is None  # skipped: nothing sampled
    ncols = header.count("|")
    rows = [ln for ln in lines if ln.startswith("| ") and ln != header]
    assert len(rows) == 4 and all(r.count("|") == ncols for r in rows)
    assert "skipped: torch.compile failed: boom" in md
    fp16 = next(r for r in rows if r.startswith("| PyTorch eager FP16"))
    assert "| 85 |" in fp16 and "0.31x" in fp16  # (260/1.2/8)/(300/0.4/8) = 0.3095
    assert "(estimated)" not in md
    base = next(r for r in rows if r.startswith("| PyTorch eager FP32"))
    assert "1.00x (baseline)" in base and "| baseline |" in base
    text = report.to_text(rep)
    assert "skipped: torch.compile failed: boom" in text and "a report-wide warning" in text
    assert "relative to PyTorch eager FP32" in text


def test_estimated_energy_is_marked(rep) -> None:  # noqa: ANN001
    est = _result("onnxruntime FP32 (CPU EP)", 5.0, 65.0, method="estimated", util=None)
    rep.results.append(est)
    md = report.to_markdown(rep)
    row = next(ln for ln in md.splitlines() if ln.startswith("| onnxruntime"))
    assert "(estimated)" in row
    assert report._power(est) == "65.0 (estimated)"  # the assumed power, tagged like its J
    est.extra["energy_vs_baseline"] = 0.5  # a ratio with an estimate on one side is one too
    assert report._energy_rel(est, rep) == "0.50x (estimated)"
    assert not report._energy_rel(rep.results[1], rep).endswith("(estimated)")
    assert not report._power(rep.results[0]).endswith("(estimated)")
    assert "J/inference marked 'estimated' is not measured" in md
    assert report.is_estimated(est) and not report.is_estimated(rep.results[0])


def test_plots_are_pngs(rep) -> None:  # noqa: ANN001
    pngs = report.plots(rep)
    assert set(pngs) == {"power", "latency", "energy", "scatter"}
    for pid, png in pngs.items():
        assert png is not None and png.startswith(PNG_MAGIC), pid
    # raw per-call latencies, when kept, give a real histogram
    for r in rep.results:
        if not r.skipped:
            r.extra["latencies_ms"] = [1.0, 2.0, 2.5, 3.0]
    assert report.plot_latency(rep).startswith(PNG_MAGIC)
    # no sampled power anywhere (estimates): no power trace, said so in the HTML
    est = report.Report("est", [_result("a", 5.0, 65.0, method="estimated", util=None)])
    assert report.plot_power_trace(est) is None
    assert "No power trace" in report.to_html(est)
    assert report.plot_energy_bars(report.Report("none", [])) is None


def test_pareto_front() -> None:
    a = _result("a", 10.0, 100.0)  # 800/s, 0.125 J
    b = _result("b", 5.0, 300.0)  # 1600/s, 0.1875 J
    c = _result("c", 10.0, 200.0)  # 800/s, 0.25 J: dominated by a
    skipped = BenchResult.skip("d", "x", 1, "no")
    assert [r.name for r in report.pareto_front([a, b, c, skipped])] == ["a", "b"]


def test_html_is_self_contained(rep, tmp_path) -> None:  # noqa: ANN001
    (path,) = report.write_reports(rep, html_path=tmp_path / "r.html")
    page = path.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)=["'](https?:|//|file:)""", page), "external resource"
    assert "<link" not in page and "@import" not in page
    imgs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(imgs) == 4
    assert all(base64.b64decode(b).startswith(PNG_MAGIC) for b in imgs)
    assert "&lt;&amp;&gt;" in page  # the title is escaped
    assert 'colspan="' in page and "torch.compile failed: boom" in page


def _chromium(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp / 'chromium-profile'}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="/usr/bin/chromium is absent: install Debian's chromium (apt-get install -y chromium) "
    "to check that the HTML report renders",
)
def test_html_renders_in_headless_chromium(rep, tmp_path) -> None:  # noqa: ANN001
    (path,) = report.write_reports(rep, html_path=tmp_path / "report.html")
    url = path.resolve().as_uri()
    dom = _chromium("--dump-dom", url, tmp=tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    # the page's script ran after load and every embedded PNG decoded to a real image
    assert 'data-plots-rendered="4/4"' in html, html[:500]
    assert html.count("<tr class=") == 4  # one row per configuration, the skipped one too
    for name in ("PyTorch eager FP16", "ecoinfer reference fp32 (level 2)", "torch.compile FP32"):
        assert f'data-name="{name}"' in html

    shot = tmp_path / "shot.png"
    run = _chromium(f"--screenshot={shot}", "--window-size=1200,1600", url, tmp=tmp_path)
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    from matplotlib.image import imread

    img = imread(str(shot))
    assert img.shape[0] >= 1000 and img.shape[1] >= 1000
    gray = img[..., :3].mean(axis=2)
    # text, table borders and plots: plenty of non-white pixels, not a blank page
    assert (gray < 0.5).mean() > 0.005, "the screenshot is blank"
