package org.isl;

import java.lang.ref.Cleaner;
import java.nio.Buffer;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.FloatBuffer;
import java.nio.ShortBuffer;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.locks.ReentrantReadWriteLock;

/**
 * An In Silico Labeling network with its weights: predicts fluorescence images from a
 * transmitted-light z-stack. Immutable once loaded or created.
 *
 * <pre>{@code
 * try (Model model = Model.load("model.h5")) {
 *   Map<String, Map<String, float[]>> out = model.predict(stack, 13, height, width, "median");
 *   float[] nuclei = out.get("dapi_confocal").get("median");  // height * width, in [0, 1]
 * }
 * }</pre>
 *
 * <p>Stacks are plane-major (z, y, x) and images row-major. Any number of threads may
 * predict with one model at a time; {@link #close()} waits for running predictions and
 * later calls throw {@link IllegalStateException}. A model that is not closed is freed
 * when it becomes unreachable.
 *
 * <p>The JNI library is loaded on first use: {@code System.loadLibrary("isl_jni")} (set
 * {@code -Djava.library.path=DIR}), or {@code System.load} of the system property
 * {@code isl.jni.library} if set.
 */
public final class Model implements AutoCloseable {
  /** Name of the autoencoder head (it predicts the input stack itself). */
  public static final String AUTOENCODER = IslNativeConstants.ISL_AUTOENCODER_NAME;

  /** A tile of side n (250 + 16 m) predicts n - TILE_CONTEXT output pixels per side. */
  public static final int TILE_CONTEXT = IslNativeConstants.ISL_TILE_CONTEXT;

  private static final int STAT_COUNT = isl_stat.ISL_STAT_COUNT.swigValue();

  /** Names of the per-pixel statistics: median, mean, mode, std, entropy, p_nonzero. */
  public static final List<String> STATS;

  static {
    String[] names = new String[STAT_COUNT];
    for (int i = 0; i < STAT_COUNT; i++)
      names[i] = IslNative.isl_stat_name(isl_stat.swigToEnum(i));
    STATS = Collections.unmodifiableList(Arrays.asList(names));
  }

  private static final Cleaner CLEANER = Cleaner.create();

  /** Owns the C model; run once, by close() or by the cleaner. */
  private static final class Handle implements Runnable {
    private SWIGTYPE_p_isl_model ptr;

    Handle(SWIGTYPE_p_isl_model ptr) {
      this.ptr = ptr;
    }

    @Override
    public synchronized void run() {
      if (ptr != null) {
        IslNative.isl_model_free(ptr);
        ptr = null;
      }
    }
  }

  private final Handle handle;
  private final SWIGTYPE_p_isl_model ptr;
  private final Cleaner.Cleanable cleanable;
  private final ReentrantReadWriteLock lock = new ReentrantReadWriteLock();
  private boolean closed;

  private final List<String> heads;
  private final int[] channels;
  private final int numZ;
  private final int baseDepth;
  private final long parameterCount;
  private final String inputNormalization;
  private volatile double pixelSize;

  private Model(SWIGTYPE_p_isl_model ptr) {
    this.ptr = ptr;
    this.handle = new Handle(ptr);
    this.cleanable = CLEANER.register(this, handle);
    int n = IslNative.isl_model_num_heads(ptr);
    String[] names = new String[n];
    channels = new int[n];
    for (int i = 0; i < n; i++) {
      names[i] = IslNative.isl_model_head_name(ptr, i);
      channels[i] = IslNative.isl_model_head_channels(ptr, i);
    }
    heads = Collections.unmodifiableList(Arrays.asList(names));
    numZ = IslNative.isl_model_num_z(ptr);
    baseDepth = IslNative.isl_model_base_depth(ptr);
    parameterCount = IslNative.isl_model_parameter_count(ptr);
    inputNormalization = IslNative.isl_model_input_normalization(ptr);
    pixelSize = IslNative.isl_model_pixel_size(ptr);
  }

  // ---------------------------------------------------------------------------------
  // Errors

  private static void check(isl_status s) throws IslException {
    if (s != isl_status.ISL_OK)
      throw new IslException(Status.fromCode(s.swigValue()), IslNative.isl_last_error());
  }

