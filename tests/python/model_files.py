"""Editing isl's HDF5 files in tests, shared by the cli and bindings packages (pytest puts
tests/python on sys.path, the first directory above them without an __init__.py).

isl writes every HDF5 file with a 512-byte checksum record in the file's user block
(docs/security.md); a file edited with h5py no longer matches it and fails to load. Zeroing
the record makes the file read as one written by another program, which isl loads
without a check."""

RECORD_MAGIC = b"ISLSUM1\0"
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"  # at byte 0 when the file has no user block


def unseal(path, require_record=False):
    """Zeroes the checksum record of the isl file at path so that h5py may edit it. A file
    without a user block (written by another program) is left alone, unless
    require_record, which asserts that the file carries isl's record."""
    with open(path, "r+b") as f:
        head = f.read(len(RECORD_MAGIC))
        assert not require_record or head == RECORD_MAGIC, (path, head)
        if head == HDF5_SIGNATURE:
            return
        f.seek(0)
        f.write(bytes(512))
