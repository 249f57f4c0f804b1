/*
 * SWIG interface of the Java bindings: package-private classes of org.isl (IslNative,
 * IslNativeJNI, enums and pointer types) generated from include/isl.h, and the JNI library
 * libisl_jni. The public API is the hand-written facade in src/org/isl (Model,
 * IslException, Status); docs/java.md.
 *
 * Java-specific helpers at the end replace the functions that take callbacks, structs
 * or arrays of output pointers: arrays travel as direct NIO buffers (no copies), outputs
 * as one direct buffer plus a table of offsets.
 */
%module IslNative

%{
#include <stdlib.h>
#include <string.h>
#include "isl.h"
%}

%include "stdint.i"
%include "enums.swg"
%include "cpointer.i"

/* Only the facade is public. */
%pragma(java) moduleclassmodifiers = "final class"
%pragma(java) jniclassclassmodifiers = "final class"
%typemap(javaclassmodifiers) SWIGTYPE, SWIGTYPE *, SWIGTYPE &, SWIGTYPE [] "final class"
%typemap(javaclassmodifiers) enum SWIGTYPE "enum"

/* The JNI library is loaded by the first native call: -Disl.jni.library=/path/libisl_jni.so,
 * or System.loadLibrary("isl_jni") through java.library.path. */
%pragma(java) jniclasscode = %{
  static {
    String path = System.getProperty("isl.jni.library");
    if (path != null && !path.isEmpty())
      System.load(path);
    else
      System.loadLibrary("isl_jni");
  }
%}

/* Out-parameters: IslNative.new_ModelOut(), ModelOut_value(p), delete_ModelOut(p). */
%pointer_functions(isl_model *, ModelOut)
%pointer_functions(isl_predict_options *, OptionsOut)

/* ----------------------------------------------------------------------------------- */
/* Arrays                                                                               */
/* ----------------------------------------------------------------------------------- */

%{
/* Bytes per element of a direct NIO buffer. */
static size_t islj_element_size(JNIEnv *jenv, jobject buffer)
{
    static const struct { const char *name; size_t size; } kinds[] = {
        {"java/nio/ByteBuffer", 1},  {"java/nio/ShortBuffer", 2}, {"java/nio/CharBuffer", 2},
        {"java/nio/FloatBuffer", 4}, {"java/nio/IntBuffer", 4},   {"java/nio/DoubleBuffer", 8},
        {"java/nio/LongBuffer", 8}};
    for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
        jclass c = (*jenv)->FindClass(jenv, kinds[i].name);
        int is = c && (*jenv)->IsInstanceOf(jenv, buffer, c);
        if (c)
            (*jenv)->DeleteLocalRef(jenv, c);
        if (is)
            return kinds[i].size;
    }
    return 0;
}
%}

/* (void *BUFFER, size_t BYTES): a direct java.nio.Buffer, seen without copying. */
%typemap(jni) (void *BUFFER, size_t BYTES) "jobject"
%typemap(jtype) (void *BUFFER, size_t BYTES) "java.nio.Buffer"
%typemap(jstype) (void *BUFFER, size_t BYTES) "java.nio.Buffer"
%typemap(javain) (void *BUFFER, size_t BYTES) "$javainput"
%typemap(in) (void *BUFFER, size_t BYTES) {
    $1 = $input ? (*jenv)->GetDirectBufferAddress(jenv, $input) : NULL;
    jlong capacity = $input ? (*jenv)->GetDirectBufferCapacity(jenv, $input) : -1;
    size_t element = $1 ? islj_element_size(jenv, $input) : 0;
    if (!$1 || capacity < 0 || !element) {
        SWIG_JavaThrowException(jenv, SWIG_JavaIllegalArgumentException,
                                "a direct NIO buffer is required");
        return $null;
    }
    $2 = (size_t)capacity * element;
}

