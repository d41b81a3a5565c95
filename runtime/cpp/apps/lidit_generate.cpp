// lidit-generate --build DIR --prompt "..." --out image.png [--steps N --cfg X --seed N --height N --width N
//                --negative "..." --cfg-truncation X --cfg-normalization X --provider NAME --threads N
//                --no-verify --latents FILE]
// Draws one image from a build folder with liblidit, printing a progress line per step and per-stage timings.
// --latents writes the final latents as raw float32 (for parity checks). Exit 0, or 1 with one line on error.
#include <png.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <string>

#include "lidit/lidit.hpp"

namespace {

[[noreturn]] void usage_error(const std::string& message) {
  std::cerr << "lidit-generate: error: " << message << "\n";
  std::exit(2);
}

long long parse_int(const std::string& flag, const char* text, long long lo, long long hi) {
  errno = 0;
  char* end = nullptr;
  long long v = std::strtoll(text, &end, 10);
  if (errno || !*text || *end || v < lo || v > hi)
    usage_error(flag + ": '" + text + "' must be an integer between " + std::to_string(lo) + " and " + std::to_string(hi));
  return v;
}

uint64_t parse_seed(const char* text) {
  errno = 0;
  char* end = nullptr;
  if (!*text || *text == '-') usage_error(std::string("--seed: '") + text + "' must be an integer between 0 and 2**64 - 1");
  unsigned long long v = std::strtoull(text, &end, 10);
  if (errno || *end) usage_error(std::string("--seed: '") + text + "' must be an integer between 0 and 2**64 - 1");
  return v;
}

double parse_number(const std::string& flag, const char* text) {
  char* end = nullptr;
  double v = std::strtod(text, &end);
  if (!*text || *end || !std::isfinite(v)) usage_error(flag + ": '" + text + "' must be a finite number");
  return v;
}

void write_png(const std::string& path, const lidit::Image& im) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) throw lidit::Error(LIDIT_INVALID_ARGUMENT, "cannot write " + path + ": " + std::strerror(errno));
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png ? png_create_info_struct(png) : nullptr;
  if (!png || !info || setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    std::fclose(f);
    throw lidit::Error(LIDIT_RUNTIME_ERROR, "libpng failed writing " + path);
  }
  png_init_io(png, f);
  png_set_IHDR(png, info, png_uint_32(im.width), png_uint_32(im.height), 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  for (int y = 0; y < im.height; ++y)
    png_write_row(png, const_cast<png_bytep>(im.data + size_t(y) * size_t(im.width) * 3));
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  if (std::fclose(f) != 0) throw lidit::Error(LIDIT_RUNTIME_ERROR, "cannot finish writing " + path);
}

}  // namespace

int main(int argc, char** argv) {
  lidit::LoadOptions load;
  lidit::Request request;
  std::string out, latents_file;
  bool have_prompt = false;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) usage_error(flag + " needs a value");
      return argv[++i];
    };
    if (flag == "--build") load.build_dir = value();
    else if (flag == "--prompt") { request.prompts = {value()}; have_prompt = true; }
    else if (flag == "--negative") request.negative_prompt = value();
    else if (flag == "--out") out = value();
    else if (flag == "--latents") latents_file = value();
    else if (flag == "--steps") request.steps = int(parse_int(flag, value(), 1, 1000));
    else if (flag == "--cfg") request.cfg = parse_number(flag, value());
    else if (flag == "--seed") request.seed = parse_seed(value());
    else if (flag == "--cfg-truncation") request.cfg_truncation = parse_number(flag, value());
    else if (flag == "--cfg-normalization") request.cfg_normalization = parse_number(flag, value());
    else if (flag == "--height") request.height = int(parse_int(flag, value(), 1, 1 << 20));
    else if (flag == "--width") request.width = int(parse_int(flag, value(), 1, 1 << 20));
    else if (flag == "--provider") load.provider = value();
    else if (flag == "--threads") load.intra_op_threads = int(parse_int(flag, value(), 0, 1024));
    else if (flag == "--no-verify") load.verify_hashes = false;
    else if (flag == "--version") { std::cout << lidit::version() << "\n"; return 0; }
    else usage_error("unknown flag " + flag + " (see the comment at the top of lidit_generate.cpp)");
  }
  if (load.build_dir.empty() || !have_prompt || out.empty()) usage_error("--build, --prompt and --out are required");
  if (out.size() < 4 || out.compare(out.size() - 4, 4, ".png") != 0) usage_error("--out must name a .png file");
  try {
    auto t0 = std::chrono::steady_clock::now();
    lidit::Pipeline pipe = lidit::Pipeline::load(load);
    double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    lidit::Result result = pipe.generate(request, [](int step, int steps) {
      std::cerr << "step " << step << "/" << steps << "\n";
      return true;
    });
    write_png(out, result.image(0));
    if (!latents_file.empty()) {
      auto lat = result.latents();
      std::ofstream f(latents_file, std::ios::binary);
      f.write(reinterpret_cast<const char*>(lat.data()), std::streamsize(lat.size() * sizeof(float)));
      if (!f) throw lidit::Error(LIDIT_INVALID_ARGUMENT, "cannot write " + latents_file);
    }
    auto im = result.image(0);
    std::cout << "wrote " << out << " (" << im.width << "x" << im.height << "): load " << load_s << "s";
    for (auto& [name, seconds] : result.timings()) std::cout << ", " << name << " " << seconds << "s";
    std::cout << "\n";
  } catch (const lidit::Error& e) {
    std::cerr << "lidit-generate: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
