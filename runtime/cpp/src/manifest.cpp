// BUILD/manifest.json, read and checked as lidit_runtime/manifest.py does: typed fields, unknown fields
// refused, paths inside the build folder, every named file a regular file there and (verify) its sha256.
#include <dirent.h>
#include <openssl/evp.h>
#include <sys/stat.h>

#include <climits>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "internal.hpp"

namespace lidit_impl {

using json = nlohmann::json;

namespace {
const std::string kRebuild = "rebuild with `lidit-export build`";

std::string real_path(const std::string& p) {
  char buf[PATH_MAX];
  if (!realpath(p.c_str(), buf)) return "";
  return buf;
}

bool inside(const std::string& root, const std::string& path) {
  return path.size() > root.size() && path.compare(0, root.size(), root) == 0 && path[root.size()] == '/';
}

[[noreturn]] void bad(const std::string& message) {
  fail(LIDIT_CORRUPT_ARTIFACT, "manifest.json: " + message + "; the build is damaged or from another tool: " + kRebuild);
}

// Typed access to one JSON object, refusing unknown fields and wrong types with the field's path.
class Fields {
 public:
  Fields(const json& j, std::string where, std::set<std::string> known) : j_(j), where_(std::move(where)) {
    if (!j.is_object()) bad(where_ + " must be a JSON object");
    for (auto& [k, v] : j.items())
      if (!known.count(k)) bad(where_ + " has unknown field '" + k + "'");
  }
  bool has(const std::string& k) const { return j_.contains(k) && !j_.at(k).is_null(); }
  const json& at(const std::string& k) const {
    if (!j_.contains(k)) bad(where_ + " is missing required field '" + k + "'");
    return j_.at(k);
  }
  std::string str(const std::string& k) const {
    if (!at(k).is_string()) bad(where_ + "." + k + " must be a string");
    return at(k).get<std::string>();
  }
  std::string str(const std::string& k, const std::string& dflt) const { return j_.contains(k) ? str(k) : dflt; }
  int64_t integer(const std::string& k) const {
    const json& v = at(k);
    if (!v.is_number_integer()) bad(where_ + "." + k + " must be an integer");
    return v.get<int64_t>();
  }
  int integer(const std::string& k, int dflt) const {
    if (!j_.contains(k)) return dflt;
    int64_t v = integer(k);
    if (v < INT_MIN || v > INT_MAX) bad(where_ + "." + k + " is out of range");
    return int(v);
  }
  double number(const std::string& k, double dflt) const {
    if (!j_.contains(k)) return dflt;
    const json& v = j_.at(k);
    if (!v.is_number() || !std::isfinite(v.get<double>())) bad(where_ + "." + k + " must be a finite number");
    return v.get<double>();
  }
  bool boolean(const std::string& k, bool dflt) const {
    if (!j_.contains(k)) return dflt;
    if (!j_.at(k).is_boolean()) bad(where_ + "." + k + " must be true or false");
    return j_.at(k).get<bool>();
  }
  std::optional<std::string> opt_str(const std::string& k) const {
    if (!has(k)) return std::nullopt;
    return str(k);
  }