/* (int count, const int *ARRAY): a Java int[]. */
%typemap(jni) (int count, const int *heads), (int count, const isl_stat *stats),
              (int COUNT, const int *ARRAY) "jintArray"
%typemap(jtype) (int count, const int *heads), (int count, const isl_stat *stats),
                (int COUNT, const int *ARRAY) "int[]"
%typemap(jstype) (int count, const int *heads), (int count, const isl_stat *stats),
                 (int COUNT, const int *ARRAY) "int[]"
%typemap(javain) (int count, const int *heads), (int count, const isl_stat *stats),
                 (int COUNT, const int *ARRAY) "$javainput"
%typemap(in) (int count, const int *heads), (int COUNT, const int *ARRAY) {
    if (!$input) {
        SWIG_JavaThrowException(jenv, SWIG_JavaNullPointerException, "null array");
        return $null;
    }
    $1 = (int)(*jenv)->GetArrayLength(jenv, $input);
    $2 = (int *)(*jenv)->GetIntArrayElements(jenv, $input, NULL);
    if (!$2)
        return $null;
}
%typemap(freearg) (int count, const int *heads), (int COUNT, const int *ARRAY) {
    if ($2)
        (*jenv)->ReleaseIntArrayElements(jenv, $input, (jint *)$2, JNI_ABORT);
}
%typemap(in) (int count, const isl_stat *stats) {
    if (!$input) {
        SWIG_JavaThrowException(jenv, SWIG_JavaNullPointerException, "null array");
        return $null;
    }
    $1 = (int)(*jenv)->GetArrayLength(jenv, $input);
    $2 = malloc(sizeof(isl_stat) * (size_t)($1 > 0 ? $1 : 1));
    if (!$2) {
        SWIG_JavaThrowException(jenv, SWIG_JavaOutOfMemoryError, "out of memory");
        return $null;
    }
    jint *values = (*jenv)->GetIntArrayElements(jenv, $input, NULL);
    if (!values) {
        free($2);
        return $null;
    }
    for (int i = 0; i < $1; i++)
        $2[i] = (isl_stat)values[i];
    (*jenv)->ReleaseIntArrayElements(jenv, $input, values, JNI_ABORT);
}
%typemap(freearg) (int count, const isl_stat *stats) { free($2); }

/* (int count, const isl_model *const *models): a Java long[] of model pointers
 * (Model.java passes SWIGTYPE_p_isl_model.getCPtr of each member it holds open). */
%typemap(jni) (int count, const isl_model *const *models) "jlongArray"
%typemap(jtype) (int count, const isl_model *const *models) "long[]"
%typemap(jstype) (int count, const isl_model *const *models) "long[]"
%typemap(javain) (int count, const isl_model *const *models) "$javainput"
%typemap(in) (int count, const isl_model *const *models) {
    if (!$input) {
        SWIG_JavaThrowException(jenv, SWIG_JavaNullPointerException, "null array");
        return $null;
    }
    $1 = (int)(*jenv)->GetArrayLength(jenv, $input);
    $2 = malloc(sizeof(isl_model *) * (size_t)($1 > 0 ? $1 : 1));
    if (!$2) {
        SWIG_JavaThrowException(jenv, SWIG_JavaOutOfMemoryError, "out of memory");
        return $null;
    }
    jlong *values = (*jenv)->GetLongArrayElements(jenv, $input, NULL);
    if (!values) {
        free((void *)$2);
        return $null;
    }
    for (int i = 0; i < $1; i++)
        ((const isl_model **)$2)[i] = (const isl_model *)(intptr_t)values[i];
    (*jenv)->ReleaseLongArrayElements(jenv, $input, values, JNI_ABORT);
}
%typemap(freearg) (int count, const isl_model *const *models) { free((void *)$2); }

