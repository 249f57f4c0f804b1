import java.awt.image.BufferedImage;
import java.awt.image.DataBuffer;
import java.awt.image.Raster;
import java.io.File;
import java.util.Iterator;
import java.util.Map;
import javax.imageio.ImageIO;
import javax.imageio.ImageReader;
import javax.imageio.stream.ImageInputStream;
import org.isl.IslException;
import org.isl.Model;

/**
 * Predicts fluorescence labels from a transmitted-light TIFF z-stack with isl.
 *
 * <pre>
 * javac -cp isl.jar Predict.java
 * java -cp isl.jar:. -Djava.library.path=DIR_OF_LIBISL_JNI Predict MODEL STACK.tif OUT_PREFIX
 * </pre>
 *
 * Reads the stack with the JDK's TIFF reader (one page per z plane; 8- or 16-bit or
 * float), predicts the median of every label head and writes OUT_PREFIX_HEAD_median.png
 * (16-bit grayscale, 65535 = intensity 1).
 */
public class Predict {
  public static void main(String[] args) throws Exception {
    if (args.length != 3) {
      System.err.println("usage: java Predict MODEL STACK.tif OUT_PREFIX");
      System.exit(2);
    }
    int[] shape = new int[3];
    float[] stack = readStack(new File(args[1]), shape);
    int z = shape[0], h = shape[1], w = shape[2];

    try (Model model = Model.load(args[0])) {
      System.out.println(model + ": " + z + " planes of " + h + " x " + w);
      Map<String, Map<String, float[]>> result = model.predict(stack, z, h, w, "median");
      for (Map.Entry<String, Map<String, float[]>> head : result.entrySet()) {
        File out = new File(args[2] + "_" + head.getKey() + "_median.png");
        writePng(head.getValue().get("median"), h, w, out);
        System.out.println("wrote " + out);
      }
    } catch (IslException e) {
      System.err.println("error: " + e.getMessage() + " (" + e.getStatus() + ")");
      System.exit(1);
    }
  }

  /** Reads all pages, scaled to [0, 1] for integer samples; shape gets {z, h, w}. */
  static float[] readStack(File file, int[] shape) throws Exception {
    Iterator<ImageReader> readers = ImageIO.getImageReadersByFormatName("tiff");
    ImageReader reader = readers.next();
    try (ImageInputStream in = ImageIO.createImageInputStream(file)) {
      reader.setInput(in);
      int z = reader.getNumImages(true);
      int h = reader.getHeight(0), w = reader.getWidth(0);
      float[] stack = new float[z * h * w];
      for (int i = 0; i < z; i++) {
        Raster raster = reader.read(i).getRaster();
        float[] plane = raster.getSamples(0, 0, w, h, 0, (float[]) null);
        int type = raster.getDataBuffer().getDataType();
        float scale = type == DataBuffer.TYPE_BYTE ? 1f / 255
            : type == DataBuffer.TYPE_USHORT ? 1f / 65535 : 1f;
        for (int j = 0; j < plane.length; j++)
          stack[i * h * w + j] = plane[j] * scale;
      }
      shape[0] = z;
      shape[1] = h;
      shape[2] = w;
      return stack;
    } finally {
      reader.dispose();
    }
  }

  static void writePng(float[] image, int h, int w, File file) throws Exception {
    BufferedImage png = new BufferedImage(w, h, BufferedImage.TYPE_USHORT_GRAY);
    for (int y = 0; y < h; y++)
      for (int x = 0; x < w; x++) {
        float v = Math.max(0f, Math.min(1f, image[y * w + x]));
        png.getRaster().setSample(x, y, 0, Math.round(v * 65535));
      }
    ImageIO.write(png, "png", file);
  }
}
