import ij.IJ;
import ij.ImagePlus;
import ij.ImageStack;
import ij.Macro;
import ij.CompositeImage;
import ij.Prefs;
import ij.gui.GenericDialog;
import ij.io.OpenDialog;
import ij.plugin.PlugIn;
import ij.process.FloatProcessor;
import ij.process.ImageProcessor;
import java.util.List;
import java.util.Map;
import org.isl.IslException;
import org.isl.Model;
import org.isl.Status;

/**
 * Plugins > isl > Predict: predicts fluorescence labels of the current z-stack with an isl
 * model (org.isl.Model, the Java binding) and shows their medians as a composite image,
 * one channel per label head, with ImageJ's progress bar; Esc cancels between tiles.
 * Macro: run("Predict", "model=/path/model.h5 [statistic=median]").
 * The JNI library is found as org.isl.Model documents (-Djava.library.path or the
 * isl.jni.library property).
 */
public class Isl_Predict implements PlugIn {
  private static final String PREF = "isl.model";

  @Override
  public void run(String arg) {
    ImagePlus imp = IJ.getImage();
    if (imp == null)
      return;
    String modelPath = Prefs.get(PREF, "");
    GenericDialog gd = new GenericDialog("isl Predict");
    gd.addFileField("model", modelPath);
    gd.addChoice("statistic", Model.STATS.toArray(new String[0]), "median");
    gd.showDialog();
    if (gd.wasCanceled())
      return;
    modelPath = gd.getNextString();
    String stat = gd.getNextChoice();
    Prefs.set(PREF, modelPath);
    IJ.resetEscape();
    try (Model model = Model.load(modelPath)) {
      ImagePlus out = predict(model, imp, stat, Isl_Predict::showProgress);
      if (out != null)
        out.show();
    } catch (IslException e) {
      // A dialog would wait forever in a macro run without a user: log there instead.
      if (Macro.getOptions() != null)
        IJ.log("isl Predict: error: " + e.getMessage());
      else
        IJ.error("isl Predict", e.getMessage());
    }
  }

  /** ImageJ's progress bar over the tiles; false (cancel) once Esc was pressed. */
  static boolean showProgress(long done, long total) {
    IJ.showProgress((double) done / Math.max(total, 1));
    return !IJ.escapePressed();
  }

  /** The label heads' statistic as a composite image (null if cancelled). */
  static ImagePlus predict(Model model, ImagePlus imp, String stat, Model.Progress progress)
      throws IslException {
    int z = imp.getStackSize(), h = imp.getHeight(), w = imp.getWidth();
    if (z != model.getNumZ())
      throw new IslException(Status.SHAPE, "the image has " + z + " slices but the model needs "
          + model.getNumZ() + " z planes");
    ImageStack in = imp.getStack();
    Map<String, Map<String, float[]>> result;
    IJ.showStatus("isl: predicting " + w + " x " + h + " (Esc cancels) ...");
    IJ.showProgress(0, 1);
    Model.Options options = new Model.Options().stats(stat).progress(progress);
    try {
      result = predictStack(model, in, imp.getBitDepth(), z, h, w, options);
    } catch (IslException e) {
      IJ.showProgress(1, 1);
      if (e.getStatus() != Status.CANCELLED)
        throw e;
      IJ.showStatus("isl: cancelled");
      return null;
    }
    IJ.showProgress(1, 1);
    List<String> heads = model.getLabelHeads();
    ImageStack labels = new ImageStack(w, h);
    for (String head : heads) {
      ImageProcessor ip = new FloatProcessor(w, h, result.get(head).get(stat));
      labels.addSlice(head + " " + stat, ip);
    }
    ImagePlus out = new ImagePlus(imp.getShortTitle() + " isl " + stat, labels);
    out.setDimensions(heads.size(), 1, 1);
    ImagePlus composite = heads.size() > 1 ? new CompositeImage(out, IJ.COMPOSITE) : out;
    composite.setProperty("Info", "isl " + Model.version() + ": " + String.join(", ", heads));
    IJ.showStatus("isl: done");
    return composite;
  }

  /** The stack's planes as one array of its own type, predicted with the options. */
  private static Map<String, Map<String, float[]>> predictStack(Model model, ImageStack in,
      int depth, int z, int h, int w, Model.Options options) throws IslException {
    if (depth == 16) {
      java.nio.ShortBuffer s = java.nio.ShortBuffer.allocate(z * h * w);
      for (int k = 0; k < z; k++)
        s.put((short[]) in.getPixels(k + 1));
      return model.predict(s.flip(), z, h, w, options);
    } else if (depth == 8) {
      java.nio.ByteBuffer s = java.nio.ByteBuffer.allocate(z * h * w);
      for (int k = 0; k < z; k++)
        s.put((byte[]) in.getPixels(k + 1));
      return model.predict(s.flip(), z, h, w, options);
    } else if (depth == 32) {
      java.nio.FloatBuffer s = java.nio.FloatBuffer.allocate(z * h * w);
      for (int k = 0; k < z; k++)
        s.put((float[]) in.getPixels(k + 1));
      return model.predict(s.flip(), z, h, w, options);
    }
    throw new IslException(Status.UNSUPPORTED, "RGB images are not z-stacks: convert to 8, 16 or 32-bit");
  }
}
