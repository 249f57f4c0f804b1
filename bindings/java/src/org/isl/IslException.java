package org.isl;

/**
 * A failure reported by the isl library: a {@link Status} and the library's detailed
 * message ({@code isl_last_error()}).
 */
public class IslException extends Exception {
  private static final long serialVersionUID = 1L;
  private final Status status;

  public IslException(Status status, String message) {
    super(message);
    this.status = status;
  }

  /** Why the call failed. */
  public Status getStatus() {
    return status;
  }

  @Override
  public String toString() {
    return "IslException[" + status + "]: " + getMessage();
  }
}