/* Replaced by the helpers below. */
%ignore isl_model_config;
%ignore isl_model_config_init;
%ignore isl_model_create;
%ignore isl_stack;
%ignore isl_predict_options_set_progress;
%ignore isl_predict_tile;
%ignore isl_predict_image;
%ignore isl_predict_image_rows;
%ignore isl_stats;
%ignore isl_uncertain_mask;
%ignore isl_uncertainty_summary;
/* Evaluation: arrays as Java arrays through the islj_eval_* helpers (org.isl.Evaluation). */
%ignore isl_object_errors;
%ignore isl_eval_pearson;
%ignore isl_eval_heatmap;
%ignore isl_eval_otsu;
%ignore isl_eval_segment_nuclei;
%ignore isl_eval_object_errors;
%ignore isl_eval_object_radii;
%ignore isl_eval_ks_2samp;
%ignore isl_eval_error_image;
%ignore isl_eval_map_image;

/* isl_version.h is not included: its macros would make a public constants interface;
 * Model.version() calls isl_version_string(). */
%include "isl.h"

/* ----------------------------------------------------------------------------------- */
/* Helpers                                                                              */
/* ----------------------------------------------------------------------------------- */

%apply (void *BUFFER, size_t BYTES) { (void *stack, size_t stack_bytes), (void *out, size_t out_bytes),
                                      (void *logits, size_t logits_bytes) };
%apply (int COUNT, const int *ARRAY) { (int num_offsets, const int *offsets) };

%{
/* Failures found by the helpers themselves (the library's message is left untouched). */
static _Thread_local const char *islj_message;

static isl_status islj_fail(isl_status s, const char *message)
{
    islj_message = message;
    return s;
}

/* Names given as one comma-separated string (names cannot contain commas): *names points
 * into *copy; free both. */
static isl_status islj_split_names(const char *csv, char **copy, const char ***names, int *n)
{
    *copy = strdup(csv ? csv : "");
    *names = *copy ? calloc(strlen(*copy) / 2 + 2, sizeof(char *)) : NULL;
    *n = 0;
    if (!*copy || !*names) {
        free(*copy);
        free(*names);
        return islj_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory");
    }
    for (char *p = *copy; *p;) {
        (*names)[(*n)++] = p;
        char *comma = strchr(p, ',');
        if (!comma)
            break;
        *comma = '\0';
        p = comma + 1;
    }
    return ISL_OK;
}

/* A Java progress listener (org.isl.Model.Progress) seen from isl_progress_fn. */
typedef struct islj_listener {
    JNIEnv *env;     /* of the thread that called the prediction */
    jobject listener;
    jmethodID update; /* boolean update(long done, long total) */
} islj_listener;

/* Calls the listener directly (isl reports progress between tiles on the calling thread).
 * Called from another thread it would have no JNIEnv of its own: it then reports nothing
 * rather than attach threads. A false return or an exception cancels the prediction; the
 * exception is thrown when the native call returns. */
static int islj_progress(void *user, int64_t done, int64_t total)
{
    islj_listener *l = user;
    JavaVM *vm = NULL;
    JNIEnv *env = NULL;
    if ((*l->env)->GetJavaVM(l->env, &vm) != 0 ||
        (*vm)->GetEnv(vm, (void **)&env, JNI_VERSION_1_8) != JNI_OK || env != l->env)
        return 0;
    jboolean go = (*env)->CallBooleanMethod(env, l->listener, l->update, (jlong)done, (jlong)total);
    return (*env)->ExceptionCheck(env) || !go;
}
%}

/* (JNIEnv *env, jobject listener): one Java Object argument, with the caller's JNIEnv. */
%typemap(jni) (JNIEnv *env, jobject listener) "jobject"
%typemap(jtype) (JNIEnv *env, jobject listener) "Object"
%typemap(jstype) (JNIEnv *env, jobject listener) "Object"
%typemap(javain) (JNIEnv *env, jobject listener) "$javainput"
%typemap(in) (JNIEnv *env, jobject listener) {
    $1 = jenv;
    $2 = $input;
}

