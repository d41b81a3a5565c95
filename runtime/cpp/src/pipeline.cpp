// The chain (lidit_runtime/pipeline.py's run_chain, step for step) on ONNX Runtime, and the C API around it.
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <dlfcn.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <new>
#include <set>
#include <utility>

#include "internal.hpp"

#ifndef LIDIT_VERSION
#define LIDIT_VERSION "0.0.0"
#endif
#ifndef LIDIT_DEFAULT_ORT_LIBRARY
#define LIDIT_DEFAULT_ORT_LIBRARY "libonnxruntime.so"
#endif

using namespace lidit_impl;

struct lidit_status {
  lidit_code code;
  std::string message;
};

namespace {

constexpr int kMaxSteps = 1000;
constexpr size_t kMaxPromptChars = 20000;
constexpr double kMaxCfg = 100.0, kMaxNormalization = 100.0;
constexpr int kRefinerRows = 64;  // rows per batched refiner call (lidit_runtime.pipeline.REFINER_ROWS)

// ---- ONNX Runtime, loaded at run time so that a missing or old library is a status, not a loader abort ----
std::mutex g_ort_mutex;
const OrtApiBase* g_api_base = nullptr;
std::string g_ort_library;
Ort::Env* g_env = nullptr;  // one per process, never destroyed (sessions of any pipeline may outlive others)

void load_onnxruntime(const char* requested) {
  std::lock_guard<std::mutex> lock(g_ort_mutex);
  std::string path = requested && *requested ? requested : "";
  if (path.empty()) {
    const char* env = std::getenv("LIDIT_ONNXRUNTIME_LIBRARY");
    path = env && *env ? env : LIDIT_DEFAULT_ORT_LIBRARY;
  }
  if (g_api_base) {
    if (requested && *requested && path != g_ort_library)
      fail(LIDIT_INVALID_ARGUMENT, "ONNX Runtime " + g_ort_library + " is already loaded in this process; one library per "
                                   "process: leave onnxruntime_library unset or give the same path");
    return;
  }
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!handle) {
    const char* why = dlerror();
    fail(LIDIT_NOT_FOUND, "ONNX Runtime library " + path + " cannot be loaded (" + std::string(why ? why : "?") +
                              "); install ONNX Runtime (pip install onnxruntime) and set LIDIT_ONNXRUNTIME_LIBRARY to "
                              "its libonnxruntime.so");
  }
  using GetApiBase = const OrtApiBase* (*)();
  auto get = reinterpret_cast<GetApiBase>(dlsym(handle, "OrtGetApiBase"));
  if (!get) fail(LIDIT_NOT_FOUND, path + " is not an ONNX Runtime library (no OrtGetApiBase)");
  const OrtApiBase* base = get();
  const OrtApi* api = base->GetApi(ORT_API_VERSION);
  if (!api)
    fail(LIDIT_UNSUPPORTED, "ONNX Runtime " + std::string(base->GetVersionString()) + " found at " + path +
                                ", liblidit needs C API version " + std::to_string(ORT_API_VERSION) +
                                " (ONNX Runtime 1." + std::to_string(ORT_API_VERSION) + " or newer); upgrade it");
  Ort::InitApi(api);
  g_api_base = base;
  g_ort_library = path;
  g_env = new Ort::Env(ORT_LOGGING_LEVEL_ERROR, "lidit");
}

std::string first_line(const std::string& s, size_t max = 200) {
  std::string line = s.substr(0, s.find('\n'));
  return line.size() > max ? line.substr(0, max) + "..." : line;
}

// ---- host tensors ------------------------------------------------------------------------------------
struct Tensor {
  std::vector<int64_t> shape;
  std::vector<float> f;    // float32 data, or
  std::vector<int64_t> i;  // int64 data
  bool is_int = false;
  size_t numel() const {
    size_t n = 1;
    for (auto d : shape) n *= size_t(d);
    return n;
  }
  size_t row() const { return shape.empty() || shape[0] == 0 ? 0 : numel() / size_t(shape[0]); }
};

Tensor concat0(const std::vector<const Tensor*>& parts) {
  Tensor out = *parts[0];
  for (size_t k = 1; k < parts.size(); ++k) {
    out.shape[0] += parts[k]->shape[0];
    if (out.is_int)
      out.i.insert(out.i.end(), parts[k]->i.begin(), parts[k]->i.end());
    else
      out.f.insert(out.f.end(), parts[k]->f.begin(), parts[k]->f.end());
  }
  return out;
}

Tensor rows(const Tensor& t, int64_t begin, int64_t end) {
  Tensor out;
  out.shape = t.shape;
  out.shape[0] = end - begin;
  out.is_int = t.is_int;
  size_t r = t.row();
  if (t.is_int)
    out.i.assign(t.i.begin() + begin * r, t.i.begin() + end * r);
  else
    out.f.assign(t.f.begin() + begin * r, t.f.begin() + end * r);
  return out;
}

Tensor repeat_rows(const Tensor& t, int times) {
  std::vector<const Tensor*> parts(size_t(times), &t);
  return concat0(parts);
}

bool all_finite(const Tensor& t) {
  for (float v : t.f)
    if (!std::isfinite(v)) return false;
  return true;
}

size_t utf8_chars(const std::string& s, bool* valid) {
  size_t n = 0;
  *valid = true;
  for (size_t i = 0; i < s.size();) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (len == 0 || i + len > s.size()) {
      *valid = false;
      return n;
    }
    uint32_t cp = len == 1 ? c : c & (0x7F >> len);
    for (size_t k = 1; k < len; ++k) {
      unsigned char cc = static_cast<unsigned char>(s[i + k]);
      if ((cc >> 6) != 2) {
        *valid = false;
        return n;
      }
      cp = (cp << 6) | (cc & 0x3F);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF)) {
      *valid = false;
      return n;
    }
    i += len;
    ++n;
  }
  return n;
}

struct Request {
  std::vector<std::string> prompts;
  std::string negative;
  int steps;
  double cfg, truncation, normalization;
  uint64_t seed;
  std::vector<uint64_t> seeds;
  int height, width;
};

struct CallState {  // one generate call: its cancellation and its time inside ONNX Runtime
  Ort::RunOptions run_options;
  double ort_seconds = 0.0;
  uint64_t epoch = 0;
};

}  // namespace