 private:
  const json& j_;
  std::string where_;
};

void check_one_of(const std::string& value, std::initializer_list<const char*> allowed, const std::string& where) {
  for (auto a : allowed)
    if (value == a) return;
  bad(where + "='" + value + "' is not an allowed value");
}

void check_digest(const std::string& d, const std::string& where) {
  if (d.size() != 64 || d.find_first_not_of("0123456789abcdef") != std::string::npos)
    bad(where + " is not a sha256 hex digest");
}

SchedulerConfig read_scheduler(const json& j) {
  Fields f(j, "scheduler", {"sampler", "prediction", "num_train_timesteps", "beta_start", "beta_end", "timestep_spacing",
                            "flow_shift", "dynamic_shift", "base_seq_len", "max_seq_len", "base_shift", "max_shift",
                            "shift_seq_len", "sigma_precision", "default_steps", "default_cfg"});
  SchedulerConfig s;
  s.sampler = f.str("sampler", s.sampler);
  s.prediction = f.str("prediction", s.prediction);
  s.num_train_timesteps = f.integer("num_train_timesteps", s.num_train_timesteps);
  s.beta_start = f.number("beta_start", s.beta_start);
  s.beta_end = f.number("beta_end", s.beta_end);
  s.timestep_spacing = f.str("timestep_spacing", s.timestep_spacing);
  s.flow_shift = f.number("flow_shift", s.flow_shift);
  s.dynamic_shift = f.boolean("dynamic_shift", s.dynamic_shift);
  s.base_seq_len = f.integer("base_seq_len", s.base_seq_len);
  s.max_seq_len = f.integer("max_seq_len", s.max_seq_len);
  s.base_shift = f.number("base_shift", s.base_shift);
  s.max_shift = f.number("max_shift", s.max_shift);
  s.shift_seq_len = f.str("shift_seq_len", s.shift_seq_len);
  s.sigma_precision = f.str("sigma_precision", s.sigma_precision);
  s.default_steps = f.integer("default_steps", s.default_steps);
  s.default_cfg = f.number("default_cfg", s.default_cfg);
  check_one_of(s.sampler, {"dpmpp_2m", "ddim", "flow_euler"}, "scheduler.sampler");
  check_one_of(s.timestep_spacing, {"trailing", "linspace", "leading"}, "scheduler.timestep_spacing");
  check_one_of(s.shift_seq_len, {"patches", "channels"}, "scheduler.shift_seq_len");
  check_one_of(s.sigma_precision, {"float32", "float64"}, "scheduler.sigma_precision");
  if ((s.sampler == "flow_euler") != (s.prediction == "velocity")) bad("scheduler.prediction does not fit the sampler");
  if (!(0 < s.beta_start && s.beta_start < s.beta_end && s.beta_end < 1)) bad("scheduler betas must satisfy 0 < start < end < 1");
  if (s.num_train_timesteps < 2 || s.flow_shift <= 0) bad("scheduler.num_train_timesteps must be >= 2 and flow_shift > 0");
  if (s.dynamic_shift && !(0 < s.base_seq_len && s.base_seq_len < s.max_seq_len)) bad("scheduler dynamic shift lengths");
  if (s.default_steps < 1 || s.default_steps > s.num_train_timesteps || s.default_cfg < 0 || s.default_cfg > 100)
    bad("scheduler defaults out of range");
  return s;
}

ChainRecord read_chain(const json& j) {
  Fields f(j, "chain", {"family", "refiner_timestep", "timestep_offset", "timestep_scale", "output_scale", "latent_scale",
                        "latent_shift", "guidance"});
  ChainRecord c;
  c.family = f.str("family", c.family);
  c.refiner_timestep = f.boolean("refiner_timestep", c.refiner_timestep);
  c.timestep_offset = f.number("timestep_offset", c.timestep_offset);
  c.timestep_scale = f.number("timestep_scale", c.timestep_scale);
  c.output_scale = f.number("output_scale", c.output_scale);
  c.latent_scale = f.number("latent_scale", c.latent_scale);
  c.latent_shift = f.number("latent_shift", c.latent_shift);
  if (c.latent_scale == 0 || c.timestep_scale == 0 || c.output_scale == 0)
    bad("chain.latent_scale, timestep_scale and output_scale must be non-zero");
  if (j.contains("guidance")) {
    Fields g(j.at("guidance"), "chain.guidance", {"scale_offset", "applies", "truncation", "default_truncation", "renorm",
                                                  "renorm_axes", "default_normalization"});
    auto& r = c.guidance;
    r.scale_offset = g.number("scale_offset", r.scale_offset);
    r.applies = g.str("applies", r.applies);
    r.truncation = g.str("truncation", r.truncation);
    r.default_truncation = g.number("default_truncation", r.default_truncation);
    r.renorm = g.str("renorm", r.renorm);
    r.renorm_axes = g.str("renorm_axes", r.renorm_axes);
    r.default_normalization = g.number("default_normalization", r.default_normalization);
    check_one_of(r.applies, {"not_one", "above_one"}, "chain.guidance.applies");
    check_one_of(r.truncation, {"none", "sigma", "step"}, "chain.guidance.truncation");
    check_one_of(r.renorm, {"none", "clamp", "match"}, "chain.guidance.renorm");
    check_one_of(r.renorm_axes, {"sample", "last"}, "chain.guidance.renorm_axes");
  }
  return c;
}

std::vector<TensorSpec> read_tensors(const json& j, const std::string& where) {
  if (!j.is_array()) bad(where + " must be a list");
  std::vector<TensorSpec> out;
  for (size_t i = 0; i < j.size(); ++i) {
    const json& t = j[i];
    if (!t.is_object() || !t.contains("name") || !t["name"].is_string() || !t.contains("dtype") ||
        !t["dtype"].is_string() || !t.contains("shape") || !t["shape"].is_array())
      bad(where + "[" + std::to_string(i) + "] must be an object with name, dtype and shape");
    out.push_back({t["name"], t["dtype"]});
  }
  return out;
}
}  // namespace

std::string read_file(const std::string& path, size_t max_bytes, const std::string& what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(LIDIT_NOT_FOUND, what + " " + path + " cannot be opened");
  std::string data;
  char buf[1 << 16];
  while (in.read(buf, sizeof buf) || in.gcount() > 0) {
    data.append(buf, size_t(in.gcount()));
    if (data.size() > max_bytes)
      fail(LIDIT_CORRUPT_ARTIFACT, what + " " + path + " is over " + std::to_string(max_bytes) + " bytes; " + kRebuild);
  }
  return data;
}

std::string file_sha256(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(LIDIT_NOT_FOUND, path + " cannot be opened");
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  if (!ctx) throw std::bad_alloc();
  EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
  std::vector<char> buf(1 << 20);
  while (in.read(buf.data(), std::streamsize(buf.size())) || in.gcount() > 0)
    EVP_DigestUpdate(ctx, buf.data(), size_t(in.gcount()));
  unsigned char md[32];
  unsigned int n = 0;
  EVP_DigestFinal_ex(ctx, md, &n);
  EVP_MD_CTX_free(ctx);
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < n; ++i) {
    out += hex[md[i] >> 4];
    out += hex[md[i] & 15];
  }
  return out;
}