%inline %{
/* Message of the last failed helper call on this thread: its own, or isl_last_error(). */
const char *islj_last_error(void) { return islj_message ? islj_message : isl_last_error(); }

/* isl_model_create with the label heads as one comma-separated string (names cannot
 * contain commas). */
isl_status islj_model_create(int base_depth, int num_z, const char *heads_csv, long long seed,
                             const char *input_normalization, isl_model **out)
{
    islj_message = NULL;
    char *copy;
    const char **names;
    int n;
    if (islj_split_names(heads_csv, &copy, &names, &n) != ISL_OK)
        return ISL_ERROR_OUT_OF_MEMORY;
    isl_model_config config;
    isl_model_config_init(&config);
    config.base_depth = base_depth;
    config.num_z = num_z;
    config.num_heads = n;
    config.head_names = names;
    config.seed = (uint64_t)seed;
    if (input_normalization)
        config.input_normalization = input_normalization;
    isl_status s = isl_model_create(&config, out);
    free(names);
    free(copy);
    return s;
}

/* isl_predict_image: output (head, stat) goes to out + offsets[head * ISL_STAT_COUNT + stat]
 * floats, or nowhere if the offset is negative. Every range is checked against the buffers.
 * listener (may be null): an org.isl.Model.Progress told of every finished tile; it
 * cancels the prediction by returning false. */
isl_status islj_predict_image(const isl_model *model, isl_predict_options *options,
                              void *stack, size_t stack_bytes, int dtype, int num_z, int height,
                              int width, void *out, size_t out_bytes, int num_offsets,
                              const int *offsets, JNIEnv *env, jobject listener)
{
    static const size_t sample_bytes[] = {1, 2, 4};
    islj_message = NULL;
    if (!model || dtype < 0 || dtype > 2 || num_z < 1 || height < 1 || width < 1 ||
        num_offsets != isl_model_num_heads(model) * ISL_STAT_COUNT)
        return islj_fail(ISL_ERROR_INVALID_ARGUMENT, "invalid stack description or offsets");
    const size_t pixels = (size_t)height * (size_t)width;
    if ((size_t)num_z * pixels * sample_bytes[dtype] > stack_bytes)
        return islj_fail(ISL_ERROR_SHAPE, "the stack buffer is smaller than num_z x height x width");
    float **outputs = calloc((size_t)num_offsets + 1, sizeof(float *));
    if (!outputs)
        return islj_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory");
    for (int i = 0; i < num_offsets; i++) {
        if (offsets[i] < 0)
            continue;
        size_t planes = (size_t)isl_model_head_channels(model, i / ISL_STAT_COUNT) / 256;
        if (((size_t)offsets[i] + planes * pixels) * sizeof(float) > out_bytes) {
            free(outputs);
            return islj_fail(ISL_ERROR_SHAPE, "an output range exceeds the output buffer");
        }
        outputs[i] = (float *)out + offsets[i];
    }
    islj_listener l = {env, listener, NULL};
    if (listener) {
        jclass c = (*env)->GetObjectClass(env, listener);
        l.update = c ? (*env)->GetMethodID(env, c, "update", "(JJ)Z") : NULL;
        if (c)
            (*env)->DeleteLocalRef(env, c);
        if (!l.update) {
            (*env)->ExceptionClear(env);
            free(outputs);
            return islj_fail(ISL_ERROR_INVALID_ARGUMENT, "the progress listener has no update(long, long)");
        }
        isl_predict_options_set_progress(options, islj_progress, &l);
    }
    isl_stack st = {stack, (isl_dtype)dtype, num_z, height, width};
    isl_status s = isl_predict_image(model, options, &st, outputs);
    if (listener)
        isl_predict_options_set_progress(options, NULL, NULL);
    free(outputs);
    return s;
}

/* isl_predict_tile: input is num_z x height x width floats; head h goes to
 * out + offsets[h] floats (channels x (height - 242) x (width - 242)), or nowhere. */
isl_status islj_predict_tile(const isl_model *model, const isl_predict_options *options,
                             void *stack, size_t stack_bytes, int height, int width, void *out,
                             size_t out_bytes, int num_offsets, const int *offsets)
{
    islj_message = NULL;
    if (!model || height < 1 || width < 1 || num_offsets != isl_model_num_heads(model))
        return islj_fail(ISL_ERROR_INVALID_ARGUMENT, "invalid tile description or offsets");
    if ((size_t)isl_model_num_z(model) * height * width * sizeof(float) > stack_bytes)
        return islj_fail(ISL_ERROR_SHAPE, "the tile buffer is smaller than num_z x height x width");
    const size_t pixels = (size_t)(height > 242 ? height - 242 : 0) * (width > 242 ? width - 242 : 0);
    float **outputs = calloc((size_t)num_offsets + 1, sizeof(float *));
    if (!outputs)
        return islj_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory");
    for (int i = 0; i < num_offsets; i++) {
        if (offsets[i] < 0)
            continue;
        size_t channels = (size_t)isl_model_head_channels(model, i);
        if (((size_t)offsets[i] + channels * pixels) * sizeof(float) > out_bytes) {
            free(outputs);
            return islj_fail(ISL_ERROR_SHAPE, "an output range exceeds the output buffer");
        }
        outputs[i] = (float *)out + offsets[i];
    }
    isl_status s = isl_predict_tile(model, options, stack, height, width, outputs);
    free(outputs);
    return s;
}
%}

