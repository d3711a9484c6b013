"""Download the KTH actions dataset: six class zips and the official sequence file.

Usage: ``python -m datasets.prepare.kth_download DIR`` (or ``sh datasets/prepare/download_kth.sh DIR``).

Layout written under DIR (nothing is ever written outside it)::

    DIR/raw/<class>.zip          the zip as downloaded from the KTH site (kept; may be deleted later)
    DIR/raw/<class>/*.avi        its extracted videos, e.g. person01_boxing_d1_uncomp.avi
    DIR/raw/<class>/.extracted   marker written after a complete, verified extraction
    DIR/raw/00sequences.txt      per video, the frame ranges of its action segments

Reruns skip what is complete (a class with its marker, a file without ``.part``). An interrupted
download stays in ``<file>.part`` and is resumed with an HTTP Range request; it is renamed to its final
name only once all bytes have arrived. Each zip is tested (CRCs) and its member names are checked before
anything is extracted.
"""

import argparse
import http.client
import stat
import sys
import zipfile
from pathlib import Path, PurePosixPath
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from tqdm import tqdm

if __name__ == "__main__" and not __package__:  # run by path: our imports need the repository root
    print("error: run it from the repository root as a module: "
          "python -m datasets.prepare.kth_download", file=sys.stderr)
    sys.exit(2)  # the user-error status of every command (utils.USER_ERROR)

from utils import DRNetError, report_errors

KTH_URL = "http://www.csc.kth.se/cvap/actions/"
KTH_CLASSES = ("boxing", "handclapping", "handwaving", "jogging", "running", "walking")
SEQUENCE_FILE = "00sequences.txt"
EXTRACTED_MARKER = ".extracted"
# Seconds without any data before a connection counts as dead; large enough for a slow academic server.
SOCKET_TIMEOUT_S = 60
CHUNK_BYTES = 1 << 20


def download_file(url: str, destination: Path) -> None:
    """Download `url` to `destination` unless it already exists, resuming `<destination>.part`."""
    if destination.exists():
        return
    destination.parent.mkdir(parents=True, exist_ok=True)
    part = destination.with_name(destination.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    request = Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urlopen(request, timeout=SOCKET_TIMEOUT_S)
    except HTTPError as error:
        if error.code == 416 and _part_is_complete(error, offset):
            part.replace(destination)
            return
        if error.code == 416:
            # The .part is longer than the file on the server: it cannot be resumed, so start over.
            part.unlink()
            raise DRNetError(
                f"cannot resume {url}: {part} is larger than the file; removed it, rerun"
            ) from error
        raise DRNetError(f"cannot download {url}: HTTP {error.code} {error.reason}") from error
    except (URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise DRNetError(
            f"cannot download {url}: {reason} (no network? place {destination.name} in "
            f"{destination.parent} by hand and rerun)"
        ) from error
    with response:
        if response.status == 206:
            mode = "ab"
        else:
            # The server ignored the Range header and sends the whole file: start the .part afresh.
            offset, mode = 0, "wb"
        length = response.headers.get("Content-Length")
        expected = offset + int(length) if length is not None else None
        received = offset
        try:
            with open(part, mode) as sink, tqdm(
                total=expected, initial=offset, unit="B", unit_scale=True, desc=destination.name
            ) as progress:
                while chunk := response.read(CHUNK_BYTES):
                    sink.write(chunk)
                    received += len(chunk)
                    progress.update(len(chunk))
        except (OSError, http.client.HTTPException) as error:
            raise DRNetError(
                f"download of {url} interrupted after {received} bytes ({error}); rerun to resume"
            ) from error
    if expected is not None and received != expected:
        raise DRNetError(f"download of {url} stopped at {received} of {expected} bytes; rerun to resume")
    part.replace(destination)


def _part_is_complete(error: HTTPError, offset: int) -> bool:
    """Whether a 416 answer to `bytes=offset-` says the .part already holds the whole file."""
    content_range = error.headers.get("Content-Range", "") if error.headers else ""
    total = content_range.rpartition("/")[2]
    return total.isdigit() and int(total) == offset


def check_member_names(archive: zipfile.ZipFile, archive_path: Path) -> None:
    """Raise DRNetError if any member would land outside the extraction folder, or is a symbolic link."""
    for member in archive.infolist():
        name = member.filename
        # Unix zips keep the file mode in the top 16 bits; a link member is extracted as a file holding its
        # target, which breaks any member inside it, and the KTH zips hold only videos.
        if stat.S_ISLNK(member.external_attr >> 16):
            raise DRNetError(f"refusing to extract {archive_path}: member {name!r} is a symbolic link")
        # Zips written on Windows may use backslashes; treat them as separators too.
        path = PurePosixPath(name.replace("\\", "/"))
        if path.is_absolute() or (path.parts and path.parts[0].endswith(":")):
            raise DRNetError(f"refusing to extract {archive_path}: member {name!r} has an absolute path")
        if ".." in path.parts:
            raise DRNetError(f"refusing to extract {archive_path}: member {name!r} contains '..'")


def extract_zip(archive_path: Path, target: Path) -> None:
    """Verify `archive_path` (CRCs and member names) and extract it into `target`, then mark it done."""
    try:
        with zipfile.ZipFile(archive_path) as archive:
            check_member_names(archive, archive_path)
            bad_member = archive.testzip()
            if bad_member is not None:
                raise DRNetError(
                    f"{archive_path} is corrupt (bad CRC in {bad_member}); "
                    "delete it and rerun to download it again"
                )
            target.mkdir(parents=True, exist_ok=True)
            archive.extractall(target)
    except zipfile.BadZipFile as error:
        raise DRNetError(
            f"{archive_path} is not a valid zip ({error}); delete it and rerun to download it again"
        ) from error
    except OSError as error:  # a full disk, or members that clash (a file where a folder must go)
        raise DRNetError(f"cannot extract {archive_path} into {target}: {error.strerror or error}") from error
    # Written last, so an interrupted extraction is redone on the next run.
    (target / EXTRACTED_MARKER).touch()


def download_kth(data_root: Path) -> None:
    """Download and extract the six KTH class zips and the sequence file under `data_root/raw`."""
    raw = Path(data_root) / "raw"
    download_file(KTH_URL + SEQUENCE_FILE, raw / SEQUENCE_FILE)
    for action in KTH_CLASSES:
        target = raw / action
        if (target / EXTRACTED_MARKER).exists():
            continue
        archive_path = raw / f"{action}.zip"
        download_file(KTH_URL + f"{action}.zip", archive_path)
        extract_zip(archive_path, target)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m datasets.prepare.kth_download",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("data_root", help="folder that will hold raw/ (and later processed/)")
    args = parser.parse_args(argv)

    def download() -> str:
        download_kth(Path(args.data_root))
        return f"KTH raw data complete under {Path(args.data_root) / 'raw'}"

    return report_errors(download)


if __name__ == "__main__":
    sys.exit(main())