std::string build_file(const std::string& build_dir, const std::string& rel, const std::string& what) {
  std::string root = real_path(build_dir);
  bool dotdot = rel == ".." || rel.rfind("../", 0) == 0 || rel.find("/../") != std::string::npos ||
                (rel.size() >= 3 && rel.compare(rel.size() - 3, 3, "/..") == 0);
  if (rel.empty() || rel[0] == '/' || rel.find('\\') != std::string::npos || dotdot || rel.find('\0') != std::string::npos)
    fail(LIDIT_CORRUPT_ARTIFACT, what + " path '" + rel + "' in manifest.json is not a path inside " + build_dir +
                                     "; it was edited or made by another tool: " + kRebuild);
  std::string joined = root + "/" + rel;
  struct stat st;
  if (lstat(joined.c_str(), &st) != 0 && stat(joined.c_str(), &st) != 0)
    fail(LIDIT_NOT_FOUND, what + " " + rel + " is missing (named in manifest.json, looked for in " + build_dir + "); " +
                              kRebuild);
  std::string path = real_path(joined);
  if (path.empty())
    fail(LIDIT_NOT_FOUND, what + " " + rel + " is a broken link (named in manifest.json, in " + build_dir + "); " + kRebuild);
  if (!inside(root, path))
    fail(LIDIT_CORRUPT_ARTIFACT, what + " " + rel + " resolves outside " + build_dir + " (to " + path +
                                     "); refusing to read it: replace the link with the file itself or " + kRebuild);
  if (stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode))
    fail(LIDIT_CORRUPT_ARTIFACT, what + " " + rel + " is not a regular file (a folder, FIFO or device); refusing to read "
                                     "it: " + kRebuild);
  return path;
}