/* Evaluation helpers on Java arrays (copied in; `result` copied back). */
%include "arrays_java.i"
%apply float[] { const float *predicted, const float *truth, const float *std };
%apply signed char[] { signed char *mask };
%apply double[] { const double *a, const double *b, double *result, const double *counts };
%apply signed char[] { signed char *line };
%inline %{
/* result[0] = Pearson r, result[1] = pixels used (isl_eval_pearson, no mask). */
isl_status islj_eval_pearson(const float *predicted, const float *truth, int count,
                             long long max_pixels, long long seed, double *result)
{
    islj_message = NULL;
    int64_t used = 0;
    isl_status s = isl_eval_pearson(predicted, truth, NULL, count, max_pixels,
                                    (uint64_t)seed, &result[0], &used);
    result[1] = (double)used;
    return s;
}

/* mask[i] = 1 where std[i] is uncertain (isl_uncertain_mask); result[0] = their number. */
isl_status islj_uncertain_mask(const float *std, int count, float threshold, signed char *mask,
                               double *result)
{
    islj_message = NULL;
    size_t uncertain = 0;
    isl_status s = isl_uncertain_mask(std, count > 0 ? (size_t)count : 0, threshold,
                                      (unsigned char *)mask, &uncertain);
    result[0] = (double)uncertain;
    return s;
}

/* isl_uncertainty_summary of the heads (comma-separated), their uncertain pixel counts
 * and the field's pixels: the line, NUL-terminated UTF-8, into line (size bytes). */
isl_status islj_uncertainty_summary(const char *heads_csv, const double *counts, int num_counts,
                                    double pixels, float threshold, signed char *line, int size)
{
    islj_message = NULL;
    char *copy;
    const char **names;
    int n;
    if (islj_split_names(heads_csv, &copy, &names, &n) != ISL_OK)
        return ISL_ERROR_OUT_OF_MEMORY;
    size_t *uncertain = calloc(n > 0 ? (size_t)n : 1, sizeof(size_t));
    isl_status s = !uncertain ? islj_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory")
                   : n != num_counts ? islj_fail(ISL_ERROR_INVALID_ARGUMENT,
                                                 "one uncertain count per head")
                   : ISL_OK;
    for (int i = 0; s == ISL_OK && i < n; i++) {
        if (!(counts[i] >= 0) || !(counts[i] <= pixels))
            s = islj_fail(ISL_ERROR_INVALID_ARGUMENT, "an uncertain count is outside [0, pixels]");
        else
            uncertain[i] = (size_t)counts[i];
    }
    if (s == ISL_OK)
        s = isl_uncertainty_summary(n, names, uncertain, pixels > 0 ? (size_t)pixels : 0,
                                    threshold, (char *)line, size > 0 ? (size_t)size : 0);
    free(uncertain);
    free(names);
    free(copy);
    return s;
}

/* result[0] = D, result[1] = p-value (isl_eval_ks_2samp). */
isl_status islj_eval_ks_2samp(const double *a, int na, const double *b, int nb, double *result)
{
    islj_message = NULL;
    return isl_eval_ks_2samp(a, na, b, nb, &result[0], &result[1]);
}
%}

