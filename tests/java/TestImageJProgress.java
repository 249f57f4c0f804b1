import ij.IJ;
import ij.ImagePlus;
import java.awt.event.KeyEvent;
import org.isl.IslException;
import org.isl.Model;
import org.isl.Status;

/**
 * Progress and cancel of the ImageJ plugin (bindings/imagej/Isl_Predict.java), run by
 * tests/python/cli/test_imagej.py with ij.jar, isl.jar and the plugin jar on the class path:
 *
 * <pre>
 * java ... TestImageJProgress MODEL.h5 STACK.tif
 * </pre>
 *
 * Prints one "key value" line per observation; the pytest checks them.
 */
public class TestImageJProgress {
  public static void main(String[] args) throws Exception {
    ImagePlus imp = IJ.openImage(args[1]);
    try (Model model = Model.load(args[0])) {
      // The plugin's own listener (ImageJ's progress bar), watched.
      long[] seen = {0, 0, 0};
      IJ.resetEscape();
      ImagePlus out = Isl_Predict.predict(model, imp, "mean", (done, total) -> {
        seen[0]++;
        seen[1] = done;
        seen[2] = total;
        return Isl_Predict.showProgress(done, total);
      });
      System.out.println("progress " + seen[0] + " last " + seen[1] + "/" + seen[2]);
      System.out.println("result " + (out == null ? "null" : out.getStackSize()));

      // Esc pressed while the first tile is reported: the plugin stops and shows nothing.
      long[] calls = {0};
      ImagePlus cancelled = Isl_Predict.predict(model, imp, "mean", (done, total) -> {
        calls[0]++;
        IJ.setKeyDown(KeyEvent.VK_ESCAPE);
        return Isl_Predict.showProgress(done, total);
      });
      System.out.println("escape " + (cancelled == null ? "null" : "image") + " calls " + calls[0]);
      IJ.resetEscape();

      // The Java API underneath: small tiles, cancelled after the first.
      float[] stack = new float[imp.getStackSize() * imp.getHeight() * imp.getWidth()];
      long[] tiles = {0, 0};
      try {
        model.predict(java.nio.FloatBuffer.wrap(stack), imp.getStackSize(), imp.getHeight(),
            imp.getWidth(), new Model.Options().tileSize(266).progress((done, total) -> {
              tiles[0]++;
              tiles[1] = total;
              return false;
            }));
        System.out.println("api no exception");
      } catch (IslException e) {
        System.out.println("api " + e.getStatus() + " after " + tiles[0] + " of " + tiles[1]
            + ": " + e.getMessage());
      }

      // A listener that throws stops the prediction with its own exception.
      try {
        model.predict(java.nio.FloatBuffer.wrap(stack), imp.getStackSize(), imp.getHeight(),
            imp.getWidth(), new Model.Options().progress((done, total) -> {
              throw new IllegalStateException("listener failed");
            }));
        System.out.println("throw no exception");
      } catch (IllegalStateException e) {
        System.out.println("throw " + e.getMessage());
      }
      System.out.println("done");
    }
  }
}