  /** For the helpers of isl.i, which report their own argument checks. */
  private static void checkHelper(isl_status s) throws IslException {
    if (s != isl_status.ISL_OK)
      throw new IslException(Status.fromCode(s.swigValue()), IslNative.islj_last_error());
  }

  private static IslException invalid(String message) {
    return new IslException(Status.INVALID_ARGUMENT, message);
  }

  // ---------------------------------------------------------------------------------
  // Creation, saving, lifetime

  /** Version of the C library, "major.minor.patch". */
  public static String version() {
    return IslNative.isl_version_string();
  }

  /** Model file format version this library writes (and the newest it reads). */
  public static int formatVersion() {
    return IslNative.isl_model_format_version();
  }

  /**
   * Loads and validates a model file.
   *
   * @throws IslException status IO if the file cannot be read, FORMAT if it is not a valid
   *     model (the message names the dataset).
   */
  public static Model load(String path) throws IslException {
    if (path == null)
      throw invalid("path is null");
    SWIGTYPE_p_p_isl_model out = IslNative.new_ModelOut();
    try {
      check(IslNative.isl_model_load(path, out));
      return new Model(IslNative.ModelOut_value(out));
    } finally {
      IslNative.delete_ModelOut(out);
    }
  }

  /**
   * Creates a model with random weights (He initialisation) and an autoencoder head.
   *
   * @param baseDepth width of the network (400 in the paper; 16 or 32 for tests)
   * @param numZ transmitted-light planes per input (13 in the paper)
   * @param labelHeads names of the label heads, e.g. "dapi_confocal"
   * @param seed seed of the random weights
   * @param inputNormalization "none" or "global"
   */
  public static Model create(int baseDepth, int numZ, String[] labelHeads, long seed,
      String inputNormalization) throws IslException {
    StringBuilder csv = new StringBuilder();
    for (String h : labelHeads) {
      if (h == null || h.isEmpty() || h.indexOf(',') >= 0)
        throw invalid("head name '" + h + "' is empty or contains ','");
      if (csv.length() > 0)
        csv.append(',');
      csv.append(h);
    }
    SWIGTYPE_p_p_isl_model out = IslNative.new_ModelOut();
    try {
      checkHelper(IslNative.islj_model_create(baseDepth, numZ, csv.toString(), seed,
          inputNormalization == null ? "none" : inputNormalization, out));
      return new Model(IslNative.ModelOut_value(out));
    } finally {
      IslNative.delete_ModelOut(out);
    }
  }

  /** Writes the model atomically (to a temporary file renamed over path). */
  public void save(String path) throws IslException {
    if (path == null)
      throw invalid("path is null");
    acquire();
    try {
      check(IslNative.isl_model_save(ptr, path));
    } finally {
      release();
    }
  }

  /** Releases the model, after the predictions still running. Idempotent. */
  @Override
  public void close() {
    lock.writeLock().lock();
    try {
      closed = true;
      cleanable.clean();
    } finally {
      lock.writeLock().unlock();
    }
  }

  /** True once {@link #close()} has been called. */
  public boolean isClosed() {
    lock.readLock().lock();
    try {
      return closed;
    } finally {
      lock.readLock().unlock();
    }
  }

  private void acquire() {
    lock.readLock().lock();
    if (closed) {
      lock.readLock().unlock();
      throw new IllegalStateException("this isl Model has been closed");
    }
  }

  private void release() {
    lock.readLock().unlock();
    java.lang.ref.Reference.reachabilityFence(this); // no cleaning during a native call
  }

  // ---------------------------------------------------------------------------------
  // Description (readable after close)

  /** All heads: the label heads, then "autoencoder" (if the model has one). */
  public List<String> getHeads() {
    return heads;
  }

  /** The label heads (predicted by default). */
  public List<String> getLabelHeads() {
    List<String> labels = new ArrayList<>();
    for (String h : heads)
      if (!h.equals(AUTOENCODER))
        labels.add(h);
    return Collections.unmodifiableList(labels);
  }

  /** Output channels of a head: 256, or numZ * 256 for the autoencoder. */
  public int getHeadChannels(String head) throws IslException {
    return channels[headIndex(head)];
  }

