// The seed's noise (lidit_runtime/noise.py, bit for bit) and the sampler plans (lidit_runtime/sampler.py).
// Compiled with -ffp-contract=off: a fused multiply-add would change the last bit of the noise.
#include <cmath>

#include "internal.hpp"

namespace lidit_impl {

namespace {
constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u, kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
constexpr double kLn2 = 0.6931471805599453, kHalfPi = 1.5707963267948966, kSqrtHalf = 0.7071067811865476;

double log_unit(double u) {  // log u for u in (0, 1], the series of noise.py in its order
  int e = 0;
  double m = std::frexp(u, &e);
  if (m < kSqrtHalf) {
    m *= 2.0;
    e -= 1;
  }
  double f = m - 1.0;
  double s = f / (2.0 + f);
  double s2 = s * s;
  double acc = 1.0 / 25.0;
  for (int k = 11; k >= 1; --k) acc = acc * s2 + 1.0 / (2 * k + 1);
  return double(e) * kLn2 + (s + s) * (acc * s2 + 1.0);
}

double factorial(int n) {  // exact for n <= 22 (below 2^53 * 2^k with trailing zeros), as Python's int
  double f = 1.0;
  for (int i = 2; i <= n; ++i) f *= i;
  return f;
}

struct Series {
  double cos_c[10], sin_c[10];
  Series() {
    for (int k = 1; k <= 10; ++k) {
      // Python: (-1)**k / math.factorial(2k): an int divided by an int, correctly rounded; the factorials up to
      // 21! are exact doubles, so one IEEE division gives the same double
      cos_c[k - 1] = (k % 2 ? -1.0 : 1.0) / factorial(2 * k);
      sin_c[k - 1] = (k % 2 ? -1.0 : 1.0) / factorial(2 * k + 1);
    }
  }
};
const Series kSeries;

double cos_turn(double u) {  // cos(2 pi u) for u in [0, 1)
  double t = u * 4.0;
  double q = std::floor(t + 0.5);
  double a = (t - q) * kHalfPi;
  double a2 = a * a;
  double c = kSeries.cos_c[9], s = kSeries.sin_c[9];
  for (int k = 8; k >= 0; --k) {
    c = c * a2 + kSeries.cos_c[k];
    s = s * a2 + kSeries.sin_c[k];
  }
  c = c * a2 + 1.0;
  s = a + a * (s * a2);
  switch (static_cast<int64_t>(q) % 4) {
    case 0: return c;
    case 1: return -s;
    case 2: return -c;
    default: return s;
  }
}
}  // namespace

std::array<uint32_t, 4> philox4x32(std::array<uint32_t, 4> c, std::array<uint32_t, 2> k) {
  for (int r = 0; r < 10; ++r) {
    uint64_t p0 = uint64_t(kM0) * c[0], p1 = uint64_t(kM1) * c[2];
    c = {uint32_t(p1 >> 32) ^ c[1] ^ k[0], uint32_t(p1), uint32_t(p0 >> 32) ^ c[3] ^ k[1], uint32_t(p0)};
    k = {k[0] + kW0, k[1] + kW1};
  }
  return c;
}

void gaussian(uint64_t seed, uint64_t start, size_t count, float* out) {
  const std::array<uint32_t, 2> key = {uint32_t(seed), uint32_t(seed >> 32)};
  const double scale = std::ldexp(1.0, -53);
  for (size_t i = 0; i < count; ++i) {
    uint64_t n = start + i;
    auto w = philox4x32({uint32_t(n), uint32_t(n >> 32), 0u, 0u}, key);
    double u1 = double(((uint64_t(w[0] >> 5)) << 26) + (w[1] >> 6) + 1) * scale;
    double u2 = double(((uint64_t(w[2] >> 5)) << 26) + (w[3] >> 6)) * scale;
    out[i] = static_cast<float>(std::sqrt(-2.0 * log_unit(u1)) * cos_turn(u2));
  }
}

// ---- sampler plans -----------------------------------------------------------------------------------
namespace {
std::vector<double> np_linspace(double start, double stop, int num) {  // numpy.linspace, endpoint=True
  std::vector<double> y(num);
  double step = (stop - start) / (num - 1);
  for (int i = 0; i < num; ++i) y[i] = double(i) * step + start;
  if (num > 1) y[num - 1] = stop;
  return y;
}

std::vector<double> np_arange(double start, double stop, double step) {  // numpy.arange with a float step
  double len = std::ceil((stop - start) / step);
  int n = len > 0 ? int(len) : 0;
  std::vector<double> y(n);
  if (n > 0) y[0] = start;
  if (n > 1) y[1] = start + step;
  double delta = n > 1 ? y[1] - y[0] : step;
  for (int i = 2; i < n; ++i) y[i] = start + i * delta;
  return y;
}

std::vector<int64_t> discrete_timesteps(const SchedulerConfig& c, int steps) {
  const int T = c.num_train_timesteps;
  std::vector<int64_t> t;
  if (c.timestep_spacing == "linspace") {
    auto v = np_linspace(0, T - 1, steps + 1);
    for (int i = steps; i >= 1; --i) t.push_back(int64_t(std::nearbyint(v[i])));
  } else if (c.timestep_spacing == "leading") {
    int64_t ratio = T / (steps + 1);
    for (int i = steps; i >= 1; --i) t.push_back(i * ratio);
  } else {
    auto v = np_arange(T, 0, -double(T) / steps);
    for (double x : v) t.push_back(int64_t(std::nearbyint(x) - 1));
  }
  return t;
}

std::vector<double> alphas_cumprod(const SchedulerConfig& c) {
  auto betas = np_linspace(c.beta_start, c.beta_end, c.num_train_timesteps);
  std::vector<double> ac(betas.size());
  double p = 1.0;
  for (size_t i = 0; i < betas.size(); ++i) ac[i] = p = p * (1.0 - betas[i]);
  return ac;
}
}  // namespace

SamplingPlan make_plan(const SchedulerConfig& c, int steps, const std::array<int64_t, 4>& shape, int patch) {
  SamplingPlan plan;
  if (c.sampler == "flow_euler") {
    std::optional<double> mu;
    if (c.dynamic_shift) {
      double seq = c.shift_seq_len == "channels" ? double(shape[1])
                                                 : double((shape[2] / patch) * (shape[3] / patch));
      double m = (c.max_shift - c.base_shift) / double(c.max_seq_len - c.base_seq_len);
      mu = seq * m + c.base_shift - m * c.base_seq_len;
    }
    std::vector<double> s;
    if (c.sigma_precision == "float32") {
      auto lin = np_linspace(1.0, 1.0 / steps, steps);
      std::vector<float> f(steps);
      for (int i = 0; i < steps; ++i) f[i] = float(lin[i]);
      for (int i = 0; i < steps; ++i) {
        if (mu) {
          double e = std::exp(*mu);  // numpy: python float / (python float + (1 / f32 - 1)) in float32? see below
          // noise.py's twin: (math.exp(mu) / (math.exp(mu) + (1 / s - 1))).astype(np.float32); s is a float32
          // array, so 1 / s - 1 is float32 and the sum with a python float stays float32 (NEP 50)
          float inv = 1.0f / f[i] - 1.0f;
          float den = float(e) + inv;
          f[i] = float(e) / den;
        } else {
          float sh = float(c.flow_shift);
          f[i] = (sh * f[i]) / (1.0f + (sh - 1.0f) * f[i]);
        }
      }
      for (int i = 0; i < steps; ++i) plan.timesteps.push_back(double(f[i] * float(c.num_train_timesteps)));
      for (float v : f) s.push_back(double(v));
      s.push_back(0.0);
    } else {
      s = np_linspace(1.0, 0.0, steps + 1);
      if (mu) {
        double e = std::exp(*mu);
        for (int i = 0; i < steps; ++i) s[i] = e / (e + (1.0 / s[i] - 1.0));
      } else {
        for (auto& v : s) v = c.flow_shift * v / (1.0 + (c.flow_shift - 1.0) * v);
      }
      for (int i = 0; i < steps; ++i) plan.timesteps.push_back(s[i] * c.num_train_timesteps);
    }
    for (int i = 0; i < steps; ++i) plan.coefficients.push_back({0.0, 1.0, 1.0, s[i + 1] - s[i], 0.0});
    return plan;
  }
  auto t = discrete_timesteps(c, steps);
  auto ac = alphas_cumprod(c);
  for (auto v : t) plan.timesteps.push_back(double(v));
  if (c.sampler == "ddim") {
    for (int i = 0; i < steps; ++i) {
      double a = ac[t[i]];
      double a_prev = i + 1 < steps ? ac[t[i + 1]] : 1.0;
      double k = std::sqrt(1 - a_prev) / std::sqrt(1 - a);
      plan.coefficients.push_back({1 / std::sqrt(a), -std::sqrt(1 - a) / std::sqrt(a), k,
                                   std::sqrt(a_prev) - k * std::sqrt(a), 0.0});
    }
    return plan;
  }
  // dpmpp_2m
  std::vector<double> sig(steps + 1, 0.0), alpha(steps + 1), sigma(steps + 1), lam(steps + 1);
  for (int i = 0; i < steps; ++i) sig[i] = std::sqrt((1 - ac[t[i]]) / ac[t[i]]);
  for (int i = 0; i <= steps; ++i) {
    alpha[i] = 1.0 / std::sqrt(sig[i] * sig[i] + 1.0);
    sigma[i] = sig[i] * alpha[i];
    lam[i] = std::log(alpha[i]) - std::log(sigma[i]);
  }
  for (int i = 0; i < steps; ++i) {
    double p_x = 1.0 / alpha[i], p_m = -sigma[i] / alpha[i];
    if (sigma[i + 1] == 0.0) {
      plan.coefficients.push_back({p_x, p_m, 0.0, 1.0, 0.0});
      continue;
    }
    double h = lam[i + 1] - lam[i];
    double phi = alpha[i + 1] * std::expm1(-h);
    double q_x = sigma[i + 1] / sigma[i];
    if (i == 0) {
      plan.coefficients.push_back({p_x, p_m, q_x, -phi, 0.0});
    } else {
      double r0 = (lam[i] - lam[i - 1]) / h;
      plan.coefficients.push_back({p_x, p_m, q_x, -phi * (1.0 + 0.5 / r0), phi * 0.5 / r0});
    }
  }
  return plan;
}

}  // namespace lidit_impl
