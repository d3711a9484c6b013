"""datasets/prepare/kth_download.py and download_kth.sh: the KTH download against a faked server, resumable files,
one-line errors, safe and verified extraction."""

import io
import stat
import subprocess
import zipfile
from pathlib import Path
from urllib.error import HTTPError, URLError

import pytest
from fakes.kth import SEQUENCES

from datasets.prepare import kth_download
from utils import USER_ERROR, DRNetError

REPO_ROOT = Path(__file__).resolve().parent.parent

URL = "http://example.invalid/file.bin"


class FakeResponse(io.BytesIO):
    """What urlopen returns, serving bytes from memory; the connection drops after `drop_after` bytes."""

    def __init__(self, body: bytes, status: int, drop_after: int | None) -> None:
        super().__init__(body)
        self.status = status
        self.headers = {"Content-Length": str(len(body))}
        self._end = len(body) if drop_after is None else drop_after

    def read(self, size: int = -1) -> bytes:
        if self.tell() >= self._end < len(self.getbuffer()):
            raise ConnectionResetError("connection reset by peer")
        return super().read(min(size, self._end - self.tell()))


class FakeServer:
    """A stand-in for urllib's urlopen over a dict of url -> bytes, honouring Range unless told not to."""

    def __init__(self, files: dict[str, bytes], honour_range: bool = True) -> None:
        self.files = files
        self.honour_range = honour_range
        self.drop_after: int | None = None
        self.requests: list[tuple[str, str | None]] = []

    def __call__(self, request, timeout: float) -> FakeResponse:
        assert timeout > 0
        range_header = request.get_header("Range")
        self.requests.append((request.full_url, range_header))
        body = self.files[request.full_url]
        drop_after, self.drop_after = self.drop_after, None
        if not (range_header and self.honour_range):
            return FakeResponse(body, 200, drop_after)
        offset = int(range_header.removeprefix("bytes=").removesuffix("-"))
        if offset >= len(body):
            raise HTTPError(request.full_url, 416, "Range Not Satisfiable",
                            {"Content-Range": f"bytes */{len(body)}"}, None)
        return FakeResponse(body[offset:], 206, drop_after)