  public int getNumZ() {
    return numZ;
  }

  public int getBaseDepth() {
    return baseDepth;
  }

  public long getParameterCount() {
    return parameterCount;
  }

  /** "none" or "global". */
  public String getInputNormalization() {
    return inputNormalization;
  }

  /** Pixel size in micrometres of the stacks the model was trained on; 0 if unknown. */
  public double getPixelSize() {
    return pixelSize;
  }

  /**
   * Records the training pixel size (micrometres, in (0, 10000]; 0 clears it), saved by
   * {@link #save}. Waits for the predictions running on this model (the C library forbids
   * changing a model another thread uses).
   *
   * @throws IslException status INVALID_ARGUMENT for a size out of range or NaN
   */
  public void setPixelSize(double micrometres) throws IslException {
    lock.writeLock().lock();
    try {
      if (closed)
        throw new IllegalStateException("this isl Model has been closed");
      check(IslNative.isl_model_set_pixel_size(ptr, micrometres));
      pixelSize = IslNative.isl_model_pixel_size(ptr);
    } finally {
      lock.writeLock().unlock();
      java.lang.ref.Reference.reachabilityFence(this);
    }
  }

  @Override
  public String toString() {
    return "org.isl.Model[baseDepth=" + baseDepth + ", numZ=" + numZ + ", heads=" + heads + "]";
  }

  private int headIndex(String head) throws IslException {
    int i = heads.indexOf(head);
    if (i < 0)
      throw invalid("unknown head '" + head + "' (the model has " + heads + ")");
    return i;
  }

  // ---------------------------------------------------------------------------------
  // Prediction

  /**
   * Progress of a prediction: called on the predicting thread after each tile, with the
   * tiles done so far and their total (done == total at the end). Return false to cancel:
   * the prediction then throws an IslException with status CANCELLED. An exception thrown
   * here also stops the prediction and reaches its caller.
   */
  @FunctionalInterface
  public interface Progress {
    boolean update(long done, long total);
  }

  /** Options of {@link Model#predict(Buffer, int, int, int, Options)}; setters chain. */
  public static final class Options {
    private String[] heads;
    private String[] stats = {"median"};
    private int tileSize;
    private int threads;
    private long memoryLimit;
    private boolean bf16;
    private Model[] ensemble = {};
    private boolean flipAverage;
    private Progress progress;

    /** Heads to predict; default: all label heads (not the autoencoder). */
    public Options heads(String... heads) {
      this.heads = heads.clone();
      return this;
    }

    /** Statistics among {@link Model#STATS}; default: median. */
    public Options stats(String... stats) {
      this.stats = stats.clone();
      return this;
    }

    /** Input side of the tiles, 250 + 16 m; 0 (default): the largest that fits the memory limit. */
    public Options tileSize(int side) {
      this.tileSize = side;
      return this;
    }

    /** Threads of this prediction; 0 (default): all cores. */
    public Options threads(int threads) {
      this.threads = threads;
      return this;
    }

    /** Bound on the working memory in bytes; 0: the default (1.75 GiB). */
    public Options memoryLimit(long bytes) {
      this.memoryLimit = bytes;
      return this;
    }

    /** bfloat16 convolutions on CPUs that have them. */
    public Options bf16(boolean enable) {
      this.bf16 = enable;
      return this;
    }

    /**
     * Ensemble prediction: the probability distributions of these models (up to 15) are
     * averaged with the predicting model's before the statistics are taken. They must read
     * the same planes with the same input normalization and have the selected heads
     * (matched by name). None (default): the predicting model alone.
     */
    public Options ensemble(Model... others) {
      this.ensemble = others.clone();
      return this;
    }

    /**
     * Flip averaging (test-time augmentation): each model also predicts the input's three
     * mirror images (left-right, up-down, both); the four distributions, mirrored back,
     * are averaged. Better predictions for 4x the time. Default: off.
     */
    public Options flipAverage(boolean enable) {
      this.flipAverage = enable;
      return this;
    }

    /** Told of every finished tile and able to cancel (see {@link Progress}); default: none. */
    public Options progress(Progress listener) {
      this.progress = listener;
      return this;
    }
  }

