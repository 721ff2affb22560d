// A whole chunk of the NTM-style layer (lstm cell + ntm read addressing + erase_add write with
// its own ntm head) on the CPU, forward and backward, as two operators
// (manntk/fast/ntm_sequence.py).
//
// One NTM head, from its projection q = W_q [x_t, h] + b_q = [k, beta, g, s, gamma]
// (g, s, gamma only with their options), on M = M_{t-1} and its previous weights w_{t-1}:
//   |k| = sqrt(sum k^2 + eps^2)      |M_i| = sqrt(sum M_i^2 + eps^2)
//   K_i = k . M_i / (|k| |M_i| + eps)
//   w^c = softmax(softplus(beta) K)
//   w^g = sigmoid(g) w^c + (1 - sigmoid(g)) w_{t-1}           (interpolation)
//   w~_i = sum_{d=-k..k} softmax(s)_d w^g_{(i - d) mod N}      (shift)
//   w_i = (w~_i + eps)^gamma' / sum_j (w~_j + eps)^gamma'      (sharpening; gamma' = 1 + softplus(gamma))
// softplus as torch's: x past 20 is x itself.
//
// Per step t, for every row b of the batch, read "before" (the ARMIN paper's order):
//   w^r_t = read head of [x_t, h_{t-1}] on M_{t-1}, w^r_{t-1}
//   r_t   = w^r_t M_{t-1}
//   [i, f, g, o] = W [x_t, h_{t-1}, r_t] + b
//   c_t = sigmoid(f + forget_bias) c_{t-1} + sigmoid(i) tanh(g),   h_t = sigmoid(o) tanh(c_t)
//   w^w_t = write head of [x_t, h_t] on M_{t-1}, w^w_{t-1}
//   [e, a] = W_ea h_t + b_ea,  e <- sigmoid(e),  a <- tanh(a) (or a itself: add linear)
//   M_t = M_{t-1} * (1 - w^w_t e^T) + w^w_t a^T
//   o_t = [h_t, r_t]
// read "after" (pytorch-ntm's order): the cell runs first on [x_t, h_{t-1}, r_{t-1}], then the
// read head keys from [x_t, h_t] on M_{t-1}; the write and o_t = [h_t, r_t] are the same.
//
// The four products of a step (read head, gates, write head, [e, a]) run over the batch
// (products.h); everything between them is one pass over each row. The memory before every step is
// kept (T x B x N x D) for backward, which runs the steps in reverse with the same products
// (transposed), recomputes each head's intermediate values from its kept projection, and adds
// every weight's gradient in one product over all T * B rows at the end.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <utility>
#include <vector>

#include "armin_rows.h"
#include "products.h"
#include "workspace.h"

namespace {

template <typename T>
inline T sig(T x) {
  return manntk_armin::sigmoid(x);
}

template <typename T>
inline T th(T x) {
  return manntk_armin::tanh(x);
}

// torch.nn.functional.softplus (beta 1, threshold 20) and its derivative
template <typename T>
inline T softplus(T x) {
  return x > T(20) ? x : std::log1p(std::exp(x));
}

template <typename T>
inline T softplus_grad(T x) {
  if (x > T(20)) return T(1);
  const T z = std::exp(x);
  return z / (z + T(1));
}

template <typename F>
void rows(int64_t B, const F& body) {
  at::parallel_for(0, B, 16, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) body(b);
  });
}

template <typename T>
void copy_row(const T* __restrict__ from, T* __restrict__ to, int64_t n) {
  for (int64_t j = 0; j < n; ++j) to[j] = from[j];
}

template <typename T>
void add_row(const T* __restrict__ from, T* __restrict__ to, int64_t n) {
  for (int64_t j = 0; j < n; ++j) to[j] += from[j];
}

template <typename T>
T dot(const T* __restrict__ a, const T* __restrict__ b, int64_t n) {
  T sum = 0;
  for (int64_t j = 0; j < n; ++j) sum += a[j] * b[j];
  return sum;
}

inline int64_t wrap(int64_t i, int64_t n) {
  const int64_t m = i % n;
  return m < 0 ? m + n : m;
}

// One head's options and the layout of its projection [k (D), beta, g, s (2k+1), gamma].
struct Head {
  bool interpolation;
  int64_t shift;
  bool sharpen;
  double eps;
  int64_t D;
  int64_t shifts() const { return shift ? 2 * shift + 1 : 0; }
  int64_t gate() const { return D + 1; }
  int64_t shift_at() const { return D + 1 + (interpolation ? 1 : 0); }
  int64_t gamma() const { return shift_at() + shifts(); }
  int64_t width() const { return gamma() + (sharpen ? 1 : 0); }
  // scratch per row: |M_i|, k . M_i, K_i, w^c, w^g, w~ (N each), softmax(s), and 2 N for backward
  int64_t scratch(int64_t N) const { return 8 * N + shifts() + 4; }
};