struct NaturalRows {  // the negative prompt's encoder outputs at its own length, for one LLM
  Tensor hidden, mask;
  std::optional<Tensor> pooled;
};

struct lidit_pipeline {
  std::string build_dir;
  Manifest manifest;
  std::vector<PromptTokenizer> tokenizers;
  std::map<std::string, std::unique_ptr<Ort::Session>> sessions;
  std::atomic<uint64_t> cancel_epoch{0};
  std::mutex calls_mutex;
  std::set<CallState*> calls;
  // What the negative prompt gives this build, kept across calls (it never changes): its encoder states per LLM
  // and its refined tokens per schedule. At most kCacheEntries of each, oldest out first (requests choose their
  // negative prompt, so an unbounded cache would grow with them). lidit_runtime.pipeline.UncondCache does the same.
  static constexpr size_t kCacheEntries = 32;
  std::mutex cache_mutex;
  std::map<std::pair<size_t, std::string>, std::tuple<Tensor, std::optional<Tensor>, Tensor>> uncond_cache;
  std::deque<std::pair<size_t, std::string>> uncond_order;
  std::map<std::string, std::shared_ptr<const std::vector<std::pair<Tensor, Tensor>>>> refined_cache;
  std::deque<std::string> refined_order;

  // ---- running one graph ----
  std::vector<Tensor> run(CallState& call, const std::string& name, const std::map<std::string, const Tensor*>& feeds) {
    const ComponentRecord& rec = manifest.components.at(name);
    Ort::MemoryInfo mem = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    std::vector<const char*> in_names;
    std::vector<Ort::Value> values;
    for (auto& spec : rec.inputs) {
      auto it = feeds.find(spec.name);
      if (it == feeds.end())
        fail(LIDIT_UNSUPPORTED, "graph " + name + " takes an input '" + spec.name + "' the chain does not produce; "
                                "this build needs a newer liblidit");
      Tensor& t = const_cast<Tensor&>(*it->second);
      in_names.push_back(spec.name.c_str());
      if (t.is_int)
        values.push_back(Ort::Value::CreateTensor<int64_t>(mem, t.i.data(), t.i.size(), t.shape.data(), t.shape.size()));
      else
        values.push_back(Ort::Value::CreateTensor<float>(mem, t.f.data(), t.f.size(), t.shape.data(), t.shape.size()));
    }
    std::vector<const char*> out_names;
    for (auto& spec : rec.outputs) out_names.push_back(spec.name.c_str());
    auto t0 = std::chrono::steady_clock::now();
    std::vector<Ort::Value> outs;
    try {
      outs = sessions.at(name)->Run(call.run_options, in_names.data(), values.data(), values.size(), out_names.data(),
                                    out_names.size());
    } catch (const Ort::Exception& e) {
      if (cancelled(call)) fail(LIDIT_CANCELLED, "cancelled");
      fail(LIDIT_RUNTIME_ERROR, "ONNX Runtime failed running graph " + name + ": " + first_line(e.what()));
    }
    call.ort_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::vector<Tensor> result;
    for (auto& v : outs) {
      auto info = v.GetTensorTypeAndShapeInfo();
      Tensor t;
      t.shape = info.GetShape();
      size_t n = info.GetElementCount();
      if (info.GetElementType() == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64) {
        t.is_int = true;
        const int64_t* p = v.GetTensorData<int64_t>();
        t.i.assign(p, p + n);
      } else if (info.GetElementType() == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
        const float* p = v.GetTensorData<float>();
        t.f.assign(p, p + n);
      } else {
        fail(LIDIT_UNSUPPORTED, "graph " + name + " returns a tensor type other than float32 / int64");
      }
      result.push_back(std::move(t));
    }
    return result;
  }

  bool cancelled(const CallState& call) const { return cancel_epoch.load() != call.epoch; }
  void check_cancel(const CallState& call) const {
    if (cancelled(call)) fail(LIDIT_CANCELLED, "generate was cancelled (lidit_cancel or the progress callback)");
  }

  std::pair<Tensor, std::optional<Tensor>> encode(CallState& call, size_t index, const std::vector<std::vector<int64_t>>& ids_rows,
                                                  int pad_to, Tensor* mask_out) {
    const PromptTokenizer& tok = tokenizers[index];
    size_t length = tok.prefix_ids.size() + 1;
    for (auto& r : ids_rows) length = std::max(length, r.size());
    if (pad_to > 0) length = size_t(pad_to);
    Tensor ids, mask;
    ids.is_int = mask.is_int = true;
    ids.shape = mask.shape = {int64_t(ids_rows.size()), int64_t(length)};
    ids.i.assign(ids_rows.size() * length, tok.rec.pad_token_id);
    mask.i.assign(ids_rows.size() * length, 0);
    for (size_t r = 0; r < ids_rows.size(); ++r)
      for (size_t k = 0; k < ids_rows[r].size(); ++k) {
        ids.i[r * length + k] = ids_rows[r][k];
        mask.i[r * length + k] = 1;
      }
    *mask_out = mask;
    Tensor feed_ids = ids, feed_mask = mask;
    if (tok.rec.prefix_cached) {  // the encoder graph holds the prefix states: caption tokens only
      int64_t p = tok.rec.prefix_length, L = int64_t(length);
      for (Tensor* t : {&feed_ids, &feed_mask}) {
        std::vector<int64_t> cut;
        for (int64_t r = 0; r < t->shape[0]; ++r) cut.insert(cut.end(), t->i.begin() + r * L + p, t->i.begin() + (r + 1) * L);
        t->i = std::move(cut);
        t->shape[1] = L - p;
      }
    }
    auto outs = run(call, "encoder_" + std::to_string(index), {{"input_ids", &feed_ids}, {"attention_mask", &feed_mask}});
    std::optional<Tensor> pooled;
    if (outs.size() > 1) pooled = std::move(outs[1]);
    return {std::move(outs[0]), std::move(pooled)};
  }