/* Preprocessing helpers on Java arrays (org.isl.Preprocess): `image_io` is copied in and
 * back, `image_in`/`field_in`/`images_in` only in, `image_out` only back. */
%apply float[] { float *image_io, const float *image_in, const float *field_in,
                 const float *artifact_in, const float *images_in, float *image_out };
%apply int[] { int *passes_out };
%apply long long[] { long long *dust_pixels_out };
%inline %{
isl_status islj_median5(float *image_io, int height, int width, int max_passes, int *passes_out)
{
    islj_message = NULL;
    return isl_median5_until_stable(image_io, height, width, max_passes, passes_out);
}

isl_status islj_downscale2(const float *image_in, int height, int width, float *image_out)
{
    islj_message = NULL;
    return isl_downscale2(image_in, height, width, image_out);
}

/* *images: pointers to the `count` images of height x width stored one after the other
 * in images_in (free() it). */
static isl_status islj_pages(const float *images_in, int count, int height, int width,
                             const float ***images)
{
    if (count < 1 || height < 1 || width < 1)
        return islj_fail(ISL_ERROR_INVALID_ARGUMENT, "invalid image count or size");
    *images = malloc(sizeof(float *) * (size_t)count);
    if (!*images)
        return islj_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory");
    for (int i = 0; i < count; i++)
        (*images)[i] = images_in + (size_t)i * (size_t)height * (size_t)width;
    return ISL_OK;
}

isl_status islj_flat_field(const float *images_in, int count, int height, int width,
                           double sigma, float *image_out)
{
    islj_message = NULL;
    const float **images;
    isl_status s = islj_pages(images_in, count, height, width, &images);
    if (s != ISL_OK)
        return s;
    s = isl_flat_field_estimate(images, count, height, width, sigma, image_out);
    free(images);
    return s;
}

/* dust_pixels_out[0]: the number of dust pixels (isl_dust_fluorescence_estimate). */
isl_status islj_fluorescence_dust(const float *images_in, int count, int height, int width,
                                  double sensor_offset, double threshold, double sigma,
                                  float *image_out, long long *dust_pixels_out)
{
    islj_message = NULL;
    const float **images;
    isl_status s = islj_pages(images_in, count, height, width, &images);
    if (s != ISL_OK)
        return s;
    int64_t marked = 0;
    s = isl_dust_fluorescence_estimate(images, count, height, width, sensor_offset, threshold,
                                       sigma, image_out, &marked);
    free(images);
    dust_pixels_out[0] = (long long)marked;
    return s;
}

isl_status islj_fluorescence_dust_remove(float *image_io, const float *artifact_in, int height,
                                         int width)
{
    islj_message = NULL;
    return isl_dust_fluorescence_remove(image_io, artifact_in, height, width);
}

isl_status islj_flat_field_apply(float *image_io, const float *field_in, int height, int width)
{
    islj_message = NULL;
    return isl_flat_field_apply(image_io, field_in, height, width);
}

isl_status islj_normalize(float *image_io, int count, double mean, double sd)
{
    islj_message = NULL;
    return isl_normalize(image_io, count, mean, sd);
}
%}
