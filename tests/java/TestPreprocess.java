import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import org.isl.IslException;
import org.isl.Preprocess;

/**
 * org.isl.Preprocess on images written by tests/python/bindings/test_bindings.py
 * (test_java_preprocess), which compares the outputs with scipy/numpy:
 *
 * <pre>
 * java ... TestPreprocess DIR   (reads DIR/staircase.raw 37 x 41, DIR/stack.raw 5 x 64 x 48,
 *                                DIR/dusty.raw 16 x 48 x 64 with a sensor offset of 100;
 *                                writes DIR/java-*.raw, all little-endian float32)
 * </pre>
 */
public class TestPreprocess {
  private static float[] read(Path p, int n) throws IOException {
    ByteBuffer b = ByteBuffer.wrap(Files.readAllBytes(p)).order(ByteOrder.LITTLE_ENDIAN);
    if (b.remaining() != 4 * n)
      throw new IOException(p + ": " + b.remaining() + " bytes, not " + 4 * n);
    float[] a = new float[n];
    b.asFloatBuffer().get(a);
    return a;
  }

  private static void write(Path p, float[] a) throws IOException {
    ByteBuffer b = ByteBuffer.allocate(4 * a.length).order(ByteOrder.LITTLE_ENDIAN);
    b.asFloatBuffer().put(a);
    Files.write(p, b.array());
  }

  public static void main(String[] args) throws Exception {
    Path dir = Paths.get(args[0]);
    float[] stair = read(dir.resolve("staircase.raw"), 37 * 41);
    float[] stack = read(dir.resolve("stack.raw"), 5 * 64 * 48);

    write(dir.resolve("java-downscale.raw"), Preprocess.downscale2(stair, 37, 41));
    float[] med = stair.clone();
    int passes = Preprocess.medianUntilStable(med, 37, 41, 32);
    System.out.println("passes " + passes);
    write(dir.resolve("java-median.raw"), med);
    float[] ff = Preprocess.flatField(stack, 5, 64, 48, Preprocess.Light.TRANSMITTED);
    write(dir.resolve("java-flat-field.raw"), ff);
    write(dir.resolve("java-dust.raw"), Preprocess.flatField(stack, 5, 64, 48, 0.0));
    float[] plane = java.util.Arrays.copyOf(stack, 64 * 48);
    Preprocess.applyFlatField(plane, ff, 64, 48);
    write(dir.resolve("java-corrected.raw"), plane);
    float[] norm = java.util.Arrays.copyOf(stack, 64 * 48);
    Preprocess.normalize(norm, Preprocess.Light.FLUORESCENCE);
    write(dir.resolve("java-normalized.raw"), norm);
    System.out.println("sigma " + Preprocess.flatFieldSigma(Preprocess.Light.TRANSMITTED, 2048));
    float[] dusty = read(dir.resolve("dusty.raw"), 16 * 48 * 64);
    Preprocess.Dust dust = Preprocess.fluorescenceDust(dusty, 16, 48, 64, 100.0, 0.1, 24.0);
    System.out.println("dust pixels " + dust.pixels);
    write(dir.resolve("java-fdust.raw"), dust.artifact);
    float[] cleaned = java.util.Arrays.copyOf(dusty, 48 * 64);
    Preprocess.removeFluorescenceDust(cleaned, dust.artifact, 48, 64);
    write(dir.resolve("java-fdust-removed.raw"), cleaned);

    // Errors: a wrong size, a constant image, NaN, a sensor offset above the images.
    String[] errors = new String[4];
    try {
      Preprocess.downscale2(stair, 40, 41);
    } catch (IslException e) {
      errors[0] = e.getStatus() + ": " + e.getMessage();
    }
    try {
      Preprocess.normalize(new float[16], 0.5, 0.125);
    } catch (IslException e) {
      errors[1] = e.getStatus() + ": " + e.getMessage();
    }
    try {
      float[] nan = stair.clone();
      nan[7] = Float.NaN;
      Preprocess.medianUntilStable(nan, 37, 41, 32);
    } catch (IslException e) {
      errors[2] = e.getStatus() + ": " + e.getMessage();
    }
    try {
      Preprocess.fluorescenceDust(dusty, 16, 48, 64, 5000.0);
    } catch (IslException e) {
      errors[3] = e.getStatus() + ": " + e.getMessage();
    }
    for (String e : errors)
      System.out.println("error " + e);
  }
}
