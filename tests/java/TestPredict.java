import java.io.FileOutputStream;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.FloatBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.concurrent.atomic.AtomicReference;
import org.isl.IslException;
import org.isl.Model;
import org.isl.Status;

/**
 * Tests of the Java bindings (run by tests/python/bindings/test_bindings.py::test_java_bindings).
 *
 * <pre>
 * java -cp isl.jar:CLASSES -Djava.library.path=build/bindings/java TestPredict \
 *     GOLDEN_MODEL INPUT_U16.raw Z H W OUT.raw TMP_DIR
 * </pre>
 *
 * INPUT_U16.raw holds the golden stack as little-endian uint16 (z, y, x). The golden
 * prediction (mean, then median, of each label head as little-endian float32) goes to
 * OUT.raw, which the pytest compares with expected.h5. Exits with status 1 if any check
 * fails.
 */
public class TestPredict {
  private static int failures = 0;

  private static void check(boolean ok, String what) {
    System.out.println((ok ? "ok   " : "FAIL ") + what);
    if (!ok)
      failures++;
  }

  interface Call {
    void run() throws Exception;
  }

  private static void expectStatus(Status status, String what, Call call) {
    try {
      call.run();
      check(false, what + ": no exception");
    } catch (IslException e) {
      check(e.getStatus() == status && !e.getMessage().isEmpty(),
          what + ": " + e.getStatus() + " \"" + e.getMessage() + "\"");
    } catch (Exception e) {
      check(false, what + ": unexpected " + e);
    }
  }