// The head's forward for one row: q its projection (bias added), M [N, D], w_prev [N] -> w [N].
// The intermediate values stay in `scratch` (Head::scratch) for address_backward.
template <typename T>
void address_forward(const Head& hd, const T* __restrict__ q, const T* __restrict__ M, const T* __restrict__ w_prev,
                     T* __restrict__ w, T* __restrict__ scratch, int64_t N) {
  const int64_t D = hd.D, S = hd.shifts();
  const T eps = static_cast<T>(hd.eps);
  T *mnorm = scratch, *dots = mnorm + N, *cosine = dots + N, *wc = cosine + N, *wg = wc + N, *wt = wg + N, *s = wt + N;
  const T knorm = std::sqrt(dot(q, q, D) + eps * eps);
  for (int64_t i = 0; i < N; ++i) {
    const T* Mi = M + i * D;
    mnorm[i] = std::sqrt(dot(Mi, Mi, D) + eps * eps);
    dots[i] = dot(Mi, q, D);
    cosine[i] = dots[i] / (knorm * mnorm[i] + eps);
  }
  const T beta = softplus(q[D]);
  T top = beta * cosine[0];
  for (int64_t i = 1; i < N; ++i) top = std::max(top, beta * cosine[i]);
  T total = 0;
  for (int64_t i = 0; i < N; ++i) {
    wc[i] = std::exp(beta * cosine[i] - top);
    total += wc[i];
  }
  for (int64_t i = 0; i < N; ++i) wc[i] /= total;
  if (hd.interpolation) {
    const T g = sig(q[hd.gate()]);
    for (int64_t i = 0; i < N; ++i) wg[i] = g * wc[i] + (T(1) - g) * w_prev[i];
  } else {
    copy_row(wc, wg, N);
  }
  if (S) {
    const T* raw = q + hd.shift_at();
    T stop = raw[0];
    for (int64_t j = 1; j < S; ++j) stop = std::max(stop, raw[j]);
    T stotal = 0;
    for (int64_t j = 0; j < S; ++j) {
      s[j] = std::exp(raw[j] - stop);
      stotal += s[j];
    }
    for (int64_t j = 0; j < S; ++j) s[j] /= stotal;
    // w~_i = sum_j s_j w^g_{(i - (j - k)) mod N}
    for (int64_t i = 0; i < N; ++i) {
      T sum = 0;
      for (int64_t j = 0; j < S; ++j) sum += s[j] * wg[wrap(i - j + hd.shift, N)];
      wt[i] = sum;
    }
  } else {
    copy_row(wg, wt, N);
  }
  if (hd.sharpen) {
    // as a softmax of gamma' log(w~_i + eps), the largest term first: a large gamma' cannot
    // underflow every power to 0 (and 0 / 0), as the plain path
    const T gamma = T(1) + softplus(q[hd.gamma()]);
    T top = -std::numeric_limits<T>::infinity();
    for (int64_t i = 0; i < N; ++i) {
      w[i] = gamma * std::log(wt[i] + eps);
      top = std::max(top, w[i]);
    }
    T sum = 0;
    for (int64_t i = 0; i < N; ++i) {
      w[i] = std::exp(w[i] - top);
      sum += w[i];
    }
    for (int64_t i = 0; i < N; ++i) w[i] /= sum;
  } else {
    copy_row(wt, w, N);
  }
}

// The head's backward for one row, after address_forward filled `scratch` and w: dw the
// gradient of w (overwritten) -> dq (the projection's, written), dM += the content
// addressing's part, dw_prev (written; only with interpolation).
template <typename T>
void address_backward(const Head& hd, const T* __restrict__ q, const T* __restrict__ M, const T* __restrict__ w_prev,
                      const T* __restrict__ w, T* __restrict__ scratch, T* __restrict__ dw, T* __restrict__ dq,
                      T* __restrict__ dM, T* __restrict__ dw_prev, int64_t N) {
  const int64_t D = hd.D, S = hd.shifts();
  const T eps = static_cast<T>(hd.eps);
  T *mnorm = scratch, *dots = mnorm + N, *cosine = dots + N, *wc = cosine + N, *wg = wc + N, *wt = wg + N, *s = wt + N;
  T* other = s + S + 4;  // N values
  T* g = dw;             // the gradient of the current stage, in place
  if (hd.sharpen) {
    // w = u / sum u with u_i = (w~_i + eps)^gamma': dw~_i = (dw_i - w.dw) gamma' w_i / (w~_i + eps),
    // dgamma' = sum_i (dw_i - w.dw) w_i log(w~_i + eps)
    const T gamma = T(1) + softplus(q[hd.gamma()]);
    const T mean = dot(g, w, N);
    T dgamma = 0;
    for (int64_t i = 0; i < N; ++i) {
      const T base = wt[i] + eps, centred = (g[i] - mean) * w[i];
      dgamma += centred * std::log(base);
      g[i] = centred * gamma / base;
    }
    dq[hd.gamma()] = dgamma * softplus_grad(q[hd.gamma()]);
  }
  if (S) {
    // ds_j = sum_i dw~_i w^g_{(i - j + k) mod N};  dw^g_m = sum_j s_j dw~_{(m + j - k) mod N}
    T* ds = dq + hd.shift_at();
    for (int64_t j = 0; j < S; ++j) {
      T sum = 0;
      for (int64_t i = 0; i < N; ++i) sum += g[i] * wg[wrap(i - j + hd.shift, N)];
      ds[j] = sum;
    }
    for (int64_t m = 0; m < N; ++m) {
      T sum = 0;
      for (int64_t j = 0; j < S; ++j) sum += s[j] * g[wrap(m + j - hd.shift, N)];
      other[m] = sum;
    }
    copy_row(other, g, N);
    const T mean = dot(s, ds, S);
    for (int64_t j = 0; j < S; ++j) ds[j] = s[j] * (ds[j] - mean);
  }
  if (hd.interpolation) {
    const T gate = sig(q[hd.gate()]);
    T dgate = 0;
    for (int64_t i = 0; i < N; ++i) {
      dgate += g[i] * (wc[i] - w_prev[i]);
      dw_prev[i] = (T(1) - gate) * g[i];
      g[i] *= gate;
    }
    dq[hd.gate()] = dgate * gate * (T(1) - gate);
  }
  // w^c = softmax(z), z = beta K: dz_i = w^c_i (dw^c_i - w^c . dw^c)
  const T mean = dot(wc, g, N);
  const T beta = softplus(q[D]);
  T dbeta = 0;
  for (int64_t i = 0; i < N; ++i) {
    const T dz = wc[i] * (g[i] - mean);
    dbeta += dz * cosine[i];
    g[i] = beta * dz;  // dK_i
  }
  dq[D] = dbeta * softplus_grad(q[D]);
  // K_i = dot_i / den_i, den_i = |k| |M_i| + eps
  const T knorm = std::sqrt(dot(q, q, D) + eps * eps);
  T* dk = dq;
  for (int64_t j = 0; j < D; ++j) dk[j] = 0;
  T dknorm = 0;
  for (int64_t i = 0; i < N; ++i) {
    const T den = knorm * mnorm[i] + eps;
    const T ddot = g[i] / den, dden = -ddot * cosine[i];
    dknorm += dden * mnorm[i];
    const T dmnorm_over = dden * knorm / mnorm[i];
    const T* Mi = M + i * D;
    T* dMi = dM + i * D;
    for (int64_t j = 0; j < D; ++j) {
      dk[j] += ddot * Mi[j];
      dMi[j] += ddot * q[j] + dmnorm_over * Mi[j];
    }
  }
  const T scale = dknorm / knorm;
  for (int64_t j = 0; j < D; ++j) dk[j] += scale * q[j];
}