  Request resolve(const lidit_generate_params* p) const {
    const SchedulerConfig& sc = manifest.scheduler;
    const GuidanceRule& rule = manifest.chain.guidance;
    Request r;
    if (!p->prompts || p->prompt_count == 0) fail(LIDIT_INVALID_ARGUMENT, "no prompt given: pass at least one prompt");
    for (size_t k = 0; k < p->prompt_count; ++k) {
      if (!p->prompts[k]) fail(LIDIT_INVALID_ARGUMENT, "prompts[" + std::to_string(k) + "] is NULL");
      r.prompts.emplace_back(p->prompts[k]);
    }
    r.negative = p->negative_prompt ? p->negative_prompt : "";
    for (size_t k = 0; k <= r.prompts.size(); ++k) {
      const std::string& text = k < r.prompts.size() ? r.prompts[k] : r.negative;
      std::string what = k < r.prompts.size() ? "prompt " + std::to_string(k) : "negative prompt";
      bool valid = true;
      size_t chars = utf8_chars(text, &valid);
      if (!valid) fail(LIDIT_INVALID_ARGUMENT, what + " is not valid UTF-8; pass UTF-8 text");
      if (chars > kMaxPromptChars)
        fail(LIDIT_INVALID_ARGUMENT, what + " of " + std::to_string(chars) + " characters is over the 20000 allowed; shorten it");
    }
    int top = std::min(kMaxSteps, sc.num_train_timesteps);
    r.steps = p->steps == -1 ? sc.default_steps : p->steps;
    if (r.steps < 1 || r.steps > top)
      fail(LIDIT_INVALID_ARGUMENT, "steps=" + std::to_string(p->steps) + " must be between 1 and " + std::to_string(top) +
                                       " (-1: the model's default)");
    r.cfg = p->cfg < 0 ? sc.default_cfg : p->cfg;
    if (!std::isfinite(p->cfg) || r.cfg > kMaxCfg)
      fail(LIDIT_INVALID_ARGUMENT, "cfg must be a finite number between 0 and 100 (negative: the model's default)");
    r.truncation = p->cfg_truncation < 0 ? rule.default_truncation : p->cfg_truncation;
    r.normalization = p->cfg_normalization < 0 ? rule.default_normalization : p->cfg_normalization;
    if (!std::isfinite(p->cfg_truncation) || !std::isfinite(p->cfg_normalization))
      fail(LIDIT_INVALID_ARGUMENT, "cfg_truncation and cfg_normalization must be finite");
    if (rule.truncation == "none" && r.truncation != rule.default_truncation)
      fail(LIDIT_INVALID_ARGUMENT, "cfg_truncation: the " + manifest.chain.family + " chain has no guidance truncation; "
                                   "leave it unset (-1)");
    if (rule.renorm == "none" && r.normalization != rule.default_normalization)
      fail(LIDIT_INVALID_ARGUMENT, "cfg_normalization: the " + manifest.chain.family + " chain has no guidance "
                                   "renormalisation; leave it unset (-1)");
    if (r.truncation > 1.0) fail(LIDIT_INVALID_ARGUMENT, "cfg_truncation must lie between 0 and 1 (1: never truncated)");
    if (r.normalization > kMaxNormalization)
      fail(LIDIT_INVALID_ARGUMENT, "cfg_normalization must lie between 0 (off) and 100");
    r.seed = p->seed;
    if (p->seeds) r.seeds.assign(p->seeds, p->seeds + p->prompt_count);
    r.height = p->height == -1 ? manifest.default_height : p->height;
    r.width = p->width == -1 ? manifest.default_width : p->width;
    int step = manifest.vae_scale_factor * manifest.patch_size;
    if (r.height <= 0 || r.width <= 0 || r.height % step || r.width % step)
      fail(LIDIT_INVALID_ARGUMENT, "resolution " + std::to_string(p->height) + "x" + std::to_string(p->width) +
                                       " is not supported: height and width must be positive multiples of " +
                                       std::to_string(step) + " (-1: the model's default size)");
    int64_t max_batch = manifest.components.at("vae_decoder").dims.at("batch")[2];
    if (int64_t(r.prompts.size()) > max_batch)
      fail(LIDIT_INVALID_ARGUMENT, std::to_string(r.prompts.size()) + " prompts in one call; this build takes at most " +
                                       std::to_string(max_batch) + " (split the request, or re-export with a larger --max-batch)");
    auto& dit = manifest.components.at("dit").dims;
    int64_t max_latent = std::min(dit.at("latent_height")[2], dit.at("latent_width")[2]);
    int64_t side = std::max(r.height, r.width) / manifest.vae_scale_factor;
    if (side > max_latent)
      fail(LIDIT_INVALID_ARGUMENT, "resolution " + std::to_string(r.height) + "x" + std::to_string(r.width) +
                                       " is over the largest side this build was exported for (" +
                                       std::to_string(max_latent * manifest.vae_scale_factor) + " px); re-export with --max-image");
    return r;
  }

  lidit_result* generate(const lidit_generate_params* params, CallState& call);

