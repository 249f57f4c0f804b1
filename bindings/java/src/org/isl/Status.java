package org.isl;

/** Status codes of the isl C library ({@code isl_status}); values are stable across releases. */
public enum Status {
  /** Success. */
  OK(0),
  /** NULL handle, bad size, unknown name, ... */
  INVALID_ARGUMENT(1),
  /** Memory could not be allocated. */
  OUT_OF_MEMORY(2),
  /** A file cannot be opened, read or written. */
  IO(3),
  /** A file is corrupt, truncated or not in the expected layout. */
  FORMAT(4),
  /** Dimensions do not fit each other or the model. */
  SHAPE(5),
  /** NaN, infinity or an out-of-range value. */
  VALUE(6),
  /** Valid but not supported (sample format, CPU feature). */
  UNSUPPORTED(7),
  /** A progress callback asked to stop. */
  CANCELLED(8),
  /** oneDNN, HDF5 or libtiff failed unexpectedly. */
  BACKEND(9),
  /** A bug in isl. */
  INTERNAL(10),
  /** A file's content does not match its checksum (truncated or bit-flipped). */
  DAMAGED(11);

  private final int code;

  Status(int code) {
    this.code = code;
  }

  /** The numeric code of the C API. */
  public int code() {
    return code;
  }

  /** The status of a numeric code; INTERNAL for unknown codes. */
  public static Status fromCode(int code) {
    for (Status s : values())
      if (s.code == code)
        return s;
    return INTERNAL;
  }
}