  /** Mirror image (bit 0: left-right, bit 1: up-down) of planes x h x w floats. */
  private static float[] mirror(float[] a, int planes, int h, int w, int flip) {
    float[] out = new float[a.length];
    for (int p = 0; p < planes; p++)
      for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
          int sy = (flip & 2) != 0 ? h - 1 - y : y, sx = (flip & 1) != 0 ? w - 1 - x : x;
          out[(p * h + y) * w + x] = a[(p * h + sy) * w + sx];
        }
    return out;
  }

  private static float maxDiff(float[] a, float[] b) {
    if (a.length != b.length)
      return Float.POSITIVE_INFINITY;
    float d = 0;
    for (int i = 0; i < a.length; i++)
      d = Math.max(d, Math.abs(a[i] - b[i]));
    return d;
  }

  /** Evaluation with known answers: r of exact linear relations; KS of disjoint samples of
   *  3 and 3 (D = 1, p = 2 / C(6, 3) = 0.1); the display transform. */
  private static void checkEvaluation() throws Exception {
    float[] x = new float[50], up = new float[50], down = new float[50];
    for (int i = 0; i < 50; i++) {
      x[i] = (i * 7 % 50) / 50f;
      up[i] = 0.5f * x[i] + 0.1f;
      down[i] = 1f - x[i];
    }
    check(Math.abs(org.isl.Evaluation.pearson(up, x, 0, 0) - 1) < 1e-9, "pearson r = 1");
    check(Math.abs(org.isl.Evaluation.pearson(down, x, 20, 3) + 1) < 1e-9, "pearson r = -1");
    double[] ks = org.isl.Evaluation.ks2samp(new double[] {1, 2, 3}, new double[] {4, 5, 6});
    check(ks[0] == 1 && Math.abs(ks[1] - 0.1) < 1e-12, "ks " + Arrays.toString(ks));
    check(org.isl.Evaluation.display(0.5) == 0.5, "display");
    float[] std = {0.0f, 0.15f, 0.1501f, Float.NaN, 0.5f};
    byte[] mask = new byte[std.length];
    long uncertain = org.isl.Evaluation.uncertainMask(std, org.isl.Evaluation.UNCERTAIN_STD, mask);
    check(uncertain == 3 && Arrays.equals(mask, new byte[] {0, 0, 1, 1, 1}),
          "uncertain mask " + Arrays.toString(mask));
    expectStatus(Status.INVALID_ARGUMENT, "uncertain threshold 0",
                 () -> org.isl.Evaluation.uncertainMask(std, 0, mask));
    // The summary line, word for word (3 of 5 pixels is 60.0%, 1 of 5 is 20.0%).
    String line = org.isl.Evaluation.uncertaintySummary(new String[] {"dapi", "nfh"},
        new long[] {uncertain, 1}, 5, org.isl.Evaluation.UNCERTAIN_STD);
    check(line.equals("uncertain (predicted std > 0.15): dapi 60.0%, nfh 20.0% of the field"),
          "uncertainty summary: " + line);
    expectStatus(Status.INVALID_ARGUMENT, "summary of more uncertain pixels than pixels",
                 () -> org.isl.Evaluation.uncertaintySummary(new String[] {"a"}, new long[] {6},
                                                             5, 0.15f));
    x[3] = Float.NaN;
    expectStatus(Status.VALUE, "pearson NaN", () -> org.isl.Evaluation.pearson(up, x, 0, 0));
  }

  public static void main(String[] args) throws Exception {
    if (args.length != 7) {
      System.err.println("usage: TestPredict GOLDEN_MODEL INPUT_U16.raw Z H W OUT.raw TMP_DIR");
      System.exit(2);
    }
    String goldenModel = args[0];
    int z = Integer.parseInt(args[2]), h = Integer.parseInt(args[3]), w = Integer.parseInt(args[4]);
    Path tmp = Paths.get(args[6]);
    short[] stack = new short[z * h * w];
    ByteBuffer.wrap(Files.readAllBytes(Paths.get(args[1]))).order(ByteOrder.LITTLE_ENDIAN)
        .asShortBuffer().get(stack);

    check(!Model.version().isEmpty(), "version " + Model.version());
    check(Model.STATS.equals(List.of("median", "mean", "mode", "std", "entropy", "p_nonzero")),
        "STATS " + Model.STATS);
    check(Model.formatVersion() >= 1, "format version " + Model.formatVersion());
    checkEvaluation();

    // Errors.
    expectStatus(Status.IO, "missing model file", () -> Model.load(tmp.resolve("missing.h5").toString()));
    expectStatus(Status.FORMAT, "corrupt model file", () -> Model.load(args[1]));
    expectStatus(Status.INVALID_ARGUMENT, "invalid base depth",
        () -> Model.create(2, 13, new String[] {"a"}, 0, "none"));

    // Golden model: description and prediction of the full stack through short[] (uint16).
    try (Model model = Model.load(goldenModel)) {
      check(model.getHeads().equals(List.of("dapi_confocal", "nfh_confocal", "autoencoder")),
          "heads " + model.getHeads());
      check(model.getLabelHeads().equals(List.of("dapi_confocal", "nfh_confocal")), "label heads");
      check(model.getNumZ() == 13 && model.getBaseDepth() == 32, "num_z and base depth");
      check(model.getParameterCount() > 0, "parameter count " + model.getParameterCount());
      check(model.getInputNormalization().equals("none"), "input normalization");
      check(model.getHeadChannels("autoencoder") == 13 * 256, "autoencoder channels");

      Map<String, Map<String, float[]>> out = model.predict(stack, z, h, w, "mean", "median");
      check(out.keySet().equals(new java.util.LinkedHashSet<>(model.getLabelHeads())),
          "predicted heads " + out.keySet());
      try (FileOutputStream f = new FileOutputStream(args[5])) {
        for (String head : model.getLabelHeads())
          for (String stat : new String[] {"mean", "median"}) {
            float[] image = out.get(head).get(stat);
            check(image.length == h * w, head + "/" + stat + " has h * w values");
            ByteBuffer bytes = ByteBuffer.allocate(image.length * 4).order(ByteOrder.LITTLE_ENDIAN);
            bytes.asFloatBuffer().put(image);
            f.write(bytes.array());
          }
      }
    }

    // A small random model: the other input types, options, tiles, threads, save and load.
    int sh = 24, sw = 40;
    short[] small = new short[z * sh * sw];
    for (int p = 0; p < z; p++)
      for (int y = 0; y < sh; y++)
        System.arraycopy(stack, (p * h + y) * w, small, (p * sh + y) * sw, sw);
    float[] smallFloat = new float[small.length];
    for (int i = 0; i < small.length; i++)
      smallFloat[i] = (small[i] & 0xffff) / 65535f;

    String saved = tmp.resolve("java-small.h5").toString();
    Model model = Model.create(16, z, new String[] {"dapi_confocal", "tuj1"}, 7, "none");
    try {
      float[] ref = model.predict(small, z, sh, sw, "mean").get("dapi_confocal").get("mean");
      float[] viaFloat = model.predict(smallFloat, z, sh, sw, "mean").get("dapi_confocal").get("mean");
      check(maxDiff(ref, viaFloat) < 1e-4f, "float[] agrees with short[]: " + maxDiff(ref, viaFloat));

      FloatBuffer heap = FloatBuffer.wrap(smallFloat);
      FloatBuffer direct = ByteBuffer.allocateDirect(smallFloat.length * 4)
          .order(ByteOrder.nativeOrder()).asFloatBuffer();
      direct.put(smallFloat).flip();
      float[] viaHeap = model.predict(heap, z, sh, sw, "mean").get("dapi_confocal").get("mean");
      Model.Options options = new Model.Options().heads("tuj1", "autoencoder").stats("mean", "entropy")
          .tileSize(282).threads(1);
      Map<String, Map<String, float[]>> viaDirect = model.predict(direct, z, sh, sw, options);
      check(Arrays.equals(viaFloat, viaHeap), "heap FloatBuffer agrees with float[]");
      check(viaDirect.keySet().equals(new java.util.LinkedHashSet<>(List.of("tuj1", "autoencoder"))),
          "selected heads " + viaDirect.keySet());
      check(viaDirect.get("autoencoder").get("mean").length == z * sh * sw, "autoencoder is z * h * w");
      float[] entropy = viaDirect.get("tuj1").get("entropy");
      boolean inRange = true;
      for (float v : entropy)
        inRange &= v >= 0 && v <= 1;
      check(inRange, "entropy in [0, 1]");

      // Concurrent predictions with one model give the sequential result.
      AtomicReference<float[]> other = new AtomicReference<>();
      AtomicReference<Exception> error = new AtomicReference<>();
      Thread t = new Thread(() -> {
        try {
          other.set(model.predict(small, z, sh, sw, "mean").get("dapi_confocal").get("mean"));
        } catch (Exception e) {
          error.set(e);
        }
      });
      t.start();
      float[] mine = model.predict(small, z, sh, sw, "mean").get("dapi_confocal").get("mean");
      t.join();
      check(error.get() == null && Arrays.equals(mine, ref) && Arrays.equals(other.get(), ref),
          "concurrent predictions");

      // Ensemble: the mixture's mean is the mean of the members' means; members are
      // matched by head name ("dapi_confocal" is head 1 of the other model).
      try (Model second = Model.create(8, z, new String[] {"gfp", "dapi_confocal"}, 8, "none")) {
        float[] alone = second.predict(small, z, sh, sw, "mean").get("dapi_confocal").get("mean");
        Model.Options both = new Model.Options().heads("dapi_confocal").stats("mean")
            .ensemble(second);
        float[] mixed = model.predict(FloatBuffer.wrap(smallFloat), z, sh, sw, both)
            .get("dapi_confocal").get("mean");
        float worstMix = 0;
        for (int i = 0; i < mixed.length; i++)
          worstMix = Math.max(worstMix, Math.abs(mixed[i] - (ref[i] + alone[i]) / 2));
        check(maxDiff(ref, alone) > 0.01f && worstMix < 1e-4f,
            "ensemble mean is the members' mean (off by " + worstMix + ")");
        expectStatus(Status.INVALID_ARGUMENT, "ensemble member without the head",
            () -> model.predict(FloatBuffer.wrap(smallFloat), z, sh, sw,
                new Model.Options().heads("tuj1").ensemble(second)));
      }

      // Flip averaging: the mean of the predictions of the four mirror images (made here),
      // mirrored back. Sides of 8 + 16 m keep every pixel's phase of the network's stride.
      float[] flipSum = new float[sh * sw];
      for (int flip = 0; flip < 4; flip++) {
        float[] mirrored = mirror(smallFloat, z, sh, sw, flip);
        float[] mean = mirror(model.predict(mirrored, z, sh, sw, "mean").get("dapi_confocal")
            .get("mean"), 1, sh, sw, flip);
        for (int i = 0; i < flipSum.length; i++)
          flipSum[i] += mean[i] / 4;
      }
      float[] flipped = model.predict(FloatBuffer.wrap(smallFloat), z, sh, sw,
          new Model.Options().heads("dapi_confocal").stats("mean").flipAverage(true))
          .get("dapi_confocal").get("mean");
      check(maxDiff(flipped, ref) > 0.01f && maxDiff(flipped, flipSum) < 1e-4f,
          "flip average is the mirror images' mean (off by " + maxDiff(flipped, flipSum) + ")");

      // Tiles: shape and probabilities that sum to 1.
      float[] tile = new float[z * 266 * 282];  // the tile size of the predictions above
      for (int i = 0; i < tile.length; i++)
        tile[i] = (i % 977) / 977f;
      Map<String, float[]> probs = model.predictTile(tile, 266, 282, true);
      float[] p = probs.get("dapi_confocal");
      int pixels = 24 * 40;
      check(p.length == 256 * pixels, "tile output is 256 x 24 x 40");
      float worst = 0;
      for (int i = 0; i < pixels; i++) {
        float sum = 0;
        for (int k = 0; k < 256; k++)
          sum += p[k * pixels + i];
        worst = Math.max(worst, Math.abs(sum - 1));
      }
      check(worst < 1e-4f, "probabilities sum to 1 (worst " + worst + ")");

      // Errors.
      expectStatus(Status.SHAPE, "wrong z count", () -> model.predict(smallFloat, z - 1, sh, sw));
      float[] nan = smallFloat.clone();
      nan[5] = Float.NaN;
      expectStatus(Status.VALUE, "NaN input", () -> model.predict(nan, z, sh, sw));
      expectStatus(Status.INVALID_ARGUMENT, "unknown statistic",
          () -> model.predict(smallFloat, z, sh, sw, "average"));
      expectStatus(Status.INVALID_ARGUMENT, "unknown head",
          () -> model.predict(FloatBuffer.wrap(smallFloat), z, sh, sw, new Model.Options().heads("gfp")));
      expectStatus(Status.INVALID_ARGUMENT, "bad tile size option",
          () -> model.predict(FloatBuffer.wrap(smallFloat), z, sh, sw, new Model.Options().tileSize(251)));
      expectStatus(Status.SHAPE, "bad tile size", () -> model.predictTile(tile, 251, 250, false));
      expectStatus(Status.SHAPE, "short stack", () -> model.predict(smallFloat, z, sh + 1, sw));

      model.save(saved);
    } finally {
      model.close();
    }
    check(model.isClosed(), "closed");
    try {
      model.predict(small, z, sh, sw);
      check(false, "predict after close: no exception");
    } catch (IllegalStateException e) {
      check(true, "predict after close: " + e.getMessage());
    }
    model.close(); // idempotent

    try (Model loaded = Model.load(saved)) {
      check(loaded.getHeads().equals(List.of("dapi_confocal", "tuj1", "autoencoder"))
          && loaded.getBaseDepth() == 16, "saved and loaded " + loaded);
    }

    System.out.println(failures == 0 ? "all Java checks passed" : failures + " Java checks FAILED");
    System.exit(failures == 0 ? 0 : 1);
  }
}
