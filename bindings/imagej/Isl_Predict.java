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

/**
 * Plugins > isl > Predict: predicts fluorescence labels of the current z-stack with an isl
 * model (org.isl.Model, the Java binding) and shows their medians as a composite image,
 * one channel per label head. Macro: run("Predict", "model=/path/model.h5 [statistic=median]").
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
    try (Model model = Model.load(modelPath)) {
      ImagePlus out = predict(model, imp, stat);
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

  /** The label heads' statistic as a composite image (null if cancelled). */
  static ImagePlus predict(Model model, ImagePlus imp, String stat) throws IslException {
    int z = imp.getStackSize(), h = imp.getHeight(), w = imp.getWidth();
    if (z != model.getNumZ())
      throw new IslException(org.isl.Status.SHAPE, "the image has " + z + " slices but the model needs "
          + model.getNumZ() + " z planes");
    ImageStack in = imp.getStack();
    Map<String, Map<String, float[]>> result;
    IJ.showStatus("isl: predicting " + w + " x " + h + " ...");
    IJ.showProgress(0, 1);
    int depth = imp.getBitDepth();
    if (depth == 16) {
      short[] s = new short[z * h * w];
      for (int k = 0; k < z; k++)
        System.arraycopy((short[]) in.getPixels(k + 1), 0, s, k * h * w, h * w);
      result = model.predict(s, z, h, w, stat);
    } else if (depth == 8) {
      byte[] s = new byte[z * h * w];
      for (int k = 0; k < z; k++)
        System.arraycopy((byte[]) in.getPixels(k + 1), 0, s, k * h * w, h * w);
      result = model.predict(s, z, h, w, stat);
    } else if (depth == 32) {
      float[] s = new float[z * h * w];
      for (int k = 0; k < z; k++)
        System.arraycopy((float[]) in.getPixels(k + 1), 0, s, k * h * w, h * w);
      result = model.predict(s, z, h, w, stat);
    } else {
      throw new IslException(org.isl.Status.UNSUPPORTED, "RGB images are not z-stacks: convert to 8, 16 or 32-bit");
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
}
