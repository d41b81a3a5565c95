// C++17 wrappers of liblidit's C API: RAII handles and exceptions that carry the status's code and message.
//
//   lidit::Pipeline pipe = lidit::Pipeline::load("build/mini-fp8");
//   lidit::Result r = pipe.generate({"a red circle to the left of a blue square"}, [](int step, int steps) {
//     return true;  // false cancels
//   });
//   r.image(0);  // uint8 height x width x 3
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "lidit/lidit.h"

namespace lidit {

class Error : public std::runtime_error {
 public:
  Error(lidit_code code, const std::string& message) : std::runtime_error(message), code_(code) {}
  lidit_code code() const noexcept { return code_; }

 private:
  lidit_code code_;
};

namespace detail {
inline void check(lidit_status* status) {
  if (!status) return;
  std::unique_ptr<lidit_status, void (*)(lidit_status*)> owned(status, lidit_status_free);
  throw Error(lidit_status_code(status), lidit_status_message(status));
}
}  // namespace detail

struct LoadOptions {
  std::string build_dir;
  std::string provider = "cpu";
  std::map<std::string, std::string> provider_options;
  int intra_op_threads = 0;
  bool verify_hashes = true;
  std::string onnxruntime_library;  // empty: $LIDIT_ONNXRUNTIME_LIBRARY or the library found at build time
};

struct Request {
  std::vector<std::string> prompts;
  std::string negative_prompt;
  std::optional<int> steps;
  std::optional<double> cfg;
  uint64_t seed = 0;
  std::vector<uint64_t> seeds;  // empty, or one per prompt
  std::optional<int> height, width;
  std::optional<double> cfg_truncation, cfg_normalization;
};

struct Image {
  const uint8_t* data;
  int height, width;
};

class Result {
 public:
  explicit Result(lidit_result* r) : r_(r, lidit_result_free) {}
  size_t size() const { return lidit_result_image_count(r_.get()); }
  Image image(size_t i) const {
    Image im{nullptr, 0, 0};
    im.data = lidit_result_image(r_.get(), i, &im.height, &im.width);
    if (!im.data) throw Error(LIDIT_INVALID_ARGUMENT, "image index " + std::to_string(i) + " is out of range");
    return im;
  }
  std::vector<float> latents(std::vector<int64_t>* shape = nullptr) const {
    int64_t s[4];
    const float* p = lidit_result_latents(r_.get(), s);
    if (shape) shape->assign(s, s + 4);
    return std::vector<float>(p, p + s[0] * s[1] * s[2] * s[3]);
  }
  std::vector<std::pair<std::string, double>> timings() const {
    const char* const* names = nullptr;
    const double* values = nullptr;
    size_t n = lidit_result_timings(r_.get(), &names, &values);
    std::vector<std::pair<std::string, double>> out;
    for (size_t i = 0; i < n; ++i) out.emplace_back(names[i], values[i]);
    return out;
  }

 private:
  std::unique_ptr<lidit_result, void (*)(lidit_result*)> r_;
};

class Pipeline {
 public:
  // Progress: called after every step; return false to cancel (generate then throws Error{LIDIT_CANCELLED}).
  using Progress = std::function<bool(int step, int steps)>;

  static Pipeline load(const LoadOptions& o) {
    lidit_load_options c;
    lidit_load_options_init(&c);
    c.build_dir = o.build_dir.c_str();
    c.provider = o.provider.c_str();
    std::vector<const char*> keys, values;
    for (auto& [k, v] : o.provider_options) {
      keys.push_back(k.c_str());
      values.push_back(v.c_str());
    }
    c.provider_option_keys = keys.data();
    c.provider_option_values = values.data();
    c.provider_option_count = keys.size();
    c.intra_op_threads = o.intra_op_threads;
    c.verify_hashes = o.verify_hashes ? 1 : 0;
    c.onnxruntime_library = o.onnxruntime_library.empty() ? nullptr : o.onnxruntime_library.c_str();
    lidit_pipeline* p = nullptr;
    detail::check(lidit_pipeline_load(&c, &p));
    return Pipeline(p);
  }
  static Pipeline load(const std::string& build_dir) {
    LoadOptions o;
    o.build_dir = build_dir;
    return load(o);
  }

  Result generate(const Request& r, Progress progress = nullptr) {
    std::vector<const char*> prompts;
    for (auto& p : r.prompts) prompts.push_back(p.c_str());
    lidit_generate_params c;
    lidit_generate_params_init(&c);
    c.prompts = prompts.data();
    c.prompt_count = prompts.size();
    c.negative_prompt = r.negative_prompt.c_str();
    if (r.steps) c.steps = *r.steps;
    if (r.cfg) c.cfg = *r.cfg;
    c.seed = r.seed;
    if (!r.seeds.empty()) {
      if (r.seeds.size() != r.prompts.size())
        throw Error(LIDIT_INVALID_ARGUMENT, "seeds must hold one seed per prompt");
      c.seeds = r.seeds.data();
    }
    if (r.height) c.height = *r.height;
    if (r.width) c.width = *r.width;
    if (r.cfg_truncation) c.cfg_truncation = *r.cfg_truncation;
    if (r.cfg_normalization) c.cfg_normalization = *r.cfg_normalization;
    if (progress) {
      c.progress = [](int step, int steps, void* user) -> int {
        try {
          return (*static_cast<Progress*>(user))(step, steps) ? 0 : 1;
        } catch (...) {
          return 1;  // an exception must not cross the C library: it cancels the call
        }
      };
      c.progress_user_data = &progress;
    }
    lidit_result* out = nullptr;
    detail::check(lidit_pipeline_generate(p_.get(), &c, &out));
    return Result(out);
  }

  void cancel() { lidit_cancel(p_.get()); }
  lidit_pipeline* get() const { return p_.get(); }

 private:
  explicit Pipeline(lidit_pipeline* p) : p_(p, lidit_pipeline_free) {}
  std::unique_ptr<lidit_pipeline, void (*)(lidit_pipeline*)> p_;
};

inline std::string version() { return lidit_version(); }

}  // namespace lidit