  // The negative prompt's refined tokens for this schedule from refined_cache (computed once: one row per step, at
  // its own length), the B cond rows refined alone, and the two laid out as refining [cond; negative x B] gives
  // them: per LLM a segment of L_k - prefix_k tokens, the negative's zero-padded with mask 0, which the DiT's
  // masked cross-attention ignores. False when the shapes do not follow that layout (every row is refined then).
  template <class RefineSteps>
  bool refine_with_cached_uncond(const std::string& negative, const std::vector<float>& model_t,
                                 const std::vector<NaturalRows>& natural, const std::vector<Tensor>& hidden,
                                 const std::vector<Tensor>& masks, const std::vector<std::optional<Tensor>>& pooled,
                                 int64_t B, RefineSteps& refine_steps, std::vector<std::pair<Tensor, Tensor>>* out) {
    const size_t E = natural.size();
    std::vector<int64_t> own(E), len(E), pre(E);
    int64_t n_own = 0, n_len = 0;
    std::string key = negative;
    key.push_back('\0');
    for (size_t e = 0; e < E; ++e) {
      own[e] = natural[e].mask.shape[1];
      len[e] = masks[e].shape[1];
      pre[e] = int64_t(tokenizers[e].prefix_ids.size());
      if (pre[e] > own[e] || own[e] > len[e]) return false;
      n_own += own[e] - pre[e];
      n_len += len[e] - pre[e];
      key += std::to_string(own[e]) + ",";
    }
    key.append(reinterpret_cast<const char*>(model_t.data()), model_t.size() * sizeof(float));
    std::shared_ptr<const std::vector<std::pair<Tensor, Tensor>>> cached;
    {
      std::lock_guard<std::mutex> lock(cache_mutex);
      auto it = refined_cache.find(key);
      if (it != refined_cache.end()) cached = it->second;
    }
    if (!cached) {  // refined outside the lock; two calls may both refine the same negative once
      std::vector<Tensor> hs, ms;
      std::vector<std::optional<Tensor>> ps;
      for (auto& n : natural) {
        hs.push_back(n.hidden);
        ms.push_back(n.mask);
        ps.push_back(n.pooled);
      }
      auto steps = std::make_shared<std::vector<std::pair<Tensor, Tensor>>>(refine_steps(hs, ms, ps, 1));
      for (auto& step : *steps)
        if (step.first.shape.size() != 3 || step.first.shape[1] != n_own || step.second.numel() != size_t(n_own))
          return false;
      std::lock_guard<std::mutex> lock(cache_mutex);
      if (refined_cache.emplace(key, steps).second) {
        refined_order.push_back(key);
        if (refined_order.size() > kCacheEntries) {
          refined_cache.erase(refined_order.front());
          refined_order.pop_front();
        }
      }
      cached = steps;
    }
    std::vector<Tensor> hs, ms;
    std::vector<std::optional<Tensor>> ps;
    for (size_t e = 0; e < E; ++e) {
      hs.push_back(rows(hidden[e], 0, B));
      ms.push_back(rows(masks[e], 0, B));
      ps.push_back(pooled[e] ? std::optional<Tensor>(rows(*pooled[e], 0, B)) : std::nullopt);
    }
    auto cond = refine_steps(hs, ms, ps, B);
    if (cond.size() != cached->size() || cond[0].first.shape[1] != n_len) return false;
    out->clear();
    for (size_t i = 0; i < cond.size(); ++i) {
      const Tensor& uc = (*cached)[i].first;
      const Tensor& um = (*cached)[i].second;
      const int64_t D = uc.shape[2];
      Tensor pc, pm;  // the negative's tokens in the cond rows' layout
      pc.shape = {1, n_len, D};
      pc.f.assign(size_t(n_len * D), 0.0f);
      pm.is_int = um.is_int;
      pm.shape = {1, n_len};
      if (um.is_int)
        pm.i.assign(size_t(n_len), 0);
      else
        pm.f.assign(size_t(n_len), 0.0f);
      int64_t src = 0, dst = 0;
      for (size_t e = 0; e < E; ++e) {
        int64_t width = own[e] - pre[e];
        std::copy(uc.f.begin() + src * D, uc.f.begin() + (src + width) * D, pc.f.begin() + dst * D);
        if (um.is_int)
          std::copy(um.i.begin() + src, um.i.begin() + src + width, pm.i.begin() + dst);
        else
          std::copy(um.f.begin() + src, um.f.begin() + src + width, pm.f.begin() + dst);
        src += width;
        dst += len[e] - pre[e];
      }
      Tensor rc = repeat_rows(pc, int(B)), rm = repeat_rows(pm, int(B));
      out->emplace_back(concat0({&cond[i].first, &rc}), concat0({&cond[i].second, &rm}));
    }
    return true;
  }
};

struct lidit_result {
  std::vector<uint8_t> images;
  int height = 0, width = 0;
  size_t count = 0;
  std::vector<float> latents;
  int64_t latent_shape[4] = {0, 0, 0, 0};
  std::vector<std::string> timing_names;
  std::vector<const char*> timing_ptrs;
  std::vector<double> timing_values;
};

