/* liblidit: run a lidit-export build folder from C (C99) with ONNX Runtime.
 *
 * A build folder is what `lidit-export build` writes: manifest.json, the ONNX graphs and the tokenizers.
 * The library reads the same manifest the Python runtime (lidit_runtime) reads and draws the same images:
 * same tokens, same noise for a seed, same sampler coefficients, same chain of graphs.
 *
 * Conventions
 *  - Every fallible call returns a lidit_status*: NULL on success, otherwise a status the caller frees
 *    with lidit_status_free(). Its message is one line that names what was wrong and how to fix it.
 *  - Handles are opaque. Nothing crosses this boundary as a C++ exception; no call aborts on bad input.
 *  - Strings are UTF-8 and NUL-terminated. Structs with a struct_size field are filled by their *_init()
 *    function first (it sets struct_size, so later versions can add fields at the end).
 *
 * Thread safety
 *  - lidit_pipeline_generate may be called from many threads at once on one pipeline: ONNX Runtime
 *    sessions are thread-safe, every call keeps its own buffers, and the cached unconditional encoding is
 *    guarded by a lock. Each call returns exactly what it would alone.
 *  - lidit_cancel is async-safe with respect to generate: call it from any thread (not from a signal
 *    handler) to cancel every generate in flight on that pipeline at the time of the call.
 *  - lidit_pipeline_free must not race with other calls on the same pipeline.
 */
#ifndef LIDIT_LIDIT_H
#define LIDIT_LIDIT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define LIDIT_API __declspec(dllexport)
#else
#define LIDIT_API __attribute__((visibility("default")))
#endif

/* Bumped when a struct or a function signature changes incompatibly. */
#define LIDIT_ABI_VERSION 1

typedef enum lidit_code {
  LIDIT_OK = 0,
  LIDIT_INVALID_ARGUMENT = 1, /* a NULL pointer, a value out of range, an unknown name */
  LIDIT_NOT_FOUND = 2,        /* the build folder or a file it names does not exist */
  LIDIT_CORRUPT_ARTIFACT = 3, /* a manifest, graph or tokenizer that is damaged, edited or from another tool */
  LIDIT_UNSUPPORTED = 4,      /* valid, but not something this library or this ONNX Runtime can run */
  LIDIT_CANCELLED = 5,        /* the progress callback returned non-zero, or lidit_cancel was called */
  LIDIT_RUNTIME_ERROR = 6,    /* ONNX Runtime failed, or a stage produced NaN / infinity */
  LIDIT_OUT_OF_MEMORY = 7
} lidit_code;

typedef struct lidit_status lidit_status;
typedef struct lidit_pipeline lidit_pipeline;
typedef struct lidit_result lidit_result;

LIDIT_API lidit_code lidit_status_code(const lidit_status* status);   /* LIDIT_OK for NULL */
LIDIT_API const char* lidit_status_message(const lidit_status* status); /* "" for NULL; owned by the status */
LIDIT_API void lidit_status_free(lidit_status* status);                 /* NULL is fine */

/* "lidit 0.1.0 (ABI 1); ONNX Runtime 1.21.0 headers, <version or 'not loaded'> library". Static storage. */
LIDIT_API const char* lidit_version(void);
LIDIT_API int lidit_abi_version(void);

typedef struct lidit_load_options {
  size_t struct_size;
  const char* build_dir;            /* required */
  const char* provider;             /* "cpu" (default), "cuda", "tensorrt", or any ONNX Runtime provider name */
  const char* const* provider_option_keys; /* provider options as key/value pairs (may be NULL) */
  const char* const* provider_option_values;
  size_t provider_option_count;
  int intra_op_threads;             /* per session; 0 = ONNX Runtime decides (default) */
  int verify_hashes;                /* 1 (default): every file's sha256 is checked against the manifest */
  const char* onnxruntime_library;  /* path of libonnxruntime.so; NULL: $LIDIT_ONNXRUNTIME_LIBRARY, else the
                                       library found when liblidit was built */
} lidit_load_options;

LIDIT_API void lidit_load_options_init(lidit_load_options* options);
LIDIT_API lidit_status* lidit_pipeline_load(const lidit_load_options* options, lidit_pipeline** out);
LIDIT_API void lidit_pipeline_free(lidit_pipeline* pipeline); /* NULL is fine */

/* Called once after every denoising step with step = 1..steps; return non-zero to cancel the call. */
typedef int (*lidit_progress_fn)(int step, int steps, void* user_data);

typedef struct lidit_generate_params {
  size_t struct_size;
  const char* const* prompts;       /* prompt_count captions, required */
  size_t prompt_count;
  const char* negative_prompt;      /* NULL or "": the empty caption */
  int steps;                        /* -1: the model's default; else 1..1000 */
  double cfg;                       /* negative: the model's default; else 0..100 */
  uint64_t seed;                    /* numbers the noise of the whole batch */
  const uint64_t* seeds;            /* NULL, or one seed per prompt (each row's noise drawn alone) */
  int height, width;                /* -1: the model's default size; else pixels */
  double cfg_truncation;            /* negative: the chain's default (models whose guidance truncates) */
  double cfg_normalization;         /* negative: the chain's default (models that renormalise guidance) */
  lidit_progress_fn progress;       /* may be NULL */
  void* progress_user_data;
} lidit_generate_params;

LIDIT_API void lidit_generate_params_init(lidit_generate_params* params);
LIDIT_API lidit_status* lidit_pipeline_generate(lidit_pipeline* pipeline, const lidit_generate_params* params,
                                                lidit_result** out);
/* Cancels every generate in flight on this pipeline (each returns LIDIT_CANCELLED within one step);
 * later calls are not affected. */
LIDIT_API void lidit_cancel(lidit_pipeline* pipeline);

/* Results are owned by the library until lidit_result_free. */
LIDIT_API size_t lidit_result_image_count(const lidit_result* result);
/* Image i as uint8 height x width x 3 (RGB, row-major); NULL when i is out of range. */
LIDIT_API const uint8_t* lidit_result_image(const lidit_result* result, size_t i, int* height, int* width);
/* Final latents (before the VAE decoder), float32 with shape[4] = (batch, channels, h, w). */
LIDIT_API const float* lidit_result_latents(const lidit_result* result, int64_t shape[4]);
/* Stage timings in seconds: "encode", "refine", "denoise", "decode", "total" and "onnxruntime" (the time
 * spent inside ONNX Runtime's Run); count is set to their number, names and values point into the result. */
LIDIT_API size_t lidit_result_timings(const lidit_result* result, const char* const** names, const double** values);
LIDIT_API void lidit_result_free(lidit_result* result); /* NULL is fine */

#ifdef __cplusplus
}
#endif
#endif /* LIDIT_LIDIT_H */