void check(const at::Tensor& t, const at::Tensor& like, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() && t.scalar_type() == like.scalar_type(), "ntm sequence: ", name,
              " must be a contiguous CPU tensor of x's dtype");
}

// Forward. keep: whether backward will run (else the buffers only it reads hold one step).
// in_place: the caller gives m0 up; without backward the memory is written into it.
// Returns {out [T,B,dh+D] ([h_t, r_t]), h_T, c_T, w^r_T, w^w_T, M_T, r_T, and what backward
// needs: xhr [T,B,K] (the cell's input), xr, xw [T,B,di+dh] (the heads' inputs), qr [T,B,Pr],
// qw [T,B,Pw] (the heads' projections), ea [T,B,2D] (e, a), act [T,B,4dh] (the gates'
// activations), cs [T,B,dh] (c_t), wr, ww [T,B,N] (the heads' weights), history [T,B,N,D] (M_{t-1})}.
std::vector<at::Tensor> ntm_forward(const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& wr0,
                                    const at::Tensor& ww0, const at::Tensor& m0, const std::optional<at::Tensor>& read0_,
                                    const at::Tensor& W, const at::Tensor& b, const at::Tensor& W_r, const at::Tensor& b_r,
                                    const at::Tensor& W_w, const at::Tensor& b_w, const at::Tensor& W_ea,
                                    const at::Tensor& b_ea, double forget_bias, bool after, bool r_interpolation,
                                    int64_t r_shift, bool r_sharpen, double r_eps, bool w_interpolation, int64_t w_shift,
                                    bool w_sharpen, double w_eps, bool linear_add, bool keep, bool in_place) {
  TORCH_CHECK(x.dim() == 3 && x.size(0) > 0, "ntm sequence: x must be [T, B, d_i] with T > 0, got ", x.sizes());
  TORCH_CHECK(m0.dim() == 3, "ntm sequence: the memory must be [B, N, D], got ", m0.sizes());
  const int64_t T = x.size(0), B = x.size(1), di = x.size(2), N = m0.size(1), D = m0.size(2);
  const int64_t dh = W.size(0) / 4, K = di + dh + D, Kh = di + dh, G = 4 * dh, O = dh + D;
  const Head hr{r_interpolation, r_shift, r_sharpen, r_eps, D}, hw{w_interpolation, w_shift, w_sharpen, w_eps, D};
  const int64_t Pr = hr.width(), Pw = hw.width();
  const at::Tensor read0 = after ? read0_.value_or(at::Tensor()) : at::Tensor();
  check(x, x, "x");
  const std::vector<std::pair<const at::Tensor*, const char*>> inputs{
      {&h0, "h"},   {&c0, "c"}, {&wr0, "the read weights"}, {&ww0, "the write weights"}, {&m0, "the memory"},
      {&W, "W"},    {&b, "b"},  {&W_r, "W_r"},             {&b_r, "b_r"},                 {&W_w, "W_w"},
      {&b_w, "b_w"}, {&W_ea, "W_ea"}, {&b_ea, "b_ea"}};
  for (const auto& [t, name] : inputs) check(*t, x, name);
  TORCH_CHECK(W.dim() == 2 && W.size(0) == G && W.size(1) == K && b.numel() == G, "ntm sequence: W ", W.sizes(),
              " does not fit inputs ", di, ", hidden ", dh, ", slot width ", D);
  TORCH_CHECK(W_r.dim() == 2 && W_r.size(0) == Pr && W_r.size(1) == Kh && b_r.numel() == Pr && W_w.dim() == 2 &&
                  W_w.size(0) == Pw && W_w.size(1) == Kh && b_w.numel() == Pw,
              "ntm sequence: a head's projection ", W_r.sizes(), " or ", W_w.sizes(), " does not fit its options");
  TORCH_CHECK(W_ea.dim() == 2 && W_ea.size(0) == 2 * D && W_ea.size(1) == dh && b_ea.numel() == 2 * D, "ntm sequence: W_ea ",
              W_ea.sizes(), " must map h to [e, a]");
  // a state of another batch size, memory or model must not be read past its end
  TORCH_CHECK(h0.sizes() == at::IntArrayRef({B, dh}) && c0.sizes() == at::IntArrayRef({B, dh}), "ntm sequence: h and c must be [",
              B, ", ", dh, "], got ", h0.sizes(), " and ", c0.sizes());
  TORCH_CHECK(m0.size(0) == B && wr0.sizes() == at::IntArrayRef({B, N}) && ww0.sizes() == at::IntArrayRef({B, N}),
              "ntm sequence: the memory ", m0.sizes(), " and the heads' weights ", wr0.sizes(), ", ", ww0.sizes(),
              " must hold ", B, " rows of ", N, " slots");
  if (after) {
    TORCH_CHECK(read0.defined(), "ntm sequence: reading after the cell needs the previous read");
    check(read0, x, "the previous read");
    TORCH_CHECK(read0.sizes() == at::IntArrayRef({B, D}), "ntm sequence: the previous read must be [", B, ", ", D, "], got ",
                read0.sizes());
  }
  auto opts = x.options();
  const int64_t Tk = keep ? T : 1;  // without backward, the buffers only it reads hold one step
  auto out = at::empty({T, B, O}, opts);
  auto xhr = manntk_workspace::empty("ntm xhr", {Tk, B, K}, opts);
  auto xr = manntk_workspace::empty("ntm xr", {Tk, B, Kh}, opts);
  auto xw = manntk_workspace::empty("ntm xw", {Tk, B, Kh}, opts);
  auto qr = manntk_workspace::empty("ntm qr", {Tk, B, Pr}, opts);
  auto qw = manntk_workspace::empty("ntm qw", {Tk, B, Pw}, opts);
  auto ea = manntk_workspace::empty("ntm ea", {Tk, B, 2 * D}, opts);
  auto act = manntk_workspace::empty("ntm act", {Tk, B, G}, opts);
  auto cs = manntk_workspace::empty("ntm cs", {T, B, dh}, opts);
  auto wr = manntk_workspace::empty("ntm wr", {T, B, N}, opts), ww = manntk_workspace::empty("ntm ww", {T, B, N}, opts);
  auto history = manntk_workspace::empty("ntm history", {Tk, B, N, D}, opts);
  auto memory = (in_place && !keep) ? m0 : m0.clone();
  auto gates = at::empty({B, G}, opts);
  const int64_t scratch_width = std::max(hr.scratch(N), hw.scratch(N));
  auto scratch = at::empty({B, scratch_width}, opts);
  const auto W_t = W.t(), Wr_t = W_r.t(), Ww_t = W_w.t(), Wea_t = W_ea.t();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ntm_sequence_forward", [&] {
    using T_ = scalar_t;
    const T_ fb = static_cast<T_>(forget_bias);
    const T_ *px = x.data_ptr<T_>(), *ph0 = h0.data_ptr<T_>(), *pc0 = c0.data_ptr<T_>(), *pwr0 = wr0.data_ptr<T_>(),
             *pww0 = ww0.data_ptr<T_>(), *pread0 = after ? read0.data_ptr<T_>() : nullptr, *pb = b.data_ptr<T_>(),
             *pbr = b_r.data_ptr<T_>(), *pbw = b_w.data_ptr<T_>(), *pbea = b_ea.data_ptr<T_>();
    T_ *pout = out.data_ptr<T_>(), *pxhr = xhr.data_ptr<T_>(), *pxr = xr.data_ptr<T_>(), *pxw = xw.data_ptr<T_>(),
       *pqr = qr.data_ptr<T_>(), *pqw = qw.data_ptr<T_>(), *pea = ea.data_ptr<T_>(), *pact = act.data_ptr<T_>(),
       *pcs = cs.data_ptr<T_>(), *pwr = wr.data_ptr<T_>(), *pww = ww.data_ptr<T_>(), *phist = history.data_ptr<T_>(),
       *pm = memory.data_ptr<T_>(), *pgates = gates.data_ptr<T_>(), *pscratch = scratch.data_ptr<T_>();
    for (int64_t t = 0; t < T; ++t) {
      const int64_t row0 = t * B, krow0 = keep ? row0 : 0;  // krow0: rows of the buffers only backward reads
      const int64_t ks = keep ? t : 0;
      auto h_prev = [&](int64_t b) { return t == 0 ? ph0 + b * dh : pout + (row0 - B + b) * O; };
      auto c_prev = [&](int64_t b) { return t == 0 ? pc0 + b * dh : pcs + (row0 - B + b) * dh; };
      auto wr_prev = [&](int64_t b) { return t == 0 ? pwr0 + b * N : pwr + (row0 - B + b) * N; };
      auto ww_prev = [&](int64_t b) { return t == 0 ? pww0 + b * N : pww + (row0 - B + b) * N; };
      // the read head on [x, hidden] and M_{t-1}: w^r_t and r_t (into o_t, and the cell's input before the cell)
      auto read = [&](int64_t b) {
        T_* q = pqr + (krow0 + b) * Pr;
        add_row(pbr, q, Pr);
        const T_* mb = pm + b * N * D;
        if (keep) copy_row(mb, phist + (krow0 + b) * N * D, N * D);
        T_* w = pwr + (row0 + b) * N;
        address_forward(hr, q, mb, wr_prev(b), w, pscratch + b * scratch_width, N);
        T_* r = pout + (row0 + b) * O + dh;
        for (int64_t k = 0; k < D; ++k) r[k] = 0;
        for (int64_t i = 0; i < N; ++i) {
          const T_ wi = w[i];
          const T_* Mi = mb + i * D;
          for (int64_t k = 0; k < D; ++k) r[k] += wi * Mi[k];
        }
        if (!after) copy_row(r, pxhr + (krow0 + b) * K + di + dh, D);
      };
      // the cell on xhr's row: the gates, c_t, h_t (into o_t) and the heads' input [x_t, h_t]
      auto cell = [&](int64_t b) {
        const T_* z = pgates + b * G;
        T_* a = pact + (krow0 + b) * G;
        const T_* cp = c_prev(b);
        T_* c = pcs + (row0 + b) * dh;
        T_* h = pout + (row0 + b) * O;
        for (int64_t j = 0; j < dh; ++j) {
          const T_ i = sig(z[j] + pb[j]), f = sig(z[dh + j] + pb[dh + j] + fb), g = th(z[2 * dh + j] + pb[2 * dh + j]),
                   o = sig(z[3 * dh + j] + pb[3 * dh + j]);
          a[j] = i, a[dh + j] = f, a[2 * dh + j] = g, a[3 * dh + j] = o;
          c[j] = f * cp[j] + i * g;
          h[j] = o * th(c[j]);
        }
        T_* row = pxw + (krow0 + b) * Kh;
        copy_row(px + (row0 + b) * di, row, di);
        copy_row(h, row + di, dh);
        if (after) copy_row(row, pxr + (krow0 + b) * Kh, Kh);
      };
      // the write head on [x_t, h_t] and M_{t-1}, then the erase and add
      auto write = [&](int64_t b) {
        T_* q = pqw + (krow0 + b) * Pw;
        add_row(pbw, q, Pw);
        T_* mb = pm + b * N * D;
        T_* w = pww + (row0 + b) * N;
        address_forward(hw, q, mb, ww_prev(b), w, pscratch + b * scratch_width, N);
        T_* e = pea + (krow0 + b) * 2 * D;
        T_* a = e + D;
        for (int64_t k = 0; k < D; ++k) {
          e[k] = sig(e[k] + pbea[k]);
          a[k] = linear_add ? a[k] + pbea[D + k] : th(a[k] + pbea[D + k]);
        }
        for (int64_t i = 0; i < N; ++i) {
          const T_ wi = w[i];
          T_* Mi = mb + i * D;
          for (int64_t k = 0; k < D; ++k) Mi[k] = Mi[k] * (T_(1) - wi * e[k]) + wi * a[k];
        }
      };
      if (!after) {
        rows(B, [&](int64_t b) {  // [x_t, h_{t-1}]
          T_* row = pxr + (krow0 + b) * Kh;
          copy_row(px + (row0 + b) * di, row, di);
          copy_row(h_prev(b), row + di, dh);
          copy_row(row, pxhr + (krow0 + b) * K, Kh);
        });
        manntk_products::mm_out(qr[ks], xr[ks], Wr_t);
        rows(B, read);
        manntk_products::mm_out(gates, xhr[ks], W_t);
        rows(B, cell);
        manntk_products::mm_out(qw[ks], xw[ks], Ww_t);
        manntk_products::mm_out(ea[ks], xw[ks].narrow(1, di, dh), Wea_t);
        rows(B, write);
      } else {
        rows(B, [&](int64_t b) {  // [x_t, h_{t-1}, r_{t-1}]
          T_* row = pxhr + (krow0 + b) * K;
          copy_row(px + (row0 + b) * di, row, di);
          copy_row(h_prev(b), row + di, dh);
          copy_row(t == 0 ? pread0 + b * D : pout + (row0 - B + b) * O + dh, row + di + dh, D);
        });
        manntk_products::mm_out(gates, xhr[ks], W_t);
        rows(B, cell);
        manntk_products::mm_out(qr[ks], xr[ks], Wr_t);
        manntk_products::mm_out(qw[ks], xw[ks], Ww_t);
        manntk_products::mm_out(ea[ks], xw[ks].narrow(1, di, dh), Wea_t);
        rows(B, [&](int64_t b) {
          read(b);
          write(b);
        });
      }
    }
  });
  auto last = out[T - 1];
  return {out,  last.narrow(1, 0, dh).clone(), cs[T - 1].clone(), wr[T - 1].clone(), ww[T - 1].clone(), memory,
          last.narrow(1, dh, D).clone(), xhr, xr, xw, qr, qw, ea, act, cs, wr, ww, history};
}