lidit_result* lidit_pipeline::generate(const lidit_generate_params* params, CallState& call) {
  using clock = std::chrono::steady_clock;
  auto since = [](clock::time_point t) { return std::chrono::duration<double>(clock::now() - t).count(); };
  auto t_start = clock::now();
  Request req = resolve(params);
  const ChainRecord& chain = manifest.chain;
  const GuidanceRule& rule = chain.guidance;
  const int64_t B = int64_t(req.prompts.size());
  const int f = manifest.vae_scale_factor;
  std::array<int64_t, 4> shape = {B, manifest.latent_channels, req.height / f, req.width / f};
  SamplingPlan plan = make_plan(manifest.scheduler, req.steps, shape, manifest.patch_size);
  const int S = int(plan.timesteps.size());
  const float scale = float(req.cfg + rule.scale_offset);
  std::vector<bool> guided(S);
  bool any_guided = false;
  for (int i = 0; i < S; ++i) {
    double sigma = plan.timesteps[i] / manifest.scheduler.num_train_timesteps;
    guided[i] = rule.guided(req.cfg) && !rule.truncated(req.truncation, i, S, sigma);
    any_guided = any_guided || guided[i];
  }
  const bool renorm = rule.renorm != "none" && req.normalization > 0;
  check_cancel(call);

  // ---- encoders: [prompts; negative x B], the negative's states cached per pipeline ----
  std::vector<Tensor> hidden, masks;
  std::vector<std::optional<Tensor>> pooled;
  std::vector<NaturalRows> natural;
  for (size_t e = 0; e < tokenizers.size(); ++e) {
    std::vector<std::vector<int64_t>> cond_rows;
    for (auto& prompt : req.prompts) cond_rows.push_back(tokenizers[e].row(prompt, false));
    Tensor mask;
    if (!any_guided) {
      auto [h, p] = encode(call, e, cond_rows, 0, &mask);
      hidden.push_back(std::move(h));
      masks.push_back(std::move(mask));
      pooled.push_back(std::move(p));
      continue;
    }
    auto key = std::make_pair(e, req.negative);
    Tensor u_hidden, u_mask;
    std::optional<Tensor> u_pooled;
    {
      std::unique_lock<std::mutex> lock(cache_mutex);
      auto it = uncond_cache.find(key);
      if (it != uncond_cache.end()) {
        std::tie(u_hidden, u_pooled, u_mask) = it->second;
      } else {
        lock.unlock();  // encode outside the lock; two threads may both encode the same negative once
        auto [h, p] = encode(call, e, {tokenizers[e].row(req.negative, true)}, 0, &u_mask);
        u_hidden = std::move(h);
        u_pooled = std::move(p);
        lock.lock();
        if (uncond_cache.emplace(key, std::make_tuple(u_hidden, u_pooled, u_mask)).second) {
          uncond_order.push_back(key);
          if (uncond_order.size() > kCacheEntries) {
            uncond_cache.erase(uncond_order.front());
            uncond_order.pop_front();
          }
        }
      }
    }
    natural.push_back({u_hidden, u_mask, u_pooled});
    size_t cond_len = tokenizers[e].prefix_ids.size() + 1;
    for (auto& r : cond_rows) cond_len = std::max(cond_len, r.size());
    int64_t length = std::max<int64_t>(int64_t(cond_len), u_mask.shape[1]);
    auto [h, p] = encode(call, e, cond_rows, int(length), &mask);
    // the cached negative padded to `length` with zero states and mask 0
    int64_t ul = u_mask.shape[1], H = u_hidden.shape[2];
    Tensor uh, um;
    uh.shape = {1, length, H};
    uh.f.assign(size_t(length * H), 0.0f);
    std::copy(u_hidden.f.begin(), u_hidden.f.end(), uh.f.begin());
    um.is_int = true;
    um.shape = {1, length};
    um.i.assign(size_t(length), 0);
    std::copy(u_mask.i.begin(), u_mask.i.begin() + ul, um.i.begin());
    Tensor uh_rep = repeat_rows(uh, int(B)), um_rep = repeat_rows(um, int(B));
    hidden.push_back(concat0({&h, &uh_rep}));
    masks.push_back(concat0({&mask, &um_rep}));
    if (p && u_pooled) {
      Tensor up_rep = repeat_rows(*u_pooled, int(B));
      pooled.push_back(concat0({&*p, &up_rep}));
    } else {
      pooled.push_back(std::nullopt);
    }
  }
  for (size_t e = 0; e < hidden.size(); ++e)
    if (!all_finite(pooled[e] ? *pooled[e] : hidden[e]))
      fail(LIDIT_RUNTIME_ERROR, "encoder " + std::to_string(e) + " produced NaN or infinite values; the build's weights "
                                "may be damaged (verify or rebuild it)");
  std::optional<Tensor> pooled_all;
  bool all_pooled = true;
  for (auto& p : pooled) all_pooled = all_pooled && p.has_value();
  if (all_pooled) {  // concatenated along the last axis
    Tensor t;
    int64_t R = pooled[0]->shape[0], D = 0;
    for (auto& p : pooled) D += p->shape[1];
    t.shape = {R, D};
    for (int64_t r = 0; r < R; ++r)
      for (auto& p : pooled) t.f.insert(t.f.end(), p->f.begin() + r * p->shape[1], p->f.begin() + (r + 1) * p->shape[1]);
    pooled_all = std::move(t);
  }
  double t_encode = since(t_start);
  check_cancel(call);

  // ---- noise, timesteps, refiner ----
  Tensor x;
  x.shape = {shape[0], shape[1], shape[2], shape[3]};
  x.f.resize(x.numel());
  size_t per_row = x.row();
  if (req.seeds.empty()) {
    gaussian(req.seed, 0, x.f.size(), x.f.data());
  } else {
    for (int64_t r = 0; r < B; ++r) gaussian(req.seeds[size_t(r)], 0, per_row, x.f.data() + r * per_row);
  }
  const int64_t R = any_guided ? 2 * B : B;
  std::vector<float> model_t(S);
  for (int i = 0; i < S; ++i) model_t[i] = float(chain.timestep_offset + chain.timestep_scale * plan.timesteps[i]);
  auto t_vec = [&](int i, int64_t n) {
    Tensor t;
    t.shape = {n};
    t.f.assign(size_t(n), model_t[i]);
    return t;
  };
  // the refiner's feeds: `hs`, `ms`, `ps` (per LLM) tiled k times, and the timestep
  auto refiner_feeds = [&](std::vector<Tensor>& store, const std::vector<Tensor>& hs, const std::vector<Tensor>& ms,
                           const std::vector<std::optional<Tensor>>& ps, int k, const Tensor* timestep) {
    std::map<std::string, const Tensor*> feeds;
    store.clear();
    store.reserve(hs.size() * 3);
    for (size_t e = 0; e < hs.size(); ++e) {
      store.push_back(k > 1 ? repeat_rows(hs[e], k) : hs[e]);
      feeds["hidden_" + std::to_string(e)] = &store.back();
      store.push_back(k > 1 ? repeat_rows(ms[e], k) : ms[e]);
      feeds["attention_mask_" + std::to_string(e)] = &store.back();
      if (ps[e]) {
        store.push_back(k > 1 ? repeat_rows(*ps[e], k) : *ps[e]);
        feeds["pooled_" + std::to_string(e)] = &store.back();
      }
    }
    if (timestep) feeds["timestep"] = timestep;
    return feeds;
  };
  std::vector<Tensor> store;
  // every step's refiner for `n` rows, in calls of at most kRefinerRows rows (lidit_runtime's refine_all_steps)
  auto refine_steps = [&](const std::vector<Tensor>& hs, const std::vector<Tensor>& ms,
                          const std::vector<std::optional<Tensor>>& ps, int64_t n) {
    std::vector<std::pair<Tensor, Tensor>> out;
    int per_call = std::max<int>(1, int(kRefinerRows / n));
    for (int start = 0; start < S; start += per_call) {
      int k = std::min(per_call, S - start);
      Tensor ts;
      ts.shape = {k * n};
      for (int j = 0; j < k; ++j) ts.f.insert(ts.f.end(), size_t(n), model_t[start + j]);
      auto outs = run(call, "refiner", refiner_feeds(store, hs, ms, ps, k, &ts));
      for (int j = 0; j < k; ++j) out.emplace_back(rows(outs[0], j * n, (j + 1) * n), rows(outs[1], j * n, (j + 1) * n));
      check_cancel(call);
    }
    return out;
  };
  auto t_refine0 = clock::now();
  std::vector<std::pair<Tensor, Tensor>> refined;  // one per step, or one for all
  if (!chain.refiner_timestep) {
    auto outs = run(call, "refiner", refiner_feeds(store, hidden, masks, pooled, 1, nullptr));
    refined.emplace_back(std::move(outs[0]), std::move(outs[1]));
  } else if (any_guided && natural.size() == hidden.size() &&
             refine_with_cached_uncond(req.negative, model_t, natural, hidden, masks, pooled, B, refine_steps, &refined)) {
    // the negative prompt's refined tokens came from (or went into) refined_cache; the cond rows alone were refined
  } else {
    refined = refine_steps(hidden, masks, pooled, R);
  }
  double t_refine = since(t_refine0);

  // ---- denoising loop ----
  auto t_loop = clock::now();
  std::vector<float> prev;
  for (int i = 0; i < S; ++i) {
    const auto& [context_all, cmask_all] = chain.refiner_timestep ? refined[size_t(i)] : refined[0];
    Tensor out;
    if (guided[i]) {
      Tensor xx = concat0({&x, &x}), t = t_vec(i, R);
      std::map<std::string, const Tensor*> feeds = {{"latents", &xx}, {"timestep", &t}, {"context", &context_all},
                                                    {"context_mask", &cmask_all}};
      if (pooled_all) feeds["pooled"] = &*pooled_all;
      Tensor both = std::move(run(call, "dit", feeds)[0]);
      size_t n = x.f.size();
      out.shape = x.shape;
      out.f.resize(n);
      for (size_t k = 0; k < n; ++k) {
        float c = both.f[k], u = both.f[n + k];
        out.f[k] = u + (c - u) * scale;
      }
      if (renorm) {  // the guided output rescaled against the conditional one
        int64_t D = rule.renorm_axes == "sample" ? int64_t(per_row) : shape[3];
        const float mult = float(req.normalization);
        for (size_t g0 = 0; g0 < n; g0 += size_t(D)) {
          double gs = 0, cs = 0;
          for (int64_t k = 0; k < D; ++k) {
            gs += double(out.f[g0 + k]) * out.f[g0 + k];
            cs += double(both.f[g0 + k]) * both.f[g0 + k];
          }
          float gn = std::sqrt(float(gs)), cn = std::sqrt(float(cs));
          float ratio = mult * cn / gn;
          if (rule.renorm == "clamp" && !(gn > mult * cn)) ratio = 1.0f;
          for (int64_t k = 0; k < D; ++k) out.f[g0 + k] = out.f[g0 + k] * ratio;
        }
      }
    } else {
      Tensor t = t_vec(i, B), ctx = R != B ? rows(context_all, 0, B) : context_all,
             cm = R != B ? rows(cmask_all, 0, B) : cmask_all;
      std::optional<Tensor> pl;
      if (pooled_all) pl = R != B ? rows(*pooled_all, 0, B) : *pooled_all;
      std::map<std::string, const Tensor*> feeds = {{"latents", &x}, {"timestep", &t}, {"context", &ctx}, {"context_mask", &cm}};
      if (pl) feeds["pooled"] = &*pl;
      out = std::move(run(call, "dit", feeds)[0]);
    }
    if (chain.output_scale != 1.0) {
      const float os = float(chain.output_scale);
      for (auto& v : out.f) v = v * os;
    }
    // sampler update, float32 with float32 coefficients (numpy's arithmetic with Python floats)
    const auto& c = plan.coefficients[size_t(i)];
    const float p_x = float(c[0]), p_m = float(c[1]), q_x = float(c[2]), q_d = float(c[3]), q_prev = float(c[4]);
    std::vector<float> denoised(x.f.size());
    for (size_t k = 0; k < x.f.size(); ++k) {
      float d = c[0] == 0.0 ? out.f[k] * p_m : x.f[k] * p_x + out.f[k] * p_m;
      float nx = x.f[k] * q_x + d * q_d;
      if (c[4] != 0.0) nx = nx + prev[k] * q_prev;
      denoised[k] = d;
      x.f[k] = nx;
    }
    prev = std::move(denoised);
    if (params->progress && params->progress(i + 1, S, params->progress_user_data) != 0)
      fail(LIDIT_CANCELLED, "generate was cancelled by the progress callback at step " + std::to_string(i + 1));
    check_cancel(call);
  }
  double t_denoise = since(t_loop);
  if (!all_finite(x))
    fail(LIDIT_RUNTIME_ERROR, "the denoising loop (refiner + DiT) produced NaN or infinite values; verify or rebuild the "
                              "build, or try a higher precision");

  // ---- VAE decoder ----
  auto t_dec = clock::now();
  Tensor z = x;
  if (chain.latent_scale != 1.0 || chain.latent_shift != 0.0) {
    const float inv = float(1.0 / chain.latent_scale), shift = float(chain.latent_shift);
    for (auto& v : z.f) v = v * inv + shift;
  }
  Tensor image = std::move(run(call, "vae_decoder", {{"latents", &z}})[0]);
  if (!all_finite(image)) fail(LIDIT_RUNTIME_ERROR, "the VAE decoder produced NaN or infinite values; verify or rebuild the build");
  double t_decode = since(t_dec);

  auto result = std::make_unique<lidit_result>();
  const int64_t H = image.shape[2], W = image.shape[3];
  result->count = size_t(B);
  result->height = int(H);
  result->width = int(W);
  result->images.resize(size_t(B * H * W * 3));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t ch = 0; ch < 3; ++ch)
      for (int64_t y = 0; y < H; ++y)
        for (int64_t xx = 0; xx < W; ++xx) {
          float v = image.f[size_t(((b * 3 + ch) * H + y) * W + xx)];
          v = std::min(std::max(v, 0.0f), 1.0f) * 255.0f + 0.5f;
          result->images[size_t(((b * H + y) * W + xx) * 3 + ch)] = static_cast<uint8_t>(v);
        }
  result->latents = std::move(x.f);
  for (int k = 0; k < 4; ++k) result->latent_shape[k] = shape[size_t(k)];
  double total = since(t_start);
  result->timing_names = {"encode", "refine", "denoise", "decode", "total", "onnxruntime"};
  result->timing_values = {t_encode, t_refine, t_denoise, t_decode, total, call.ort_seconds};
  for (auto& name : result->timing_names) result->timing_ptrs.push_back(name.c_str());
  return result.release();
}