def zip_bytes(members: dict[str, bytes], links: tuple[str, ...] = ()) -> bytes:
    """A stored (uncompressed) zip holding `members`, names kept exactly as given; `links` are symbolic links."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            if name in links:
                info.create_system = 3  # Unix, whose mode bits the top of external_attr holds
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, data)
    return buffer.getvalue()


@pytest.mark.e2e
def test_download_offline_fails_with_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def unreachable(request, timeout: float) -> None:
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(kth_download, "urlopen", unreachable)
    assert kth_download.main([str(tmp_path)]) == USER_ERROR
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert error.startswith("error: cannot download http://www.csc.kth.se/cvap/actions/00sequences.txt")
    assert "Temporary failure in name resolution" in error


def test_download_resumes_a_partial_file_then_skips_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = bytes(range(256)) * 400
    server = FakeServer({URL: payload})
    monkeypatch.setattr(kth_download, "urlopen", server)
    destination = tmp_path / "file.bin"
    server.drop_after = 30000
    with pytest.raises(DRNetError, match="interrupted after 30000 bytes.*rerun to resume"):
        kth_download.download_file(URL, destination)
    assert not destination.exists()
    assert (tmp_path / "file.bin.part").read_bytes() == payload[:30000]

    kth_download.download_file(URL, destination)
    assert server.requests[-1] == (URL, "bytes=30000-")
    assert destination.read_bytes() == payload
    assert not (tmp_path / "file.bin.part").exists()

    kth_download.download_file(URL, destination)
    assert len(server.requests) == 2


@pytest.mark.parametrize(("part", "honour_range"), [(b"stale", False), (b"0123456789" * 100, True)])
def test_download_finishes_from_an_unresumable_or_whole_part(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, part: bytes, honour_range: bool
) -> None:
    monkeypatch.setattr(kth_download, "urlopen", FakeServer({URL: b"0123456789" * 100}, honour_range))
    (tmp_path / "file.bin.part").write_bytes(part)
    kth_download.download_file(URL, tmp_path / "file.bin")
    assert (tmp_path / "file.bin").read_bytes() == b"0123456789" * 100


def test_download_kth_extracts_every_class_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = {kth_download.KTH_URL + "00sequences.txt": SEQUENCES.encode()}
    for action in kth_download.KTH_CLASSES:
        avi_name = f"person01_{action}_d1_uncomp.avi"
        files[kth_download.KTH_URL + f"{action}.zip"] = zip_bytes({avi_name: b"avi"})
    server = FakeServer(files)
    monkeypatch.setattr(kth_download, "urlopen", server)
    kth_download.download_kth(tmp_path)
    raw = tmp_path / "raw"
    assert (raw / "00sequences.txt").read_text() == SEQUENCES
    for action in kth_download.KTH_CLASSES:
        assert (raw / action / f"person01_{action}_d1_uncomp.avi").read_bytes() == b"avi"
    assert len(server.requests) == 7
    # The zips may be deleted once extracted: a rerun must neither fetch nor extract anything again.
    for archive in raw.glob("*.zip"):
        archive.unlink()
    kth_download.download_kth(tmp_path)
    assert len(server.requests) == 7


@pytest.mark.parametrize(
    ("member", "reason"), [("../evil.avi", "contains '..'"), ("/tmp/evil.avi", "has an absolute path")]
)
def test_extraction_refuses_members_outside_the_target(tmp_path: Path, member: str, reason: str) -> None:
    archive = tmp_path / "boxing.zip"
    archive.write_bytes(zip_bytes({"fine.avi": b"ok", member: b"evil"}))
    target = tmp_path / "data" / "raw" / "boxing"
    with pytest.raises(DRNetError, match=f"member '{member}' {reason}"):
        kth_download.extract_zip(archive, target)
    assert not (target / "fine.avi").exists()
    assert not (target / kth_download.EXTRACTED_MARKER).exists()
    assert not (tmp_path / "data" / "raw" / "evil.avi").exists()


def test_extraction_refuses_symbolic_links(tmp_path: Path) -> None:
    archive = tmp_path / "boxing.zip"
    archive.write_bytes(zip_bytes({"videos": b"/etc", "videos/evil.avi": b"evil"}, links=("videos",)))
    target = tmp_path / "raw" / "boxing"
    with pytest.raises(DRNetError, match="refusing to extract .*boxing.zip: member 'videos' is a symbolic link"):
        kth_download.extract_zip(archive, target)
    assert not target.exists()


def test_extraction_reports_members_that_clash_in_one_line(tmp_path: Path) -> None:
    archive = tmp_path / "boxing.zip"
    archive.write_bytes(zip_bytes({"videos": b"a file", "videos/a.avi": b"a video inside that file"}))
    with pytest.raises(DRNetError, match="cannot extract .*boxing.zip into .*boxing: Not a directory"):
        kth_download.extract_zip(archive, tmp_path / "raw" / "boxing")
    assert not (tmp_path / "raw" / "boxing" / kth_download.EXTRACTED_MARKER).exists()


def test_extraction_refuses_corrupt_zips(tmp_path: Path) -> None:
    archive = tmp_path / "boxing.zip"
    archive.write_bytes(zip_bytes({"a.avi": b"original data"}).replace(b"original", b"tampered"))
    with pytest.raises(DRNetError, match="corrupt \\(bad CRC in a.avi\\)"):
        kth_download.extract_zip(archive, tmp_path / "boxing")
    archive.write_bytes(b"not a zip at all")
    with pytest.raises(DRNetError, match="not a valid zip"):
        kth_download.extract_zip(archive, tmp_path / "boxing")


@pytest.mark.e2e
def test_download_script_prints_usage_without_a_folder() -> None:
    result = subprocess.run(["sh", "datasets/prepare/download_kth.sh"], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and "usage: sh datasets/prepare/download_kth.sh DIR" in result.stderr
