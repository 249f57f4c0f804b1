package org.isl;

/**
 * Evaluation metrics of predicted against true images (docs/evaluation.md): the C
 * functions isl_eval_* on Java arrays. Images are row-major float arrays in [0, 1].
 */
public final class Evaluation {
  private Evaluation() {}

  private static void check(isl_status s) throws IslException {
    if (s != isl_status.ISL_OK)
      throw new IslException(Status.fromCode(s.swigValue()), IslNative.islj_last_error());
  }

  /**
   * Pearson r of predicted against true values over maxPixels pixels drawn without
   * replacement (seeded; all pixels when fewer or when maxPixels is 0). The paper draws
   * 1,000,000.
   */
  public static double pearson(float[] predicted, float[] truth, long maxPixels, long seed)
      throws IslException {
    if (predicted.length != truth.length)
      throw new IslException(Status.SHAPE, "predicted and true images differ in size");
    double[] result = new double[2];
    check(IslNative.islj_eval_pearson(predicted, truth, predicted.length, maxPixels, seed,
                                      result));
    return result[0];
  }

  /**
   * Predicted standard deviation above which {@link #uncertainMask} marks a pixel as not to
   * be trusted (ISL_UNCERTAIN_STD; measured in docs/training.md).
   */
  public static final float UNCERTAIN_STD = (float) IslNativeConstants.ISL_UNCERTAIN_STD;

  /**
   * Where a prediction cannot be trusted: mask[i] = 1 where the head's predicted standard
   * deviation std[i] exceeds threshold (or is NaN), else 0. Returns the number of such
   * pixels. mask has std's length.
   */
  public static long uncertainMask(float[] std, float threshold, byte[] mask)
      throws IslException {
    if (mask.length != std.length)
      throw new IslException(Status.SHAPE, "the mask and std images differ in size");
    double[] result = new double[1];
    check(IslNative.islj_uncertain_mask(std, std.length, threshold, mask, result));
    return (long) result[0];
  }

  /**
   * The line saying how much of a field cannot be trusted, as {@code isl predict --preview}
   * prints it (the C library's isl_uncertainty_summary): "uncertain (predicted std > 0.15):
   * dapi_confocal 12.3%, ... of the field". uncertain[h] is {@link #uncertainMask}'s count
   * for heads[h] over the field's pixels.
   */
  public static String uncertaintySummary(String[] heads, long[] uncertain, long pixels,
      float threshold) throws IslException {
    if (heads.length != uncertain.length)
      throw new IslException(Status.INVALID_ARGUMENT, "one uncertain count per head");
    double[] counts = new double[uncertain.length];
    int size = 128;
    for (int h = 0; h < heads.length; h++) {
      if (heads[h].indexOf(',') >= 0)
        throw new IslException(Status.INVALID_ARGUMENT, "a head name contains a comma");
      counts[h] = uncertain[h];
      size += heads[h].getBytes(java.nio.charset.StandardCharsets.UTF_8).length + 32;
    }
    byte[] line = new byte[size];
    check(IslNative.islj_uncertainty_summary(String.join(",", heads), counts, counts.length,
                                             pixels, threshold, line, size));
    int n = 0;
    while (n < size && line[n] != 0)
      n++;
    return new String(line, 0, n, java.nio.charset.StandardCharsets.UTF_8);
  }

  /** Two-sided two-sample Kolmogorov-Smirnov test: {statistic, p-value}. */
  public static double[] ks2samp(double[] a, double[] b) throws IslException {
    double[] result = new double[2];
    check(IslNative.islj_eval_ks_2samp(a, a.length, b, b.length, result));
    return result;
  }

  /** The paper's display transform clip((x - 0.2) / 0.6, 0, 1). */
  public static double display(double x) {
    return IslNative.isl_eval_display(x);
  }
}
