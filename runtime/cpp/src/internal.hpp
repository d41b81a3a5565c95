// Internal declarations of liblidit: errors, the manifest, the tokenizer, noise, the sampler and the chain.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "lidit/lidit.h"

namespace lidit_impl {

// Every failure inside the library is an Error; the C boundary turns it into a lidit_status.
struct Error : std::runtime_error {
  lidit_code code;
  Error(lidit_code c, const std::string& message) : std::runtime_error(message), code(c) {}
};

[[noreturn]] inline void fail(lidit_code code, const std::string& message) { throw Error(code, message); }

// ---- files -------------------------------------------------------------------------------------------
// The regular file `rel` names inside `root` (relative, no "..", links resolved and still inside, a regular
// file), else an Error naming `what`.
std::string build_file(const std::string& root, const std::string& rel, const std::string& what);
std::string read_file(const std::string& path, size_t max_bytes, const std::string& what);
std::string file_sha256(const std::string& path);

// ---- manifest ----------------------------------------------------------------------------------------
struct TensorSpec {
  std::string name, dtype;
};

struct ComponentRecord {
  std::string name, file, sha256, precision, ort_optimization = "all";
  std::vector<TensorSpec> inputs, outputs;
  std::map<std::string, std::array<int64_t, 3>> dims;
  std::optional<std::string> data_file, data_sha256, weights;
  bool has_input(const std::string& n) const {
    for (auto& t : inputs)
      if (t.name == n) return true;
    return false;
  }
};

struct EncoderRecord {
  std::string tokenizer_file, tokenizer_sha256, prefix_text, suffix_text, caption_separator;
  int max_length = 0, pad_token_id = 0, prefix_length = 0;
  bool prefix_cached = false, whole_text = false;
  std::optional<std::string> negative_prefix_text;
};

struct SchedulerConfig {
  std::string sampler = "dpmpp_2m", prediction = "epsilon";
  int num_train_timesteps = 1000;
  double beta_start = 0.0001, beta_end = 0.02;
  std::string timestep_spacing = "trailing";
  double flow_shift = 1.0;
  bool dynamic_shift = false;
  int base_seq_len = 256, max_seq_len = 4096;
  double base_shift = 0.5, max_shift = 1.15;
  std::string shift_seq_len = "patches", sigma_precision = "float64";
  int default_steps = 20;
  double default_cfg = 5.0;
};

struct GuidanceRule {
  double scale_offset = 0.0;
  std::string applies = "not_one", truncation = "none";
  double default_truncation = 1.0;
  std::string renorm = "none", renorm_axes = "sample";
  double default_normalization = 0.0;
  bool guided(double cfg) const {
    double s = cfg + scale_offset;
    return applies == "not_one" ? s != 1.0 : s > 1.0;
  }
  bool truncated(double threshold, int step, int steps, double sigma) const {
    if (truncation == "sigma") return threshold <= 1.0 && 1.0 - sigma > threshold;
    if (truncation == "step") return double(step + 1) / steps > threshold;
    return false;
  }
};

struct ChainRecord {
  std::string family = "lidit";
  bool refiner_timestep = true;
  double timestep_offset = 0.0, timestep_scale = 1.0, output_scale = 1.0, latent_scale = 1.0, latent_shift = 0.0;
  GuidanceRule guidance;
};

struct Manifest {
  std::string model_name;
  int latent_channels = 0, vae_scale_factor = 0, patch_size = 0, default_height = 0, default_width = 0;
  SchedulerConfig scheduler;
  std::vector<EncoderRecord> encoders;
  std::map<std::string, ComponentRecord> components;
  ChainRecord chain;
  std::vector<std::array<std::string, 3>> files;  // (what, relative path, sha256) of every named file
};

constexpr const char* kFormat = "lidit-build/2";
// Reads, validates and (verify) hashes BUILD/manifest.json and every file it names.
Manifest load_manifest(const std::string& build_dir, bool verify);

// ---- tokenizer ---------------------------------------------------------------------------------------
class BpeTokenizer;  // a tokenizer.json interpreter (byte-level / metaspace BPE)
std::shared_ptr<BpeTokenizer> load_tokenizer(const std::string& path);
// ids of text; special: add the post-processor's special tokens (HF `add_special_tokens=True`);
// truncate_to > 0: truncate the content so that the total (specials included) fits, as HF truncation does.
std::vector<int64_t> tokenize(const BpeTokenizer& tok, const std::string& text, bool special, int truncate_to = 0);

struct PromptTokenizer {
  std::shared_ptr<BpeTokenizer> tok;
  EncoderRecord rec;
  std::vector<int64_t> prefix_ids, suffix_ids;
  int caption_room = 0;
  PromptTokenizer(std::shared_ptr<BpeTokenizer> t, const EncoderRecord& r);
  std::vector<int64_t> row(const std::string& caption, bool negative) const;
};

// ---- noise and sampler -------------------------------------------------------------------------------
std::array<uint32_t, 4> philox4x32(std::array<uint32_t, 4> counter, std::array<uint32_t, 2> key);
void gaussian(uint64_t seed, uint64_t start, size_t count, float* out);

struct SamplingPlan {
  std::vector<double> timesteps;
  std::vector<std::array<double, 5>> coefficients;  // p_x, p_m, q_x, q_d, q_prev
};
SamplingPlan make_plan(const SchedulerConfig& config, int steps, const std::array<int64_t, 4>& latent_shape,
                       int patch_size);

}  // namespace lidit_impl
