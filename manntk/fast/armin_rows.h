// The ARMIN cell's elementwise work for one row (one sequence of the batch) at one step,
// shared by the step operators (armin_fused.cpp) and the sequence operators
// (armin_sequence.cpp). Gate layout of W_go's output: [i, f, g, o_h, o_r] (o_r only with
// read_output), widths d_h, d_h, d_h, d_h, d_r; W_ig's output: [g_h, g_r], widths d_h, d_r.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace manntk_armin {

// Saturated activations are exactly +-1, as correctly rounded arithmetic gives: the
// vectorised exp and tanh that -ffast-math allows may round them to 1 - ulp, and then the
// derivatives s (1 - s) and 1 - t^2, which are ~0 in exact arithmetic, come out near eps
// and, scaled by a large upstream gradient, leak into weights that should get none.
// 1 - tanh(x) = 2 e^{-2x} / (1 + e^{-2x}) is under a quarter of eps (so tanh rounds to 1)
// from x = ln(8 / eps) / 2 on, and 1 - sigmoid(x) ~ e^{-x} from x = ln(4 / eps):
// 9.02 and 17.33 in float, 19.07 and 37.43 in double (rounded up).
template <typename T>
struct Saturation;
template <>
struct Saturation<float> {
  static constexpr float tanh = 9.02f, sigmoid = 17.33f;
};
template <>
struct Saturation<double> {
  static constexpr double tanh = 19.07, sigmoid = 37.43;
};

template <typename T>
inline T tanh(T x) {
  constexpr T at = Saturation<T>::tanh;
  return x >= at ? T(1) : x <= -at ? T(-1) : std::tanh(x);
}

// -ffast-math also lets the compiler assume that nothing overflows: 1 / (1 + exp(-x)) with
// exp at infinity became NaN (the division is a reciprocal estimate refined by a Newton
// step), so the argument is clamped below where the result no longer changes:
// sigmoid(-80) is 1.8e-35.
template <typename T>
inline T sigmoid(T x) {
  if (x >= Saturation<T>::sigmoid) return T(1);
  x = std::max(x, T(-80));
  return T(1) / (T(1) + std::exp(-x));
}

// Row kernels: plain functions of restrict pointers, so that the compiler vectorizes every
// loop (inside the dispatch lambdas it did not; measured 3x slower).

template <typename T>
void gates_in_row(const T* __restrict__ x, const T* __restrict__ bias, const T* __restrict__ h, const T* __restrict__ r,
                  T* __restrict__ s, T* __restrict__ g, int64_t dh, int64_t dr) {
  for (int64_t j = 0; j < dh + dr; ++j) s[j] = sigmoid(x[j] + bias[j]);
  for (int64_t j = 0; j < dh; ++j) g[j] = s[j] * h[j];
  for (int64_t j = 0; j < dr; ++j) g[dh + j] = s[dh + j] * r[j];
}

template <typename T>
void cell_out_row(const T* __restrict__ x, const T* __restrict__ bias, const T* __restrict__ h, const T* __restrict__ r,
                  T* __restrict__ a, T* __restrict__ hn, T* __restrict__ o, int64_t dh, int64_t dr, T fb, bool squash,
                  bool read_output) {
  const int64_t rest = read_output ? dh + dr : dh;  // o_h (and o_r)
  for (int64_t j = 0; j < dh; ++j) a[j] = sigmoid(x[j] + bias[j]);
  for (int64_t j = 0; j < dh; ++j) a[dh + j] = sigmoid(x[dh + j] + bias[dh + j] + fb);
  for (int64_t j = 0; j < dh; ++j) a[2 * dh + j] = tanh(x[2 * dh + j] + bias[2 * dh + j]);
  for (int64_t j = 0; j < rest; ++j) a[3 * dh + j] = sigmoid(x[3 * dh + j] + bias[3 * dh + j]);
  for (int64_t j = 0; j < dh; ++j) hn[j] = a[dh + j] * h[j] + a[j] * a[2 * dh + j];
  if (squash) {
    for (int64_t j = 0; j < dh; ++j) hn[j] = tanh(hn[j]);
  }
  for (int64_t j = 0; j < dh; ++j) o[j] = a[3 * dh + j] * tanh(hn[j]);
  if (read_output) {
    for (int64_t j = 0; j < dr; ++j) o[dh + j] = a[4 * dh + j] * tanh(r[j]);
  }
}

template <typename T>
void cell_out_backward_row(const T* __restrict__ dout, const T* __restrict__ dhn, const T* __restrict__ a,
                           const T* __restrict__ h, const T* __restrict__ r, const T* __restrict__ hn, T* __restrict__ dg,
                           T* __restrict__ dhr, int64_t dh, int64_t dr, bool squash, bool read_output) {
  // tanh(h_new) and tanh(r) first, in the slots where they are used
  for (int64_t j = 0; j < dh; ++j) dg[3 * dh + j] = tanh(hn[j]);
  if (read_output) {
    for (int64_t j = 0; j < dr; ++j) dhr[dh + j] = tanh(r[j]);
  }
  // dc, the gradient of c = f h + i g, kept in dhr[:d_h] until it becomes dc * f
  for (int64_t j = 0; j < dh; ++j) {
    const T oh = a[3 * dh + j], th = dg[3 * dh + j];
    dhr[j] = dhn[j] + dout[j] * oh * (T(1) - th * th);
    dg[3 * dh + j] = dout[j] * th * oh * (T(1) - oh);
  }
  if (squash) {  // h_new = tanh(c)
    for (int64_t j = 0; j < dh; ++j) dhr[j] *= T(1) - hn[j] * hn[j];
  }
  for (int64_t j = 0; j < dh; ++j) {
    const T i = a[j], f = a[dh + j], g = a[2 * dh + j], dc = dhr[j];
    dg[j] = dc * g * i * (T(1) - i);
    dg[dh + j] = dc * h[j] * f * (T(1) - f);
    dg[2 * dh + j] = dc * i * (T(1) - g * g);
    dhr[j] = dc * f;
  }
  if (read_output) {
    for (int64_t j = 0; j < dr; ++j) {
      const T orr = a[4 * dh + j], tr = dhr[dh + j], d = dout[dh + j];
      dg[4 * dh + j] = d * tr * orr * (T(1) - orr);
      dhr[dh + j] = d * orr * (T(1) - tr * tr);
    }
  } else {
    for (int64_t j = 0; j < dr; ++j) dhr[dh + j] = T(0);
  }
}

template <typename T>
void gates_in_backward_row(const T* __restrict__ dg, const T* __restrict__ s, const T* __restrict__ h,
                           const T* __restrict__ r, T* __restrict__ di, T* __restrict__ dhr, int64_t dh, int64_t dr) {
  for (int64_t j = 0; j < dh; ++j) {
    di[j] = dg[j] * h[j] * s[j] * (T(1) - s[j]);
    dhr[j] += dg[j] * s[j];
  }
  for (int64_t j = 0; j < dr; ++j) {
    di[dh + j] = dg[dh + j] * r[j] * s[dh + j] * (T(1) - s[dh + j]);
    dhr[dh + j] += dg[dh + j] * s[dh + j];
  }
}

}  // namespace manntk_armin
