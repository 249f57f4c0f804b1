package org.isl;

/**
 * The paper's image preprocessing (docs/preprocessing.md): the C functions of isl.h's
 * "Preprocessing" section on Java arrays. Images are row-major float arrays of h * w
 * values; NaN and infinite values are refused. Functions named as verbs change the image
 * in place; the others return a new array. Python's isl.preprocess has the same functions.
 */
public final class Preprocess {
  private Preprocess() {}

  /** Light of an image: flat fields are blurred and images normalized per light. */
  public enum Light {
    TRANSMITTED(isl_light.ISL_LIGHT_TRANSMITTED, 0.5),
    FLUORESCENCE(isl_light.ISL_LIGHT_FLUORESCENCE, 0.25);

    final isl_light native_;
    /** The paper's normalized mean (the standard deviation is 0.125 for both). */
    public final double mean;

    Light(isl_light n, double mean) {
      this.native_ = n;
      this.mean = mean;
    }
  }

  /** The paper's normalized standard deviation, for both lights. */
  public static final double SD = 0.125;

  private static void check(isl_status s) throws IslException {
    if (s != isl_status.ISL_OK)
      throw new IslException(Status.fromCode(s.swigValue()), IslNative.islj_last_error());
  }

  private static void checkSize(float[] image, int count, int h, int w, String what)
      throws IslException {
    if (image == null)
      throw new IslException(Status.INVALID_ARGUMENT, what + " is null");
    if (h < 1 || w < 1 || count < 1 || (long) count * h * w != image.length)
      throw new IslException(Status.SHAPE, what + " has " + image.length + " values, not "
          + (count > 1 ? count + " x " : "") + h + " x " + w);
  }

  /**
   * Salt-and-pepper noise and specks: the 5 x 5 median (edges reflected) applied until a
   * pass changes nothing or maxPasses passes ran (the paper: 32). In place.
   *
   * @return the passes that changed something
   */
  public static int medianUntilStable(float[] image, int h, int w, int maxPasses)
      throws IslException {
    checkSize(image, 1, h, w, "the image");
    int[] passes = new int[1];
    check(IslNative.islj_median5(image, h, w, maxPasses, passes));
    return passes[0];
  }

  /** The paper's 2x downscaling: the mean of each 2 x 2 block, (h / 2) x (w / 2) values. */
  public static float[] downscale2(float[] image, int h, int w) throws IslException {
    checkSize(image, 1, h, w, "the image");
    float[] out = new float[(h / 2) * (w / 2)];
    check(IslNative.islj_downscale2(image, h, w, out));
    return out;
  }

  /** The flat field's blur: h / 16 for fluorescence, h / 32 for transmitted light. */
  public static double flatFieldSigma(Light light, int h) {
    return IslNative.isl_flat_field_sigma(light.native_, h);
  }

  /**
   * A flat field from count images of one microscope, one after the other in images: the
   * per-pixel median, blurred by a Gaussian of standard deviation sigma (0: no blur, the
   * transmitted-light dust field), scaled to mean 1.
   */
  public static float[] flatField(float[] images, int count, int h, int w, double sigma)
      throws IslException {
    checkSize(images, count, h, w, "the images");
    float[] field = new float[h * w];
    check(IslNative.islj_flat_field(images, count, h, w, sigma, field));
    return field;
  }

  /** {@link #flatField(float[], int, int, int, double)} with the paper's sigma for the light. */
  public static float[] flatField(float[] images, int count, int h, int w, Light light)
      throws IslException {
    return flatField(images, count, h, w, flatFieldSigma(light, h));
  }

  /**
   * The paper's fluorescence dust (an additive artifact at the same place in every image,
   * e.g. the "gray disks" of scattered excitation light), estimated from count images of
   * one microscope, one after the other in images (see isl_dust_fluorescence_estimate and
   * docs/preprocessing.md, "Fluorescence dust").
   *
   * @param sensorOffset the camera's reading in the dark (e.g. 100 counts)
   * @param threshold dust where the median-smoothed mean image exceeds the background by
   *     more than threshold x background (e.g. 0.1)
   * @param sigma the background's blur (0: h / 16)
   */
  public static Dust fluorescenceDust(float[] images, int count, int h, int w,
      double sensorOffset, double threshold, double sigma) throws IslException {
    checkSize(images, count, h, w, "the images");
    float[] artifact = new float[h * w];
    long[] pixels = new long[1];
    check(IslNative.islj_fluorescence_dust(images, count, h, w, sensorOffset, threshold, sigma,
        artifact, pixels));
    return new Dust(artifact, pixels[0]);
  }

  /** {@link #fluorescenceDust} with threshold 0.1 and the default blur (h / 16). */
  public static Dust fluorescenceDust(float[] images, int count, int h, int w,
      double sensorOffset) throws IslException {
    return fluorescenceDust(images, count, h, w, sensorOffset, 0.1, 0.0);
  }

  /** An estimated fluorescence dust artifact. */
  public static final class Dust {
    /** h * w values: the artifact on the dust pixels, 0 elsewhere. */
    public final float[] artifact;
    /** The number of dust pixels. */
    public final long pixels;

    Dust(float[] artifact, long pixels) {
      this.artifact = artifact;
      this.pixels = pixels;
    }
  }

  /** Fluorescence dust removal: image -= artifact, in place. */
  public static void removeFluorescenceDust(float[] image, float[] artifact, int h, int w)
      throws IslException {
    checkSize(image, 1, h, w, "the image");
    checkSize(artifact, 1, h, w, "the artifact");
    check(IslNative.islj_fluorescence_dust_remove(image, artifact, h, w));
  }

  /** Flat-field (or dust) correction: image /= field, in place; the field must be positive. */
  public static void applyFlatField(float[] image, float[] field, int h, int w)
      throws IslException {
    checkSize(image, 1, h, w, "the image");
    checkSize(field, 1, h, w, "the field");
    check(IslNative.islj_flat_field_apply(image, field, h, w));
  }

  /**
   * Affine map to the given mean and (population) standard deviation, then clipping to
   * [0, 1], in place. A constant image cannot be normalized (Status.VALUE).
   */
  public static void normalize(float[] image, double mean, double sd) throws IslException {
    if (image == null)
      throw new IslException(Status.INVALID_ARGUMENT, "the image is null");
    check(IslNative.islj_normalize(image, image.length, mean, sd));
  }

  /** The paper's normalization: mean 0.5 (transmitted) or 0.25 (fluorescence), sd 0.125. */
  public static void normalize(float[] image, Light light) throws IslException {
    normalize(image, light.mean, SD);
  }
}