  /**
   * Predicts the label heads of a float32 stack (values used as they are, e.g. in [0, 1]).
   *
   * @param stack z * h * w floats, plane-major
   * @param stats statistics among {@link #STATS}; none: median
   * @return head -> statistic -> h * w floats (numZ * h * w for the autoencoder)
   */
  public Map<String, Map<String, float[]>> predict(float[] stack, int z, int h, int w,
      String... stats) throws IslException {
    checkLength(stack == null ? -1 : stack.length, z, h, w);
    FloatBuffer buffer = ByteBuffer.allocateDirect(stack.length * 4)
        .order(ByteOrder.nativeOrder()).asFloatBuffer();
    buffer.put(stack).flip();
    return predict(buffer, z, h, w, statOptions(stats));
  }

  /** Predicts from an unsigned 16-bit stack (as ImageJ stores it), scaled by 1 / 65535. */
  public Map<String, Map<String, float[]>> predict(short[] stack, int z, int h, int w,
      String... stats) throws IslException {
    checkLength(stack == null ? -1 : stack.length, z, h, w);
    ShortBuffer buffer = ByteBuffer.allocateDirect(stack.length * 2)
        .order(ByteOrder.nativeOrder()).asShortBuffer();
    buffer.put(stack).flip();
    return predict(buffer, z, h, w, statOptions(stats));
  }

  /** Predicts from an unsigned 8-bit stack, scaled by 1 / 255. */
  public Map<String, Map<String, float[]>> predict(byte[] stack, int z, int h, int w,
      String... stats) throws IslException {
    checkLength(stack == null ? -1 : stack.length, z, h, w);
    ByteBuffer buffer = ByteBuffer.allocateDirect(stack.length);
    buffer.put(stack).flip();
    return predict(buffer, z, h, w, statOptions(stats));
  }

  /** Predicts from a FloatBuffer (read from its position; not copied if direct and in native order). */
  public Map<String, Map<String, float[]>> predict(FloatBuffer stack, int z, int h, int w,
      String... stats) throws IslException {
    return predict(stack, z, h, w, statOptions(stats));
  }

  private static Options statOptions(String[] stats) {
    Options o = new Options();
    if (stats != null && stats.length > 0)
      o.stats(stats);
    return o;
  }

