// ctest suite of liblidit's C API. Without LIDIT_TEST_BUILD: argument checks, missing and damaged build folders
// made on the spot, and the noise against known values. With LIDIT_TEST_BUILD=<a build folder> (pytest sets it
// to a mini FP32 build): also damaged copies of that build, request refusals, determinism, progress,
// cancellation from the callback and from another thread, and concurrent generate on one pipeline.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include "internal.hpp"
#include "lidit/lidit.h"

namespace fs = std::filesystem;

namespace {

int failures = 0, checks = 0;

#define CHECK(cond)                                                                  \
  do {                                                                               \
    ++checks;                                                                        \
    if (!(cond)) {                                                                   \
      ++failures;                                                                    \
      std::cerr << __FILE__ << ":" << __LINE__ << ": CHECK failed: " #cond << "\n"; \
    }                                                                                \
  } while (0)

// The status has `code`, a one-line message containing `needle`; frees it.
void expect_status(lidit_status* s, lidit_code code, const std::string& needle, int line) {
  ++checks;
  std::string msg = lidit_status_message(s);
  if (!s || lidit_status_code(s) != code || msg.find(needle) == std::string::npos || msg.find('\n') != std::string::npos ||
      msg.size() > 600) {
    ++failures;
    std::cerr << "line " << line << ": expected code " << code << " with '" << needle << "', got "
              << (s ? int(lidit_status_code(s)) : 0) << ": " << msg << "\n";
  }
  lidit_status_free(s);
}
#define EXPECT_STATUS(expr, code, needle) expect_status((expr), (code), (needle), __LINE__)

lidit_status* load(const std::string& dir, lidit_pipeline** p, const char* provider = "cpu") {
  lidit_load_options o;
  lidit_load_options_init(&o);
  o.build_dir = dir.c_str();
  o.provider = provider;
  return lidit_pipeline_load(&o, p);
}

fs::path temp_dir(const std::string& name) {
  fs::path d = fs::temp_directory_path() / ("lidit-tests-" + std::to_string(::getpid()) + "-" + name);
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

void write(const fs::path& p, const std::string& text) {
  std::ofstream f(p, std::ios::binary);
  f << text;
}

std::string read(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

uint32_t bits(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  return u;
}

void test_without_build() {
  // defaults
  lidit_load_options o;
  lidit_load_options_init(&o);
  CHECK(o.struct_size == sizeof o && o.verify_hashes == 1 && std::string(o.provider) == "cpu");
  lidit_generate_params g;
  lidit_generate_params_init(&g);
  CHECK(g.steps == -1 && g.cfg < 0 && g.height == -1 && g.width == -1 && g.progress == nullptr);
  CHECK(lidit_abi_version() == LIDIT_ABI_VERSION);
  CHECK(std::string(lidit_version()).find("ABI 1") != std::string::npos);
  // NULLs everywhere
  lidit_pipeline* p = nullptr;
  EXPECT_STATUS(lidit_pipeline_load(nullptr, &p), LIDIT_INVALID_ARGUMENT, "must not be NULL");
  EXPECT_STATUS(lidit_pipeline_load(&o, nullptr), LIDIT_INVALID_ARGUMENT, "must not be NULL");
  EXPECT_STATUS(lidit_pipeline_load(&o, &p), LIDIT_INVALID_ARGUMENT, "build_dir is not set");
  lidit_result* r = nullptr;
  EXPECT_STATUS(lidit_pipeline_generate(nullptr, &g, &r), LIDIT_INVALID_ARGUMENT, "must not be NULL");
  lidit_load_options raw{};  // not initialised
  raw.build_dir = "x";
  EXPECT_STATUS(lidit_pipeline_load(&raw, &p), LIDIT_INVALID_ARGUMENT, "struct_size");
  CHECK(lidit_status_code(nullptr) == LIDIT_OK && std::string(lidit_status_message(nullptr)).empty());
  lidit_status_free(nullptr);
  lidit_pipeline_free(nullptr);
  lidit_result_free(nullptr);
  lidit_cancel(nullptr);
  CHECK(lidit_result_image(nullptr, 0, nullptr, nullptr) == nullptr && lidit_result_image_count(nullptr) == 0);
  // missing and damaged folders
  EXPECT_STATUS(load("/nonexistent/lidit-build", &p), LIDIT_NOT_FOUND, "not found");
  fs::path d = temp_dir("damaged");
  EXPECT_STATUS(load(d.string(), &p), LIDIT_NOT_FOUND, "manifest.json not found");
  write(d / "manifest.json", "{\"format\": \"lidit-build/2\", ");
  EXPECT_STATUS(load(d.string(), &p), LIDIT_CORRUPT_ARTIFACT, "not valid JSON");
  write(d / "manifest.json", "[1, 2]");
  EXPECT_STATUS(load(d.string(), &p), LIDIT_CORRUPT_ARTIFACT, "JSON object");
  write(d / "manifest.json", "{\"format\": \"lidit-build/9\"}");
  EXPECT_STATUS(load(d.string(), &p), LIDIT_CORRUPT_ARTIFACT, "lidit-build/2");
  write(d / "manifest.json", "{\"format\": \"lidit-build/2\", \"model_name\": 3}");
  EXPECT_STATUS(load(d.string(), &p), LIDIT_CORRUPT_ARTIFACT, "model_name must be a string");
  fs::remove(d / "manifest.json");
  fs::create_directory(d / "manifest.json");
  EXPECT_STATUS(load(d.string(), &p), LIDIT_CORRUPT_ARTIFACT, "not a regular file");
  fs::remove_all(d);
  CHECK(p == nullptr);
  // the seed's noise: values of lidit_runtime.noise.gaussian, bit for bit
  float z[4];
  lidit_impl::gaussian(7, 12, 4, z);
  const uint32_t want[4] = {LIDIT_TEST_NOISE_7_12};
  for (int i = 0; i < 4; ++i) CHECK(bits(z[i]) == want[i]);
  lidit_impl::gaussian(UINT64_MAX, uint64_t(1) << 40, 4, z);
  const uint32_t want_max[4] = {LIDIT_TEST_NOISE_MAX_2_40};
  for (int i = 0; i < 4; ++i) CHECK(bits(z[i]) == want_max[i]);
  auto kat = lidit_impl::philox4x32({0, 0, 0, 0}, {0, 0});  // Random123's known answer
  CHECK(kat[0] == 0x6627e8d5u && kat[1] == 0xe169c58du && kat[2] == 0xbc57ac4cu && kat[3] == 0x9b00dbd8u);
}

// A copy of the build made of hard links (cheap), whose manifest the caller may edit.
fs::path linked_copy(const fs::path& build, const std::string& name) {
  fs::path d = temp_dir(name);
  for (auto& e : fs::recursive_directory_iterator(build)) {
    fs::path rel = fs::relative(e.path(), build);
    if (e.is_directory()) {
      fs::create_directories(d / rel);
    } else if (rel == "manifest.json") {
      fs::copy_file(e.path(), d / rel);
    } else {
      std::error_code ec;
      fs::create_hard_link(e.path(), d / rel, ec);
      if (ec) fs::copy_file(e.path(), d / rel);
    }
  }
  return d;
}

std::string replace_first(std::string s, const std::string& from, const std::string& to) {
  size_t pos = s.find(from);
  if (pos != std::string::npos) s.replace(pos, from.size(), to);
  return s;
}

struct Run {
  lidit_code code = LIDIT_OK;
  std::string message;
  std::vector<uint8_t> image;
  std::vector<int> progress;
};

Run generate(lidit_pipeline* p, const char* prompt, int steps, uint64_t seed, std::function<int(int, int)> on_step = nullptr,
             int height = -1, int width = -1, double cfg = -1.0) {
  Run run;
  const char* prompts[1] = {prompt};
  lidit_generate_params g;
  lidit_generate_params_init(&g);
  g.prompts = prompts;
  g.prompt_count = 1;
  g.steps = steps;
  g.seed = seed;
  g.height = height;
  g.width = width;
  g.cfg = cfg;
  struct Ctx {
    Run* run;
    std::function<int(int, int)>* fn;
  } ctx{&run, &on_step};
  g.progress = [](int step, int total, void* user) {
    auto* c = static_cast<Ctx*>(user);
    c->run->progress.push_back(step);
    return *c->fn ? (*c->fn)(step, total) : 0;
  };
  g.progress_user_data = &ctx;
  lidit_result* r = nullptr;
  lidit_status* s = lidit_pipeline_generate(p, &g, &r);
  if (s) {
    run.code = lidit_status_code(s);
    run.message = lidit_status_message(s);
    lidit_status_free(s);
    return run;
  }
  int h = 0, w = 0;
  const uint8_t* data = lidit_result_image(r, 0, &h, &w);
  run.image.assign(data, data + size_t(h) * size_t(w) * 3);
  lidit_result_free(r);
  return run;
}

void test_with_build(const fs::path& build) {
  lidit_pipeline* p = nullptr;
  lidit_status* s = load(build.string(), &p);
  if (s) {
    std::cerr << "cannot load " << build << ": " << lidit_status_message(s) << "\n";
    lidit_status_free(s);
    ++failures;
    return;
  }
  // determinism and progress: once per step, 1..steps
  Run a = generate(p, "a red circle", 3, 5), b = generate(p, "a red circle", 3, 5);
  CHECK(a.code == LIDIT_OK && !a.image.empty() && a.image == b.image);
  CHECK((a.progress == std::vector<int>{1, 2, 3}));
  // request refusals
  Run r = generate(p, "a cat", 0, 0);
  CHECK(r.code == LIDIT_INVALID_ARGUMENT && r.message.find("steps=0") != std::string::npos);
  r = generate(p, "a cat", 1001, 0);
  CHECK(r.code == LIDIT_INVALID_ARGUMENT);
  r = generate(p, "a cat", 2, 0, nullptr, 65, 64);
  CHECK(r.code == LIDIT_INVALID_ARGUMENT && r.message.find("not supported") != std::string::npos);
  r = generate(p, "a cat", 2, 0, nullptr, 64 * 64, 64);
  CHECK(r.code == LIDIT_INVALID_ARGUMENT && r.message.find("largest side") != std::string::npos);
  r = generate(p, "a cat", 2, 0, nullptr, -1, -1, NAN);
  CHECK(r.code == LIDIT_INVALID_ARGUMENT && r.message.find("cfg") != std::string::npos);
  r = generate(p, "a cat", 2, 0, nullptr, -1, -1, 101.0);
  CHECK(r.code == LIDIT_INVALID_ARGUMENT);
  r = generate(p, "bad \xff utf-8", 2, 0);
  CHECK(r.code == LIDIT_INVALID_ARGUMENT && r.message.find("UTF-8") != std::string::npos);
  {
    lidit_generate_params g;
    lidit_generate_params_init(&g);
    lidit_result* out = nullptr;
    EXPECT_STATUS(lidit_pipeline_generate(p, &g, &out), LIDIT_INVALID_ARGUMENT, "no prompt");
    const char* prompts[2] = {"a cat", nullptr};
    g.prompts = prompts;
    g.prompt_count = 2;
    EXPECT_STATUS(lidit_pipeline_generate(p, &g, &out), LIDIT_INVALID_ARGUMENT, "prompts[1] is NULL");
  }
  // cancelled by the callback at step 2, then the pipeline draws the same image as before
  r = generate(p, "a red circle", 3, 5, [](int step, int) { return step == 2 ? 1 : 0; });
  CHECK(r.code == LIDIT_CANCELLED && (r.progress == std::vector<int>{1, 2}));
  CHECK(generate(p, "a red circle", 3, 5).image == a.image);
  // cancelled from another thread after the first step: at most one more step is reported
  {
    std::mutex m;
    std::condition_variable cv;
    bool first = false;
    std::atomic<int> after_cancel{0};
    std::atomic<bool> cancelled{false};
    Run result;
    std::thread worker([&] {
      result = generate(p, "a blue square", 20, 1, [&](int step, int) {
        if (cancelled) ++after_cancel;
        if (step == 1) {
          std::lock_guard<std::mutex> lock(m);
          first = true;
          cv.notify_all();
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        return 0;
      });
    });
    {
      std::unique_lock<std::mutex> lock(m);
      cv.wait(lock, [&] { return first; });
    }
    cancelled = true;
    lidit_cancel(p);
    worker.join();
    CHECK(result.code == LIDIT_CANCELLED);
    CHECK(after_cancel <= 1 && result.progress.size() < 20);
    CHECK(generate(p, "a red circle", 3, 5).image == a.image);  // usable after, later calls unaffected
  }
  // concurrent generate on one pipeline: each equals its result alone
  {
    std::vector<Run> alone(4), together(4);
    const char* prompts[4] = {"a red circle", "a green star", "two blue squares", "a cat"};
    for (int i = 0; i < 4; ++i) alone[i] = generate(p, prompts[i], 3, uint64_t(i));
    std::vector<std::thread> threads;
    for (int i = 0; i < 4; ++i) threads.emplace_back([&, i] { together[i] = generate(p, prompts[i], 3, uint64_t(i)); });
    for (auto& t : threads) t.join();
    for (int i = 0; i < 4; ++i) CHECK(together[i].code == LIDIT_OK && together[i].image == alone[i].image);
  }
  // providers this ONNX Runtime lacks, and names it does not know
  lidit_pipeline* q = nullptr;
  EXPECT_STATUS(load(build.string(), &q, "cuda"), LIDIT_UNSUPPORTED, "is not in this ONNX Runtime");
  EXPECT_STATUS(load(build.string(), &q, "no-such-provider"), LIDIT_UNSUPPORTED, "is not in this ONNX Runtime");
  lidit_pipeline_free(p);

  // damaged copies of the build
  std::string manifest = read(build / "manifest.json");
  size_t at = manifest.find("\"sha256\": \"");
  CHECK(at != std::string::npos);
  std::string digest = manifest.substr(at + 11, 64);
  std::string zeros(64, '0');
  struct Case {
    std::string name, manifest;
    lidit_code code;
    std::string needle;
  };
  std::string graph_file;
  {
    size_t f = manifest.find("\"file\": \"", manifest.find("\"components\""));
    graph_file = manifest.substr(f + 9, manifest.find('"', f + 9) - f - 9);
  }
  std::vector<Case> cases = {
      {"hash", replace_first(manifest, digest, zeros), LIDIT_CORRUPT_ARTIFACT, "does not match its manifest hash"},
      {"escape", replace_first(manifest, "\"file\": \"" + graph_file, "\"file\": \"../" + graph_file),
       LIDIT_CORRUPT_ARTIFACT, "not a path inside"},
      {"absolute", replace_first(manifest, "\"file\": \"" + graph_file, "\"file\": \"/etc/passwd"), LIDIT_CORRUPT_ARTIFACT,
       "not a path inside"},
      {"truncated", manifest.substr(0, manifest.size() / 2), LIDIT_CORRUPT_ARTIFACT, "not valid JSON"},
      {"unknown-field", replace_first(manifest, "{", "{\"surprise\": 1, "), LIDIT_CORRUPT_ARTIFACT, "unknown field"},
      {"missing", replace_first(manifest, "\"file\": \"" + graph_file, "\"file\": \"graphs/none.onnx"), LIDIT_NOT_FOUND,
       "is missing"},
  };
  for (auto& c : cases) {
    fs::path d = linked_copy(build, c.name);
    write(d / "manifest.json", c.manifest);
    EXPECT_STATUS(load(d.string(), &q), c.code, c.needle);
    fs::remove_all(d);
  }
  {  // a graph replaced by a link out of the build folder
    fs::path d = linked_copy(build, "link-out");
    fs::path outside = temp_dir("outside");
    fs::copy_file(build / graph_file, outside / "g.onnx");
    fs::remove(d / graph_file);
    fs::create_symlink(outside / "g.onnx", d / graph_file);
    EXPECT_STATUS(load(d.string(), &q), LIDIT_CORRUPT_ARTIFACT, "resolves outside");
    fs::remove_all(d);
    fs::remove_all(outside);
  }
  {  // a graph cut short, hashes off: ONNX Runtime's refusal comes back as a status
    fs::path d = linked_copy(build, "cut");
    std::string bytes = read(build / graph_file);
    fs::remove(d / graph_file);
    write(d / graph_file, bytes.substr(0, bytes.size() / 3));
    lidit_load_options o;
    lidit_load_options_init(&o);
    std::string dir = d.string();
    o.build_dir = dir.c_str();
    o.verify_hashes = 0;
    EXPECT_STATUS(lidit_pipeline_load(&o, &q), LIDIT_CORRUPT_ARTIFACT, "ONNX Runtime cannot load");
    o.verify_hashes = 1;
    EXPECT_STATUS(lidit_pipeline_load(&o, &q), LIDIT_CORRUPT_ARTIFACT, "does not match its manifest hash");
    fs::remove_all(d);
  }
  CHECK(q == nullptr);
}

}  // namespace

int main() {
  test_without_build();
  const char* build = std::getenv("LIDIT_TEST_BUILD");
  if (build && *build) test_with_build(build);
  std::cout << checks << " checks, " << failures << " failed"
            << (build && *build ? "" : " (LIDIT_TEST_BUILD unset: the cases on a real build were skipped)") << "\n";
  return failures ? 1 : 0;
}