Manifest load_manifest(const std::string& build_dir, bool verify) {
  struct stat st;
  if (stat(build_dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    fail(LIDIT_NOT_FOUND, "build folder " + build_dir + " not found (or not a folder); create it with `lidit-export "
                          "build --model DIR --out " + build_dir + "`");
  std::string mpath = build_dir + "/manifest.json";
  if (stat(mpath.c_str(), &st) != 0)
    fail(LIDIT_NOT_FOUND, mpath + " not found; create the build with `lidit-export build --model DIR --out " + build_dir + "`");
  std::string text = read_file(build_file(build_dir, "manifest.json", "manifest"), size_t(16) << 20, "manifest");
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    std::string what = e.what();
    fail(LIDIT_CORRUPT_ARTIFACT, mpath + " is not valid JSON (" + what.substr(0, 100) + "); " + kRebuild);
  }
  if (!j.is_object()) fail(LIDIT_CORRUPT_ARTIFACT, mpath + " does not hold a JSON object; " + kRebuild);
  if (!j.contains("format") || j["format"] != kFormat)
    fail(LIDIT_CORRUPT_ARTIFACT, mpath + " has format " + (j.contains("format") ? j["format"].dump() : "none") +
                                     ", liblidit reads \"" + kFormat + "\"; rebuild with the matching lidit-export version");
  Fields f(j, "manifest", {"format", "model_name", "latent_channels", "vae_scale_factor", "patch_size", "default_height",
                           "default_width", "scheduler", "encoders", "components", "tool_versions", "engines", "chain"});
  Manifest m;
  m.model_name = f.str("model_name");
  auto positive = [&](const char* k) {
    int64_t v = f.integer(k);
    if (v < 1 || v > (1 << 20)) bad(std::string(k) + "=" + std::to_string(v) + " must be between 1 and 2^20");
    return int(v);
  };
  m.latent_channels = positive("latent_channels");
  m.vae_scale_factor = positive("vae_scale_factor");
  m.patch_size = positive("patch_size");
  m.default_height = positive("default_height");
  m.default_width = positive("default_width");
  int step = m.vae_scale_factor * m.patch_size;
  if (m.default_height % step || m.default_width % step) bad("default size is not a multiple of " + std::to_string(step));
  m.scheduler = read_scheduler(f.at("scheduler"));
  if (f.has("chain")) m.chain = read_chain(f.at("chain"));
  const json& encs = f.at("encoders");
  if (!encs.is_array() || encs.empty()) bad("encoders must be a non-empty list");
  for (size_t i = 0; i < encs.size(); ++i) {
    std::string where = "encoders[" + std::to_string(i) + "]";
    Fields e(encs[i], where, {"tokenizer_file", "tokenizer_sha256", "prefix_text", "suffix_text", "caption_separator",
                              "max_length", "pad_token_id", "prefix_length", "prefix_cached", "whole_text",
                              "negative_prefix_text"});
    EncoderRecord r;
    r.tokenizer_file = e.str("tokenizer_file");
    r.tokenizer_sha256 = e.str("tokenizer_sha256");
    r.prefix_text = e.str("prefix_text");
    r.suffix_text = e.str("suffix_text");
    r.caption_separator = e.str("caption_separator");
    int64_t ml = e.integer("max_length"), pad = e.integer("pad_token_id"), pl = e.integer("prefix_length");
    if (ml < 2 || ml > 1 << 20 || pl < 0 || pl >= ml || pad < 0 || pad > INT_MAX)
      bad(where + ": max_length, prefix_length and pad_token_id must satisfy 0 <= prefix_length < max_length and "
                  "pad_token_id >= 0");
    r.max_length = int(ml);
    r.pad_token_id = int(pad);
    r.prefix_length = int(pl);
    r.prefix_cached = e.boolean("prefix_cached", false);
    r.whole_text = e.boolean("whole_text", false);
    r.negative_prefix_text = e.opt_str("negative_prefix_text");
    check_digest(r.tokenizer_sha256, where + ".tokenizer_sha256");
    if (r.prefix_cached && (r.whole_text || r.negative_prefix_text))
      bad(where + ": a cached prefix needs the prefix tokenized apart and shared by every prompt");
    m.files.push_back({"tokenizer of encoder " + std::to_string(i), r.tokenizer_file, r.tokenizer_sha256});
    m.encoders.push_back(r);
  }
  const json& comps = f.at("components");
  if (!comps.is_object()) bad("components must be an object");
  std::set<std::string> expected = {"refiner", "dit", "vae_decoder"};
  for (size_t i = 0; i < m.encoders.size(); ++i) expected.insert("encoder_" + std::to_string(i));
  std::set<std::string> present;
  for (auto& [k, v] : comps.items()) present.insert(k);
  if (present != expected) bad("components must be exactly the encoders, refiner, dit and vae_decoder");
  for (auto& [key, value] : comps.items()) {
    std::string where = "components." + key;
    Fields c(value, where, {"name", "file", "sha256", "precision", "inputs", "outputs", "dims", "derived_dims", "input_key",
                            "ort_optimization", "data_file", "data_sha256", "weights"});
    ComponentRecord r;
    r.name = c.str("name");
    if (r.name != key) bad(where + ".name is '" + r.name + "'");
    r.file = c.str("file");
    r.sha256 = c.str("sha256");
    r.precision = c.str("precision");
    r.ort_optimization = c.str("ort_optimization", "all");
    check_one_of(r.ort_optimization, {"disable", "basic", "extended", "all"}, where + ".ort_optimization");
    check_digest(r.sha256, where + ".sha256");
    r.inputs = read_tensors(c.at("inputs"), where + ".inputs");
    r.outputs = read_tensors(c.at("outputs"), where + ".outputs");
    r.data_file = c.opt_str("data_file");
    r.data_sha256 = c.opt_str("data_sha256");
    r.weights = c.opt_str("weights");  // block-quantized weights: ONNX Runtime's own operators, run like any graph
    if (r.weights) check_one_of(*r.weights, {"int8", "int4"}, where + ".weights");
    if (bool(r.data_file) != bool(r.data_sha256)) bad(where + ": data_file and data_sha256 go together");
    const json& dims = c.at("dims");
    if (!dims.is_object()) bad(where + ".dims must be an object");
    for (auto& [dim, v] : dims.items()) {
      if (!v.is_array() || v.size() != 3 || !v[0].is_number_integer() || !v[1].is_number_integer() ||
          !v[2].is_number_integer() || !(1 <= v[0].get<int64_t>() && v[0] <= v[1] && v[1] <= v[2]))
        bad(where + ".dims." + dim + " must be [min, opt, max] with 1 <= min <= opt <= max");
      r.dims[dim] = {v[0].get<int64_t>(), v[1].get<int64_t>(), v[2].get<int64_t>()};
    }
    m.files.push_back({"graph " + key, r.file, r.sha256});
    if (r.data_file) {
      check_digest(*r.data_sha256, where + ".data_sha256");
      m.files.push_back({"external data of graph " + key, *r.data_file, *r.data_sha256});
    }
    m.components[key] = r;
  }
  for (auto& [name, dims] : std::map<std::string, std::vector<std::string>>{
           {"dit", {"batch", "latent_height", "latent_width"}}, {"vae_decoder", {"batch"}}})
    for (auto& d : dims)
      if (!m.components[name].dims.count(d)) bad("components." + name + ".dims lacks " + d + "; the runtime sizes requests by it");
  if (f.has("engines")) {
    const json& engines = f.at("engines");
    if (!engines.is_object()) bad("engines must be an object");
    for (auto& [key, value] : engines.items()) {
      if (!m.components.count(key)) bad("engines." + key + " names no component");
      if (!value.is_object() || !value.contains("file") || !value["file"].is_string() || !value.contains("sha256") ||
          !value["sha256"].is_string())
        bad("engines." + key + " must have file and sha256");
      check_digest(value["sha256"], "engines." + key + ".sha256");
      m.files.push_back({"engine " + key, value["file"], value["sha256"]});
    }
  }
  for (auto& [what, rel, digest] : m.files) {
    std::string path = build_file(build_dir, rel, what);
    if (verify && file_sha256(path) != digest)
      fail(LIDIT_CORRUPT_ARTIFACT, what + " " + rel + " does not match its manifest hash (modified or truncated); rebuild "
                                       "it with `lidit-export build` (or load with hash verification off to skip the check)");
  }
  // A graph reads external data beside it by a name inside the graph itself: a link there that leads out of
  // the build folder is refused too.
  std::set<std::string> folders;
  for (auto& file : m.files) {
    size_t slash = file[1].rfind('/');
    folders.insert(slash == std::string::npos ? "" : file[1].substr(0, slash));
  }
  std::string root = real_path(build_dir);
  for (auto& folder : folders) {
    std::string dir = folder.empty() ? root : root + "/" + folder;
    DIR* d = opendir(dir.c_str());
    if (!d) continue;
    while (dirent* entry = readdir(d)) {
      std::string p = dir + "/" + entry->d_name;
      struct stat ls;
      if (lstat(p.c_str(), &ls) == 0 && S_ISLNK(ls.st_mode)) {
        std::string target = real_path(p);
        if (target.empty() || !inside(root, target)) {
          closedir(d);
          fail(LIDIT_CORRUPT_ARTIFACT, (folder.empty() ? "" : folder + "/") + entry->d_name +
                                           " is a link out of the build folder; remove it or " + kRebuild);
        }
      }
    }
    closedir(d);
  }
  return m;
}

}  // namespace lidit_impl
