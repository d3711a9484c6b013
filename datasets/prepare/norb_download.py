"""Download the six official smallNORB files (gzipped, read as they are) into DATA_ROOT/norb/:

    python -m datasets.prepare.norb_download DATA_ROOT

Files already there are kept; each file is written beside its name and renamed when complete.
"""

import argparse
import http.client
import shutil
import sys
import urllib.request
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run by path: our imports need the repository root
    print("error: run it from the repository root as a module: "
          "python -m datasets.prepare.norb_download", file=sys.stderr)
    sys.exit(2)  # the user-error status of every command (utils.USER_ERROR)

from datasets.norb import NORB_URL, SPLIT_FILE_PREFIX, norb_dir, norb_file_names
from utils import DRNetError, report_errors


def download_norb(data_root: str, timeout: float = 30.0) -> Path:
    """Download the six official smallNORB files (gzipped) into `DATA_ROOT/norb/`; return that folder."""
    directory = norb_dir(data_root)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DRNetError(f"cannot create the smallNORB folder {directory}: {error}") from error
    for split in SPLIT_FILE_PREFIX:
        for name in norb_file_names(split).values():
            if (directory / name).is_file() or (directory / f"{name}.gz").is_file():
                continue
            url = f"{NORB_URL}{name}.gz"
            target = directory / f"{name}.gz"
            # Write beside the target and rename at the end, so an interrupted download never
            # leaves a partial file under the name the loader reads.
            partial = directory / f"{name}.gz.part"
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response, partial.open("wb") as out:
                    shutil.copyfileobj(response, out, 1 << 20)
            except (OSError, http.client.HTTPException) as error:
                partial.unlink(missing_ok=True)
                reason = " ".join(str(getattr(error, "reason", error)).split())
                raise DRNetError(f"could not download {url} ({reason}); download the smallNORB files by "
                                 f"hand from {NORB_URL} into {directory}") from error
            partial.replace(target)
    return directory


def main(argv: list[str] | None = None) -> int:
    """Command line `python -m datasets.prepare.norb_download DATA_ROOT`; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m datasets.prepare.norb_download",
                                     description=__doc__.splitlines()[0].rstrip(":"))
    parser.add_argument("data_root", metavar="DATA_ROOT", help="the --data_root of training: the files go to "
                        "DATA_ROOT/norb/")
    args = parser.parse_args(argv)
    return report_errors(lambda: f"smallNORB files complete in {download_norb(args.data_root)}")


if __name__ == "__main__":
    sys.exit(main())