  /**
   * Predicts a whole stack of any size: mirror-padded, run in tiles that bound memory.
   *
   * @param stack a FloatBuffer (float32 values used as they are), ShortBuffer (uint16,
   *     scaled by 1 / 65535) or ByteBuffer (uint8, scaled by 1 / 255) holding z * h * w
   *     samples from its position, plane-major. Direct buffers in native byte order are
   *     used without copying.
   * @return head -> statistic -> h * w floats (numZ * h * w, plane-major, for the autoencoder)
   * @throws IslException SHAPE if z is not the model's numZ, VALUE for NaN or values outside
   *     [0, 1] (without input normalization), INVALID_ARGUMENT for unknown heads or statistics
   */
  public Map<String, Map<String, float[]>> predict(Buffer stack, int z, int h, int w,
      Options options) throws IslException {
    if (options == null)
      options = new Options();
    checkLength(stack == null ? -1 : stack.remaining(), z, h, w);
    int dtype;
    Buffer direct;
    if (stack instanceof FloatBuffer) {
      dtype = isl_dtype.ISL_DTYPE_F32.swigValue();
      FloatBuffer f = (FloatBuffer) stack;
      if (f.isDirect() && f.order() == ByteOrder.nativeOrder()) {
        direct = f.slice();
      } else {
        FloatBuffer copy = ByteBuffer.allocateDirect(f.remaining() * 4)
            .order(ByteOrder.nativeOrder()).asFloatBuffer();
        copy.put(f.duplicate()).flip();
        direct = copy;
      }
    } else if (stack instanceof ShortBuffer) {
      dtype = isl_dtype.ISL_DTYPE_U16.swigValue();
      ShortBuffer s = (ShortBuffer) stack;
      if (s.isDirect() && s.order() == ByteOrder.nativeOrder()) {
        direct = s.slice();
      } else {
        ShortBuffer copy = ByteBuffer.allocateDirect(s.remaining() * 2)
            .order(ByteOrder.nativeOrder()).asShortBuffer();
        copy.put(s.duplicate()).flip();
        direct = copy;
      }
    } else if (stack instanceof ByteBuffer) {
      dtype = isl_dtype.ISL_DTYPE_U8.swigValue();
      ByteBuffer b = (ByteBuffer) stack;
      if (b.isDirect()) {
        direct = b.slice();
      } else {
        ByteBuffer copy = ByteBuffer.allocateDirect(b.remaining());
        copy.put(b.duplicate()).flip();
        direct = copy;
      }
    } else {
      throw invalid("the stack must be a FloatBuffer, ShortBuffer or ByteBuffer");
    }

    // Selected heads and statistics, and where their outputs go in one direct buffer.
    List<Integer> headIds = new ArrayList<>();
    if (options.heads == null) {
      for (int i = 0; i < heads.size(); i++)
        if (!heads.get(i).equals(AUTOENCODER))
          headIds.add(i);
    } else {
      for (String name : options.heads)
        if (!headIds.contains(headIndex(name)))
          headIds.add(headIndex(name));
    }
    List<Integer> statIds = new ArrayList<>();
    for (String name : options.stats) {
      int s = IslNative.isl_stat_from_name(name);
      if (s < 0)
        throw invalid("unknown statistic '" + name + "' (one of " + STATS + ")");
      if (!statIds.contains(s))
        statIds.add(s);
    }
    if (headIds.isEmpty() || statIds.isEmpty())
      throw invalid("select at least one head and one statistic");
    int[] offsets = new int[heads.size() * STAT_COUNT];
    Arrays.fill(offsets, -1);
    long total = 0;
    long pixels = (long) h * w;
    for (int head : headIds)
      for (int s : statIds) {
        offsets[head * STAT_COUNT + s] = (int) total;
        total += channels[head] / IslNativeConstants.ISL_NUM_CLASSES * pixels;
        if (total > Integer.MAX_VALUE / 2)
          throw new IslException(Status.SHAPE, "the outputs exceed 4 GiB: predict a smaller region");
      }
    FloatBuffer out = ByteBuffer.allocateDirect((int) total * 4)
        .order(ByteOrder.nativeOrder()).asFloatBuffer();

    int[] headArray = headIds.stream().mapToInt(Integer::intValue).toArray();
    int[] statArray = statIds.stream().mapToInt(Integer::intValue).toArray();
    // Every member stays open (its read lock held) while the prediction uses it.
    int held = 0;
    acquire();
    try {
      for (Model m : options.ensemble) {
        if (m == null)
          throw invalid("an ensemble member is null");
        m.acquire();
        held++;
      }
      SWIGTYPE_p_isl_predict_options opts = createOptions(options, headArray, statArray, false);
      try {
        checkHelper(IslNative.islj_predict_image(ptr, opts, direct, dtype, z, h, w, out, offsets,
                                                 options.progress));
      } finally {
        IslNative.isl_predict_options_free(opts);
      }
    } finally {
      for (int i = 0; i < held; i++)
        options.ensemble[i].release();
      release();
    }

    Map<String, Map<String, float[]>> result = new LinkedHashMap<>();
    for (int head : headIds) {
      Map<String, float[]> byStat = new LinkedHashMap<>();
      for (int s : statIds) {
        float[] image = new float[(int) (channels[head] / IslNativeConstants.ISL_NUM_CLASSES * pixels)];
        out.position(offsets[head * STAT_COUNT + s]);
        out.get(image);
        byStat.put(STATS.get(s), image);
      }
      result.put(heads.get(head), byStat);
    }
    return result;
  }

