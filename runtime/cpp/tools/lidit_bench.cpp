// lidit-bench --build DIR --prompt TEXT [--steps N --height N --width N --threads N]
// Loads the build once, then draws one image per seed read from stdin (one integer per line) and prints that
// call's stage timings as one JSON object per line: benchmarks/cpp_runtime.py interleaves it with the Python
// runtime on the same build.
#include <iostream>
#include <string>

#include "lidit/lidit.hpp"

int main(int argc, char** argv) {
  lidit::LoadOptions load;
  lidit::Request request;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--build") load.build_dir = value;
    else if (flag == "--prompt") request.prompts = {value};
    else if (flag == "--steps") request.steps = std::stoi(value);
    else if (flag == "--height") request.height = std::stoi(value);
    else if (flag == "--width") request.width = std::stoi(value);
    else if (flag == "--threads") load.intra_op_threads = std::stoi(value);
  }
  try {
    lidit::Pipeline pipe = lidit::Pipeline::load(load);
    std::string line;
    std::cout << "{\"ready\": true}" << std::endl;
    while (std::getline(std::cin, line)) {
      request.seed = std::stoull(line);
      lidit::Result r = pipe.generate(request);
      std::cout << "{";
      bool first = true;
      for (auto& [name, seconds] : r.timings()) {
        std::cout << (first ? "" : ", ") << "\"" << name << "\": " << seconds;
        first = false;
      }
      std::cout << "}" << std::endl;
    }
  } catch (const std::exception& e) {
    std::cerr << "lidit-bench: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
