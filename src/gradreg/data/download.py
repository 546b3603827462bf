"""Fetching missing data files from their official sources, safely.

Every download goes to a temporary file in the destination directory, is checked against the
known SHA-256 of its decompressed bytes, and only then renamed into place with `os.replace`
(atomic on one filesystem). On any failure the temporary file is deleted, so the destination
directory never holds a partial or unverified file.

The network access itself is a `fetch(url, dest_path, progress)` callable, injectable
everywhere; the default, `urllib_fetch`, uses `urllib` with a tqdm progress bar.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

from gradreg.data.errors import ChecksumError, DataError, DataNotFoundError, DownloadError
from gradreg.data.integrity import read_decompressed, record_verified, require_sha256
from gradreg.data.paths import data_dir_candidates, download_allowed, first_existing

Fetch = Callable[[str, Path, bool], None]
"""`fetch(url, dest_path, progress)`: write the resource at `url` to `dest_path`.

Raise `OSError` (`urllib.error.URLError` is one) when it cannot be fetched."""

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR10_BIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6)) + ("test_batch.bin",)

# SHA-256 of the *decompressed* official files (shared/data/README.md).
OFFICIAL_SHA256 = MappingProxyType(
    {
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        "data_batch_1.bin": "cee916563c9f80d84e3cc88e17fdc0941787f1244f00a67874d45b261883ada5",
        "data_batch_2.bin": "a591ca11fa1708a91ee40f54b3da4784ccd871ecf2137de63f51ada8b3fa57ed",
        "data_batch_3.bin": "bbe8596564c0f86427f876058170b84dac6670ddf06d79402899d93ceea26f67",
        "data_batch_4.bin": "014e562d6e23c72197cc727519169a60359f5eccd8945ad5a09d710285ff4e48",
        "data_batch_5.bin": "755304fc0b379caeae8c14f0dac912fbc7d6cd469eb67a1029a08a39453a9add",
        "test_batch.bin": "8e2eb146ae340b09e24670f29cabc6326dba54da8789dab6768acf480273f65b",
    }
)


@dataclasses.dataclass(frozen=True)
class DataSources:
    """Where files come from and what they must hash to; override it in tests or for mirrors.

    Attributes:
        checksums: Decompressed file name (`'train-images-idx3-ubyte'`, `'data_batch_1.bin'`)
            -> hex SHA-256 of the decompressed bytes. Files absent from the table are only
            checked structurally.
        mnist_urls: Base URLs tried in order; `<base><name>.gz` is fetched.
        cifar10_binary_urls: URLs of the `cifar-10-binary.tar.gz` archive, tried in order.
    """

    checksums: Mapping[str, str] = dataclasses.field(default_factory=lambda: OFFICIAL_SHA256)
    mnist_urls: tuple[str, ...] = (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    )
    cifar10_binary_urls: tuple[str, ...] = ("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",)


DEFAULT_SOURCES = DataSources()


def urllib_fetch(url: str, dest: Path, progress: bool) -> None:
    """Default fetcher: stream `url` into `dest` with `urllib`.

    The tqdm bar goes to stderr and only when it is a terminal (`disable=None`); `progress`
    false silences it entirely.

    Args:
        url: The resource.
        dest: The file to write.
        progress: Show a progress bar (on a terminal).

    Raises:
        OSError: The resource cannot be fetched (`urllib.error.URLError` is one).
    """
    from tqdm.auto import tqdm

    with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            desc=url.rsplit("/", 1)[-1],
            disable=None if progress else True,
            leave=False,
        ) as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                bar.update(len(chunk))


def _temp_path(directory: Path, name: str) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=directory)
    os.close(fd)
    return Path(tmp)


def _fetch_first(urls: Sequence[str], dest: Path, fetch: Fetch, progress: bool, name: str) -> None:
    reasons = []
    for url in urls:
        try:
            fetch(url, dest, progress)
            return
        except (OSError, urllib.error.URLError, ValueError) as e:
            reasons.append(f"{url}: {type(e).__name__}: {e}")
    raise DownloadError(name, reasons or ["no URL configured"])


def download_file(
    urls: Sequence[str],
    dest: str | os.PathLike,
    sha256: str | None,
    *,
    fetch: Fetch | None = None,
    progress: bool = True,
) -> Path:
    """Download the first reachable of `urls` to `dest`, verified, atomically.

    Either way nothing is left in `dest`'s directory on failure.

    Args:
        urls: The URLs, tried in order (a mirror whose copy fails its check is passed over like
            one that fails).
        dest: The file to install.
        sha256: The hash of the *decompressed* content (decompression follows `dest`'s suffix);
            None skips the check.
        fetch: The fetcher (default `urllib_fetch`).
        progress: Show a progress bar.

    Returns:
        (Path): `dest`.

    Raises:
        DownloadError: Every URL fails.
        ChecksumError: A download's hash does not match (naming `dest` and both hashes).
    """
    dest = Path(dest)
    made = _make_dirs(dest.parent)
    try:
        mismatch: ChecksumError | None = None
        reasons: list[str] = []
        for url in urls:  # a mirror whose copy fails its check is passed over like one that fails
            tmp = _temp_path(dest.parent, dest.name)
            try:
                _fetch_first([url], tmp, fetch or urllib_fetch, progress, dest.name)
            except DownloadError as e:
                tmp.unlink(missing_ok=True)
                reasons += e.reasons
                continue
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            try:
                return _install_verified(tmp, dest, sha256)
            except ChecksumError as e:
                mismatch = ChecksumError(dest, e.expected, e.actual, source=url)
                reasons.append(f"{url}: SHA-256 {e.actual}, expected {e.expected}")
        if mismatch is not None:  # reachable but wrong says more than unreachable
            raise mismatch
        raise DownloadError(dest.name, reasons or ["no URL configured"])
    except BaseException:
        _remove_empty(made)
        raise


def _make_dirs(directory: Path) -> list[Path]:
    """`mkdir -p directory`; returns the directories it created, deepest first."""
    made = []
    d = directory
    while not d.exists():
        made.append(d)
        d = d.parent
    directory.mkdir(parents=True, exist_ok=True)
    return made


def _remove_empty(dirs: list[Path]) -> None:
    """Remove the directories a failed download created, where it left them empty."""
    for d in dirs:
        try:
            d.rmdir()
        except OSError:
            return


def _install_verified(tmp: Path, dest: Path, sha256: str | None) -> Path:
    """Check `tmp`'s decompressed bytes against `sha256` and rename it to `dest`; on any
    failure `tmp` is deleted, so nothing unverified is left behind."""
    try:
        data = read_decompressed(tmp, compression_from=dest.name)
        require_sha256(dest, data, sha256)  # names dest, the file the user will look for
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sha256 is not None:
        record_verified(dest, sha256)
    return dest


def download_tar_members(
    urls: Sequence[str],
    members: Mapping[str, str | None],
    dest_dir: str | os.PathLike,
    *,
    fetch: Fetch | None = None,
    progress: bool = True,
) -> list[Path]:
    """Download a tar archive and install some of its members, each verified, atomically.

    The archive itself is a temporary file in `dest_dir`, deleted afterwards. Members installed
    before a failing one stay (they passed their check); the failing one leaves nothing behind.

    Args:
        urls: The archive's URLs, tried in order.
        members: A member's path inside the archive -> its expected SHA-256 (or None); each is
            written to `dest_dir / basename(member)`.
        dest_dir: The directory to install into.
        fetch: The fetcher (default `urllib_fetch`).
        progress: Show a progress bar.

    Returns:
        The installed files, in the order of `members`.

    Raises:
        DownloadError: Every URL fails.
        DataError: The archive is not a readable tar archive, or lacks a member.
        ChecksumError: A member's hash does not match.
    """
    dest_dir = Path(dest_dir)
    made = _make_dirs(dest_dir)
    archive = _temp_path(dest_dir, "archive")
    installed: list[Path] = []
    try:
        _fetch_first(urls, archive, fetch or urllib_fetch, progress, "/".join(urls[:1]))
        try:
            tar = tarfile.open(archive, "r:*")
        except tarfile.TarError as e:
            raise DataError(f"{urls[0] if urls else archive}: not a readable tar archive ({e})") from e
        with tar:
            for member, sha256 in members.items():
                dest = dest_dir / Path(member).name
                try:
                    source = tar.extractfile(member)
                except KeyError:
                    source = None
                if source is None:
                    raise DataError(f"{urls[0]}: archive has no file {member!r}")
                tmp = _temp_path(dest_dir, dest.name)
                try:
                    with source, open(tmp, "wb") as out:
                        shutil.copyfileobj(source, out, 1 << 20)
                except BaseException:
                    tmp.unlink(missing_ok=True)
                    raise
                installed.append(_install_verified(tmp, dest, sha256))
    except BaseException:
        archive.unlink(missing_ok=True)
        _remove_empty(made)
        raise
    archive.unlink(missing_ok=True)
    return installed


def locate_or_download(
    name: str,
    relative_candidates: Sequence[str],
    data_dir: str | os.PathLike | None,
    download: bool | None,
    install: Callable[[Path], Path],
) -> Path:
    """Find a data file in the searched directories, else install it by downloading.

    Args:
        name: The file's name, for the error.
        relative_candidates: Paths relative to a data directory, tried in order in each
            directory of `data_dir_candidates`.
        data_dir: The explicit data directory, or None.
        download: Whether a download is allowed (None: see `download_allowed`).
        install: `install(root)` downloads into the first (highest-priority) directory and
            returns the file; called when no candidate exists and a download is allowed.

    Returns:
        The file found or installed.

    Raises:
        DataNotFoundError: No candidate exists and no download is allowed, or the download
            fails; it lists every path tried and why nothing was downloaded.
    """
    dirs = data_dir_candidates(data_dir)
    searched = [d / rel for d in dirs for rel in relative_candidates]
    found = first_existing(searched)
    if found is not None:
        return found
    if not download_allowed(download, data_dir):
        why = (
            "download=False"
            if download is False
            else "not downloaded: a data directory was named (data_dir or GRADREG_DATA_DIR); "
            f"pass --download on the command line, or download=True in Python, to fetch into {dirs[0]}"
        )
        raise DataNotFoundError(name, searched, [why])
    try:
        return install(dirs[0])
    except DownloadError as e:
        raise DataNotFoundError(name, searched, [f"download into {dirs[0]} failed: {r}" for r in e.reasons]) from e