  /**
   * Runs the network once on one tile without padding.
   *
   * @param tile numZ * h * w floats (already scaled), h and w each 250 + 16 m
   * @param probabilities probabilities (softmax) instead of logits
   * @return label head -> 256 * (h - 242) * (w - 242) floats, channel-major
   * @throws IslException SHAPE if h or w is not 250 + 16 m
   */
  public Map<String, float[]> predictTile(float[] tile, int h, int w, boolean probabilities)
      throws IslException {
    checkLength(tile == null ? -1 : tile.length, numZ, h, w);
    FloatBuffer input = ByteBuffer.allocateDirect(tile.length * 4)
        .order(ByteOrder.nativeOrder()).asFloatBuffer();
    input.put(tile).flip();
    long pixels = (long) Math.max(h - TILE_CONTEXT, 0) * Math.max(w - TILE_CONTEXT, 0);
    int[] offsets = new int[heads.size()];
    Arrays.fill(offsets, -1);
    long total = 0;
    for (int i = 0; i < heads.size(); i++)
      if (!heads.get(i).equals(AUTOENCODER)) {
        offsets[i] = (int) total;
        total += channels[i] * pixels;
        if (total > Integer.MAX_VALUE / 2)
          throw new IslException(Status.SHAPE, "the tile is too large");
      }
    FloatBuffer out = ByteBuffer.allocateDirect((int) Math.max(total, 1) * 4)
        .order(ByteOrder.nativeOrder()).asFloatBuffer();
    acquire();
    try {
      SWIGTYPE_p_isl_predict_options opts = createOptions(new Options(), null, null, probabilities);
      try {
        checkHelper(IslNative.islj_predict_tile(ptr, opts, input, h, w, out, offsets));
      } finally {
        IslNative.isl_predict_options_free(opts);
      }
    } finally {
      release();
    }
    Map<String, float[]> result = new LinkedHashMap<>();
    for (int i = 0; i < heads.size(); i++)
      if (offsets[i] >= 0) {
        float[] logits = new float[(int) (channels[i] * pixels)];
        out.position(offsets[i]);
        out.get(logits);
        result.put(heads.get(i), logits);
      }
    return result;
  }

  private static void checkLength(long length, int z, int h, int w) throws IslException {
    if (length < 0)
      throw invalid("the stack is null");
    if (z < 1 || h < 1 || w < 1)
      throw new IslException(Status.SHAPE, "invalid stack size " + z + " x " + h + " x " + w);
    if (length < (long) z * h * w)
      throw new IslException(Status.SHAPE, "the stack has " + length + " samples, fewer than "
          + z + " x " + h + " x " + w);
  }

  private static SWIGTYPE_p_isl_predict_options createOptions(Options o, int[] headIds,
      int[] statIds, boolean probabilities) throws IslException {
    SWIGTYPE_p_p_isl_predict_options out = IslNative.new_OptionsOut();
    SWIGTYPE_p_isl_predict_options opts;
    try {
      check(IslNative.isl_predict_options_create(out));
      opts = IslNative.OptionsOut_value(out);
    } finally {
      IslNative.delete_OptionsOut(out);
    }
    try {
      // Only what the caller set: the defaults live in the library.
      if (o.tileSize != 0)
        check(IslNative.isl_predict_options_set_tile_size(opts, o.tileSize));
      if (o.threads != 0)
        check(IslNative.isl_predict_options_set_threads(opts, o.threads));
      if (o.memoryLimit < 0)
        throw invalid("memory limit must not be negative");
      if (o.memoryLimit != 0)
        check(IslNative.isl_predict_options_set_memory_limit(opts, o.memoryLimit));
      if (o.bf16)
        check(IslNative.isl_predict_options_set_precision(opts, isl_precision.ISL_PRECISION_BF16));
      if (headIds != null)
        check(IslNative.isl_predict_options_set_heads(opts, headIds));
      if (statIds != null)
        check(IslNative.isl_predict_options_set_stats(opts, statIds));
      if (probabilities)
        check(IslNative.isl_predict_options_set_probabilities(opts, 1));
      if (o.flipAverage)
        check(IslNative.isl_predict_options_set_flip_average(opts, 1));
      if (o.ensemble.length > 0) {
        long[] members = new long[o.ensemble.length];
        for (int i = 0; i < members.length; i++)
          members[i] = SWIGTYPE_p_isl_model.getCPtr(o.ensemble[i].ptr);
        check(IslNative.isl_predict_options_set_ensemble(opts, members));
      }
      return opts;
    } catch (IslException | RuntimeException e) {
      IslNative.isl_predict_options_free(opts);
      throw e;
    }
  }
}