// ---- the C API ---------------------------------------------------------------------------------------
namespace {

lidit_status* make_status(lidit_code code, std::string message) {
  for (auto& ch : message)
    if (ch == '\n' || ch == '\r') ch = ' ';
  return new (std::nothrow) lidit_status{code, std::move(message)};
}

template <typename F>
lidit_status* guarded(F&& body) {
  try {
    body();
    return nullptr;
  } catch (const Error& e) {
    return make_status(e.code, e.what());
  } catch (const Ort::Exception& e) {
    return make_status(LIDIT_RUNTIME_ERROR, "ONNX Runtime: " + first_line(e.what()));
  } catch (const std::bad_alloc&) {
    return make_status(LIDIT_OUT_OF_MEMORY, "out of memory; use a smaller image or batch");
  } catch (const std::exception& e) {
    return make_status(LIDIT_RUNTIME_ERROR, first_line(e.what()));
  } catch (...) {
    return make_status(LIDIT_RUNTIME_ERROR, "unknown internal error");
  }
}

const char* kLevelNames[] = {"disable", "basic", "extended", "all"};
const GraphOptimizationLevel kLevels[] = {ORT_DISABLE_ALL, ORT_ENABLE_BASIC, ORT_ENABLE_EXTENDED, ORT_ENABLE_ALL};

std::string provider_name(const std::string& p) {
  if (p == "cpu") return "CPUExecutionProvider";
  if (p == "cuda") return "CUDAExecutionProvider";
  if (p == "tensorrt") return "TensorrtExecutionProvider";
  return p;
}

void append_provider(Ort::SessionOptions& so, const lidit_load_options* o) {
  std::string provider = o->provider && *o->provider ? o->provider : "cpu";
  std::string full = provider_name(provider);
  auto available = Ort::GetAvailableProviders();
  if (std::find(available.begin(), available.end(), full) == available.end()) {
    std::string have;
    for (auto& a : available) have += (have.empty() ? "" : ", ") + a;
    fail(LIDIT_UNSUPPORTED, "execution provider '" + provider + "' (" + full + ") is not in this ONNX Runtime (it has " +
                                have + "); install an ONNX Runtime build that has it or use provider \"cpu\"");
  }
  std::unordered_map<std::string, std::string> kv;
  for (size_t k = 0; k < o->provider_option_count; ++k) {
    if (!o->provider_option_keys || !o->provider_option_values || !o->provider_option_keys[k] || !o->provider_option_values[k])
      fail(LIDIT_INVALID_ARGUMENT, "provider option " + std::to_string(k) + " has a NULL key or value");
    kv[o->provider_option_keys[k]] = o->provider_option_values[k];
  }
  if (full == "CPUExecutionProvider") {
    if (!kv.empty()) fail(LIDIT_INVALID_ARGUMENT, "the CPU provider takes no provider options");
    return;
  }
  std::vector<const char*> keys, values;
  for (auto& [k, v] : kv) {
    keys.push_back(k.c_str());
    values.push_back(v.c_str());
  }
  if (full == "CUDAExecutionProvider") {
    OrtCUDAProviderOptionsV2* cuda = nullptr;
    Ort::ThrowOnError(Ort::GetApi().CreateCUDAProviderOptions(&cuda));
    std::unique_ptr<OrtCUDAProviderOptionsV2, void (*)(OrtCUDAProviderOptionsV2*)> guard(cuda, Ort::GetApi().ReleaseCUDAProviderOptions);
    Ort::ThrowOnError(Ort::GetApi().UpdateCUDAProviderOptions(cuda, keys.data(), values.data(), keys.size()));
    so.AppendExecutionProvider_CUDA_V2(*cuda);
  } else if (full == "TensorrtExecutionProvider") {
    OrtTensorRTProviderOptionsV2* trt = nullptr;
    Ort::ThrowOnError(Ort::GetApi().CreateTensorRTProviderOptions(&trt));
    std::unique_ptr<OrtTensorRTProviderOptionsV2, void (*)(OrtTensorRTProviderOptionsV2*)> guard(trt, Ort::GetApi().ReleaseTensorRTProviderOptions);
    Ort::ThrowOnError(Ort::GetApi().UpdateTensorRTProviderOptions(trt, keys.data(), values.data(), keys.size()));
    so.AppendExecutionProvider_TensorRT_V2(*trt);
  } else {
    so.AppendExecutionProvider(full.substr(0, full.find("ExecutionProvider")), kv);
  }
}

}  // namespace