// Backward: the gradients of x, h_0, c_0, w^r_0, w^w_0, M_0, r_0 (read after; else empty) and
// of W, b, W_r, b_r, W_w, b_w, W_ea, b_ea. The d_ arguments are the gradients of the forward's
// outputs (zeros when undefined).
std::vector<at::Tensor> ntm_backward(const std::optional<at::Tensor>& d_out_, const std::optional<at::Tensor>& d_h_,
                                     const std::optional<at::Tensor>& d_c_, const std::optional<at::Tensor>& d_wr_,
                                     const std::optional<at::Tensor>& d_ww_, const std::optional<at::Tensor>& d_m_,
                                     const std::optional<at::Tensor>& d_read_, const at::Tensor& W, const at::Tensor& W_r,
                                     const at::Tensor& W_w, const at::Tensor& W_ea, const at::Tensor& c0,
                                     const at::Tensor& wr0, const at::Tensor& ww0, const at::Tensor& xhr,
                                     const at::Tensor& xr, const at::Tensor& xw, const at::Tensor& qr, const at::Tensor& qw,
                                     const at::Tensor& ea, const at::Tensor& act, const at::Tensor& cs, const at::Tensor& wr,
                                     const at::Tensor& ww, const at::Tensor& history, bool after, bool r_interpolation,
                                     int64_t r_shift, bool r_sharpen, double r_eps, bool w_interpolation, int64_t w_shift,
                                     bool w_sharpen, double w_eps, bool linear_add) {
  const int64_t T = xhr.size(0), B = xhr.size(1), K = xhr.size(2), N = history.size(2), D = history.size(3);
  const int64_t dh = W.size(0) / 4, di = K - dh - D, Kh = di + dh, G = 4 * dh, O = dh + D;
  const Head hr{r_interpolation, r_shift, r_sharpen, r_eps, D}, hw{w_interpolation, w_shift, w_sharpen, w_eps, D};
  const int64_t Pr = hr.width(), Pw = hw.width();
  auto opts = xhr.options();
  auto given = [&](const std::optional<at::Tensor>& g, at::IntArrayRef shape) {
    if (g.has_value() && g->defined()) {
      TORCH_CHECK(g->sizes() == shape, "ntm sequence: a gradient of shape ", g->sizes(), " where ", shape, " was expected");
      return g->contiguous().clone();
    }
    return at::zeros(shape, opts);
  };
  const at::Tensor d_out = given(d_out_, {T, B, O});
  auto dh_run = given(d_h_, {B, dh}), dc_run = given(d_c_, {B, dh}), dwr_run = given(d_wr_, {B, N}),
       dww_run = given(d_ww_, {B, N}), dm = given(d_m_, {B, N, D});
  // r_T, the read of the last step (with read before the cell, also o_T's second part)
  auto dread_run = given(d_read_, {B, D});
  auto dx = at::zeros({T, B, di}, opts);
  auto dqr = manntk_workspace::empty("ntm dqr", {T, B, Pr}, opts);
  auto dqw = manntk_workspace::empty("ntm dqw", {T, B, Pw}, opts);
  auto dea = manntk_workspace::empty("ntm dea", {T, B, 2 * D}, opts);
  auto dgates = manntk_workspace::empty("ntm dgates", {T, B, G}, opts);
  auto dxr = at::empty({B, Kh}, opts), dxw = at::empty({B, Kh}, opts), dhea = at::empty({B, dh}, opts),
       dxhr = at::empty({B, K}, opts);
  const int64_t scratch_width = std::max(hr.scratch(N), hw.scratch(N));
  auto scratch = at::empty({B, scratch_width + 2 * N}, opts);  // the head's scratch, its recomputed w and dw
  AT_DISPATCH_FLOATING_TYPES(xhr.scalar_type(), "ntm_sequence_backward", [&] {
    using T_ = scalar_t;
    const T_ *pdout = d_out.data_ptr<T_>(), *pc0 = c0.data_ptr<T_>(), *pwr0 = wr0.data_ptr<T_>(), *pww0 = ww0.data_ptr<T_>(),
             *pxhr = xhr.data_ptr<T_>(), *pxw = xw.data_ptr<T_>(), *pqr = qr.data_ptr<T_>(), *pqw = qw.data_ptr<T_>(),
             *pea = ea.data_ptr<T_>(), *pact = act.data_ptr<T_>(), *pcs = cs.data_ptr<T_>(), *pwr = wr.data_ptr<T_>(),
             *pww = ww.data_ptr<T_>(), *phist = history.data_ptr<T_>();
    T_ *pdh = dh_run.data_ptr<T_>(), *pdc = dc_run.data_ptr<T_>(), *pdwr = dwr_run.data_ptr<T_>(),
       *pdww = dww_run.data_ptr<T_>(), *pdm = dm.data_ptr<T_>(), *pdread = dread_run.data_ptr<T_>(),
       *pdx = dx.data_ptr<T_>(), *pdqr = dqr.data_ptr<T_>(), *pdqw = dqw.data_ptr<T_>(), *pdea = dea.data_ptr<T_>(),
       *pdgates = dgates.data_ptr<T_>(), *pdxr = dxr.data_ptr<T_>(), *pdxw = dxw.data_ptr<T_>(),
       *pdhea = dhea.data_ptr<T_>(), *pdxhr = dxhr.data_ptr<T_>(), *pscratch = scratch.data_ptr<T_>();
    const int64_t sw = scratch_width + 2 * N;
    for (int64_t t = T - 1; t >= 0; --t) {
      const int64_t row0 = t * B;
      auto wr_prev = [&](int64_t b) { return t == 0 ? pwr0 + b * N : pwr + (row0 - B + b) * N; };
      auto ww_prev = [&](int64_t b) { return t == 0 ? pww0 + b * N : pww + (row0 - B + b) * N; };
      // the write: dM (the gradient of M_t) becomes M_{t-1}'s (so far); d[e, a] and the write head's dq
      auto write = [&](int64_t b) {
        const T_* mb = phist + (row0 + b) * N * D;
        T_* dmb = pdm + b * N * D;
        const T_* e = pea + (row0 + b) * 2 * D;
        const T_* a = e + D;
        T_* sc = pscratch + b * sw;
        T_* w = sc + scratch_width;
        T_* dw = w + N;
        address_forward(hw, pqw + (row0 + b) * Pw, mb, ww_prev(b), w, sc, N);
        T_* de = pdea + (row0 + b) * 2 * D;
        T_* da = de + D;
        for (int64_t k = 0; k < 2 * D; ++k) de[k] = 0;
        T_* dwt = pdww + b * N;
        for (int64_t i = 0; i < N; ++i) {
          const T_ wi = w[i];
          const T_* Mi = mb + i * D;
          T_* dMi = dmb + i * D;
          T_ sum = 0;
          for (int64_t k = 0; k < D; ++k) {
            const T_ g = dMi[k];
            sum += g * (a[k] - Mi[k] * e[k]);
            de[k] -= g * wi * Mi[k];
            da[k] += g * wi;
            dMi[k] = g * (T_(1) - wi * e[k]);
          }
          dw[i] = dwt[i] + sum;
        }
        for (int64_t k = 0; k < D; ++k) {
          de[k] *= e[k] * (T_(1) - e[k]);
          if (!linear_add) da[k] *= T_(1) - a[k] * a[k];
        }
        address_backward(hw, pqw + (row0 + b) * Pw, mb, ww_prev(b), w, sc, dw, pdqw + (row0 + b) * Pw, dmb, dwt, N);
        if (!hw.interpolation) {
          for (int64_t i = 0; i < N; ++i) dwt[i] = 0;
        }
      };
      // the read, from dr: dM and the read head's dq
      auto read = [&](int64_t b, const T_* dr) {
        const T_* mb = phist + (row0 + b) * N * D;
        T_* dmb = pdm + b * N * D;
        T_* sc = pscratch + b * sw;
        T_* w = sc + scratch_width;
        T_* dw = w + N;
        address_forward(hr, pqr + (row0 + b) * Pr, mb, wr_prev(b), w, sc, N);
        T_* dwt = pdwr + b * N;
        for (int64_t i = 0; i < N; ++i) {
          const T_* Mi = mb + i * D;
          T_* dMi = dmb + i * D;
          dw[i] = dwt[i] + dot(Mi, dr, D);
          const T_ wi = w[i];
          for (int64_t k = 0; k < D; ++k) dMi[k] += wi * dr[k];
        }
        address_backward(hr, pqr + (row0 + b) * Pr, mb, wr_prev(b), w, sc, dw, pdqr + (row0 + b) * Pr, dmb, dwt, N);
        if (!hr.interpolation) {
          for (int64_t i = 0; i < N; ++i) dwt[i] = 0;
        }
      };
      // the cell, from dh_t (in dhn) and the carried dc: the gates' gradient, and dc_{t-1}
      auto cell = [&](int64_t b, const T_* dhn) {
        const T_* a = pact + (row0 + b) * G;
        const T_* c = pcs + (row0 + b) * dh;
        const T_* cp = t == 0 ? pc0 + b * dh : pcs + (row0 - B + b) * dh;
        T_* dg = pdgates + (row0 + b) * G;
        T_* dc = pdc + b * dh;
        for (int64_t j = 0; j < dh; ++j) {
          const T_ i = a[j], f = a[dh + j], g = a[2 * dh + j], o = a[3 * dh + j], tc = th(c[j]);
          const T_ dct = dc[j] + dhn[j] * o * (T_(1) - tc * tc);
          dg[j] = dct * g * i * (T_(1) - i);
          dg[dh + j] = dct * cp[j] * f * (T_(1) - f);
          dg[2 * dh + j] = dct * i * (T_(1) - g * g);
          dg[3 * dh + j] = dhn[j] * tc * o * (T_(1) - o);
          dc[j] = dct * f;
        }
      };
      if (!after) {
        rows(B, write);
        manntk_products::mm_out(dxw, dqw[t], W_w);
        manntk_products::mm_out(dhea, dea[t], W_ea);
        rows(B, [&](int64_t b) {  // dh_t complete: the cell
          T_* dxb = pdx + (row0 + b) * di;
          add_row(pdxw + b * Kh, dxb, di);
          T_* dhb = pdh + b * dh;
          const T_* dob = pdout + (row0 + b) * O;
          for (int64_t j = 0; j < dh; ++j) dhb[j] += dob[j] + pdxw[b * Kh + di + j] + pdhea[b * dh + j];
          cell(b, dhb);
        });
        manntk_products::mm_out(dxhr, dgates[t], W);
        rows(B, [&](int64_t b) {  // dr_t complete: the read; dh_{t-1} so far
          const T_* dxhrb = pdxhr + b * K;
          add_row(dxhrb, pdx + (row0 + b) * di, di);
          copy_row(dxhrb + di, pdh + b * dh, dh);
          T_* dr = pdxhr + b * K + di + dh;  // dr, summed in place
          add_row(pdout + (row0 + b) * O + dh, dr, D);
          if (t == T - 1) add_row(pdread + b * D, dr, D);
          read(b, dr);
        });
        manntk_products::mm_out(dxr, dqr[t], W_r);
        rows(B, [&](int64_t b) {
          add_row(pdxr + b * Kh, pdx + (row0 + b) * di, di);
          add_row(pdxr + b * Kh + di, pdh + b * dh, dh);
        });
      } else {
        rows(B, [&](int64_t b) {
          write(b);
          T_* dr = pdread + b * D;
          add_row(pdout + (row0 + b) * O + dh, dr, D);
          read(b, dr);
        });
        manntk_products::mm_out(dxw, dqw[t], W_w);
        manntk_products::mm_out(dhea, dea[t], W_ea);
        manntk_products::mm_out(dxr, dqr[t], W_r);
        rows(B, [&](int64_t b) {  // dh_t complete: the cell
          T_* dxb = pdx + (row0 + b) * di;
          add_row(pdxw + b * Kh, dxb, di);
          add_row(pdxr + b * Kh, dxb, di);
          T_* dhb = pdh + b * dh;
          const T_* dob = pdout + (row0 + b) * O;
          for (int64_t j = 0; j < dh; ++j) {
            dhb[j] += dob[j] + pdxw[b * Kh + di + j] + pdxr[b * Kh + di + j] + pdhea[b * dh + j];
          }
          cell(b, dhb);
        });
        manntk_products::mm_out(dxhr, dgates[t], W);
        rows(B, [&](int64_t b) {  // dh_{t-1} and dr_{t-1}
          const T_* dxhrb = pdxhr + b * K;
          add_row(dxhrb, pdx + (row0 + b) * di, di);
          copy_row(dxhrb + di, pdh + b * dh, dh);
          copy_row(dxhrb + di + dh, pdread + b * D, D);
        });
      }
    }
  });
  const int64_t rows_all = T * B;
  auto flat = [&](const at::Tensor& t) { return t.reshape({rows_all, t.size(2)}); };
  auto dW = manntk_products::mm(flat(dgates).t(), flat(xhr));
  auto dW_r = manntk_products::mm(flat(dqr).t(), flat(xr));
  auto dW_w = manntk_products::mm(flat(dqw).t(), flat(xw));
  auto dW_ea = manntk_products::mm(flat(dea).t(), flat(xw).narrow(1, di, dh));
  if (!after) dread_run = at::empty({0}, opts);  // r_0 is not an input
  return {dx,      dh_run, dc_run, dwr_run, dww_run, dm, dread_run, dW, at::sum(flat(dgates), 0), dW_r, at::sum(flat(dqr), 0),
          dW_w, at::sum(flat(dqw), 0), dW_ea, at::sum(flat(dea), 0)};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(manntk_armin_fused, m) {
  m.def("ntm_forward(Tensor x, Tensor h0, Tensor c0, Tensor wr0, Tensor ww0, Tensor m0, Tensor? read0, Tensor W, Tensor b, "
        "Tensor W_r, Tensor b_r, Tensor W_w, Tensor b_w, Tensor W_ea, Tensor b_ea, float forget_bias, bool after, "
        "bool r_interpolation, int r_shift, bool r_sharpen, float r_eps, bool w_interpolation, int w_shift, bool w_sharpen, "
        "float w_eps, bool linear_add, bool keep, bool in_place) -> Tensor[]",
        &ntm_forward);
  m.def("ntm_backward(Tensor? d_out, Tensor? d_h, Tensor? d_c, Tensor? d_wr, Tensor? d_ww, Tensor? d_m, Tensor? d_read, "
        "Tensor W, Tensor W_r, Tensor W_w, Tensor W_ea, Tensor c0, Tensor wr0, Tensor ww0, Tensor xhr, Tensor xr, Tensor xw, "
        "Tensor qr, Tensor qw, Tensor ea, Tensor act, Tensor cs, Tensor wr, Tensor ww, Tensor history, bool after, "
        "bool r_interpolation, int r_shift, bool r_sharpen, float r_eps, bool w_interpolation, int w_shift, bool w_sharpen, "
        "float w_eps, bool linear_add) -> Tensor[]",
        &ntm_backward);
}
