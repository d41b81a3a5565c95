/* The smallest program that draws an image with liblidit (C99): load, generate, read, free, and handle errors.
 *   minimal BUILD_DIR "a prompt"  -> prints the image size and the first pixel; exit 1 with one line on error */
#include <stdio.h>

#include "lidit/lidit.h"

static int report(lidit_status* status) {
  fprintf(stderr, "error (%d): %s\n", (int)lidit_status_code(status), lidit_status_message(status));
  lidit_status_free(status);
  return 1;
}

int main(int argc, char** argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s BUILD_DIR PROMPT\n", argv[0]);
    return 2;
  }
  lidit_load_options options;
  lidit_load_options_init(&options);
  options.build_dir = argv[1];
  lidit_pipeline* pipeline = NULL;
  lidit_status* status = lidit_pipeline_load(&options, &pipeline);
  if (status) return report(status);

  const char* prompts[1];
  prompts[0] = argv[2];
  lidit_generate_params params;
  lidit_generate_params_init(&params);
  params.prompts = prompts;
  params.prompt_count = 1;
  params.seed = 0;
  lidit_result* result = NULL;
  status = lidit_pipeline_generate(pipeline, &params, &result);
  if (status) {
    lidit_pipeline_free(pipeline);
    return report(status);
  }
  int height = 0, width = 0;
  const uint8_t* rgb = lidit_result_image(result, 0, &height, &width);
  printf("%dx%d image, first pixel %u %u %u\n", height, width, rgb[0], rgb[1], rgb[2]);
  lidit_result_free(result);
  lidit_pipeline_free(pipeline);
  return 0;
}