extern "C" {

lidit_code lidit_status_code(const lidit_status* s) { return s ? s->code : LIDIT_OK; }
const char* lidit_status_message(const lidit_status* s) { return s ? s->message.c_str() : ""; }
void lidit_status_free(lidit_status* s) { delete s; }

int lidit_abi_version(void) { return LIDIT_ABI_VERSION; }

const char* lidit_version(void) {
  static thread_local std::string text;
  std::lock_guard<std::mutex> lock(g_ort_mutex);
  text = std::string("lidit ") + LIDIT_VERSION + " (ABI " + std::to_string(LIDIT_ABI_VERSION) + "); ONNX Runtime headers 1." +
         std::to_string(ORT_API_VERSION) + ", library " +
         (g_api_base ? std::string(g_api_base->GetVersionString()) + " (" + g_ort_library + ")" : std::string("not loaded yet"));
  return text.c_str();
}

void lidit_load_options_init(lidit_load_options* o) {
  if (!o) return;
  std::memset(o, 0, sizeof *o);
  o->struct_size = sizeof *o;
  o->provider = "cpu";
  o->verify_hashes = 1;
}

void lidit_generate_params_init(lidit_generate_params* p) {
  if (!p) return;
  std::memset(p, 0, sizeof *p);
  p->struct_size = sizeof *p;
  p->steps = -1;
  p->cfg = -1.0;
  p->height = p->width = -1;
  p->cfg_truncation = p->cfg_normalization = -1.0;
}

lidit_status* lidit_pipeline_load(const lidit_load_options* o, lidit_pipeline** out) {
  if (!o || !out) return make_status(LIDIT_INVALID_ARGUMENT, "lidit_pipeline_load: options and out must not be NULL");
  *out = nullptr;
  if (o->struct_size != sizeof(lidit_load_options))
    return make_status(LIDIT_INVALID_ARGUMENT, "lidit_load_options.struct_size is wrong: fill it with lidit_load_options_init");
  if (!o->build_dir || !*o->build_dir)
    return make_status(LIDIT_INVALID_ARGUMENT, "lidit_load_options.build_dir is not set: give the build folder");
  if (o->intra_op_threads < 0)
    return make_status(LIDIT_INVALID_ARGUMENT, "intra_op_threads must be >= 0 (0: ONNX Runtime decides)");
  auto pipeline = std::make_unique<lidit_pipeline>();
  lidit_status* status = guarded([&] {
    pipeline->build_dir = o->build_dir;
    pipeline->manifest = load_manifest(o->build_dir, o->verify_hashes != 0);
    for (auto& [name, rec] : pipeline->manifest.components)
      for (auto* side : {&rec.inputs, &rec.outputs})
        for (auto& t : *side)
          if (t.dtype != "float32" && t.dtype != "int64")
            fail(LIDIT_UNSUPPORTED, "graph " + name + " has a " + t.dtype + " tensor '" + t.name +
                                        "'; liblidit feeds float32 and int64 only: run this build with the Python runtime");
    for (size_t e = 0; e < pipeline->manifest.encoders.size(); ++e) {
      auto& rec = pipeline->manifest.encoders[e];
      auto file = build_file(o->build_dir, rec.tokenizer_file, "tokenizer of encoder " + std::to_string(e));
      pipeline->tokenizers.emplace_back(load_tokenizer(file), rec);
    }
    load_onnxruntime(o->onnxruntime_library);
    for (auto& [name, rec] : pipeline->manifest.components) {
      Ort::SessionOptions so;
      for (int l = 0; l < 4; ++l)
        if (rec.ort_optimization == kLevelNames[l]) so.SetGraphOptimizationLevel(kLevels[l]);
      if (o->intra_op_threads > 0) so.SetIntraOpNumThreads(o->intra_op_threads);
      // worker threads do not spin after a run: the refiner and DiT sessions alternate, and threads still
      // spinning for one take the cores the other needs
      so.AddConfigEntry("session.intra_op.allow_spinning", "0");
      append_provider(so, o);
      std::string file = build_file(o->build_dir, rec.file, "graph " + name);
      std::unique_ptr<Ort::Session> session;
      try {
        session = std::make_unique<Ort::Session>(*g_env, file.c_str(), so);
      } catch (const Ort::Exception& e) {
        std::string what = first_line(e.what());
        if (rec.precision == "bf16" && e.GetOrtErrorCode() == ORT_NOT_IMPLEMENTED)  // no BF16 kernels on CPU
          fail(LIDIT_UNSUPPORTED, "this ONNX Runtime provider has no BF16 kernels for " + rec.file +
                                      " (the C++ runtime does not emulate them, the Python runtime does): use a GPU "
                                      "provider, or build with fp16 / fp32 (--precision, --encoder-weights)");
        fail(LIDIT_CORRUPT_ARTIFACT, "ONNX Runtime cannot load " + rec.file + ": " + what + "; re-run `lidit-export build`");
      }
      Ort::AllocatorWithDefaultOptions alloc;
      std::vector<std::string> ins, outs, want_in, want_out;
      for (size_t k = 0; k < session->GetInputCount(); ++k) ins.push_back(session->GetInputNameAllocated(k, alloc).get());
      for (size_t k = 0; k < session->GetOutputCount(); ++k) outs.push_back(session->GetOutputNameAllocated(k, alloc).get());
      for (auto& t : rec.inputs) want_in.push_back(t.name);
      for (auto& t : rec.outputs) want_out.push_back(t.name);
      if (ins != want_in || outs != want_out)
        fail(LIDIT_CORRUPT_ARTIFACT, "graph " + rec.file + " has other inputs/outputs than its manifest record says; the "
                                     "build is inconsistent: rebuild it");
      pipeline->sessions[name] = std::move(session);
    }
  });
  if (status) return status;
  *out = pipeline.release();
  return nullptr;
}

void lidit_pipeline_free(lidit_pipeline* p) { delete p; }

void lidit_cancel(lidit_pipeline* p) {
  if (!p) return;
  std::lock_guard<std::mutex> lock(p->calls_mutex);
  p->cancel_epoch.fetch_add(1);
  for (CallState* call : p->calls) call->run_options.SetTerminate();
}

lidit_status* lidit_pipeline_generate(lidit_pipeline* p, const lidit_generate_params* params, lidit_result** out) {
  if (!p || !params || !out)
    return make_status(LIDIT_INVALID_ARGUMENT, "lidit_pipeline_generate: pipeline, params and out must not be NULL");
  *out = nullptr;
  if (params->struct_size != sizeof(lidit_generate_params))
    return make_status(LIDIT_INVALID_ARGUMENT, "lidit_generate_params.struct_size is wrong: fill it with lidit_generate_params_init");
  std::unique_ptr<CallState> call;
  lidit_status* status = guarded([&] {
    call = std::make_unique<CallState>();
    {
      std::lock_guard<std::mutex> lock(p->calls_mutex);
      call->epoch = p->cancel_epoch.load();
      p->calls.insert(call.get());
    }
    struct Unregister {
      lidit_pipeline* p;
      CallState* c;
      ~Unregister() {
        std::lock_guard<std::mutex> lock(p->calls_mutex);
        p->calls.erase(c);
      }
    } unregister{p, call.get()};
    *out = p->generate(params, *call);
  });
  return status;
}

size_t lidit_result_image_count(const lidit_result* r) { return r ? r->count : 0; }

const uint8_t* lidit_result_image(const lidit_result* r, size_t i, int* height, int* width) {
  if (!r || i >= r->count) return nullptr;
  if (height) *height = r->height;
  if (width) *width = r->width;
  return r->images.data() + i * size_t(r->height) * size_t(r->width) * 3;
}

const float* lidit_result_latents(const lidit_result* r, int64_t shape[4]) {
  if (!r) return nullptr;
  if (shape)
    for (int k = 0; k < 4; ++k) shape[k] = r->latent_shape[k];
  return r->latents.data();
}

size_t lidit_result_timings(const lidit_result* r, const char* const** names, const double** values) {
  if (!r) return 0;
  if (names) *names = r->timing_ptrs.data();
  if (values) *values = r->timing_values.data();
  return r->timing_values.size();
}

void lidit_result_free(lidit_result* r) { delete r; }

}  // extern "C"
