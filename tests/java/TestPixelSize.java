import java.nio.file.Path;
import java.nio.file.Paths;
import org.isl.IslException;
import org.isl.Model;

/**
 * Model.getPixelSize / setPixelSize (run by tests/python/bindings/test_bindings.py::
 * test_java_pixel_size, which also reads the saved files' pixel_size_um with h5py):
 *
 * <pre>
 * java ... TestPixelSize DIR   (writes DIR/unset.h5 without a pixel size, DIR/set.h5 with 0.65)
 * </pre>
 *
 * Exits with status 1 if a check fails.
 */
public class TestPixelSize {
  private static int failures = 0;

  private static void expect(boolean ok, String what) {
    if (!ok) {
      System.out.println("FAIL: " + what);
      failures++;
    }
  }

  public static void main(String[] args) throws Exception {
    Path dir = Paths.get(args[0]);
    String[] heads = {"dapi_confocal"};
    try (Model m = Model.create(8, 3, heads, 1, "none")) {
      expect(m.getPixelSize() == 0.0, "a new model's pixel size is unknown (0)");
      m.save(dir.resolve("unset.h5").toString());
      m.setPixelSize(0.65);
      expect(m.getPixelSize() == 0.65, "set 0.65, got " + m.getPixelSize());
      for (double bad : new double[] {-1.0, Double.NaN, Double.POSITIVE_INFINITY, 1e5}) {
        try {
          m.setPixelSize(bad);
          expect(false, "setPixelSize(" + bad + ") accepted");
        } catch (IslException e) {
          expect(e.getMessage() != null && !e.getMessage().isEmpty(), "a message for " + bad);
        }
      }
      expect(m.getPixelSize() == 0.65, "a refused size keeps 0.65, got " + m.getPixelSize());
      m.save(dir.resolve("set.h5").toString());
      m.setPixelSize(0.0);
      expect(m.getPixelSize() == 0.0, "0 clears the pixel size");
    }
    try (Model unset = Model.load(dir.resolve("unset.h5").toString());
        Model set = Model.load(dir.resolve("set.h5").toString())) {
      expect(unset.getPixelSize() == 0.0, "loaded unset: " + unset.getPixelSize());
      expect(set.getPixelSize() == 0.65, "loaded set: " + set.getPixelSize());
    }
    Model closed = Model.create(8, 3, heads, 1, "none");
    closed.close();
    try {
      closed.setPixelSize(1.0);
      expect(false, "setPixelSize on a closed model accepted");
    } catch (IllegalStateException e) {
      // expected
    }
    if (failures > 0)
      System.exit(1);
    System.out.println("all Java pixel size checks passed");
  }
}
