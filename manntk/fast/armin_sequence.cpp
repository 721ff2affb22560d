// A whole chunk of the ARMIN layer (armin cell + auto-addressing + overwrite) on the CPU, forward
// and backward, as two operators (manntk/fast/armin_sequence.py).
//
// Per step t, for every row b of the batch:
//   z     = W_s [x_t, h_{t-1}] + b_s (+ Gumbel noise)        p = softmax(z / tau)
//   r_t   = p . M_{t-1}            (hard: M_{t-1}[argmax z], straight-through in backward)
//   o_t, h_t = the ARMIN cell (armin_rows.h) of [x_t, h_{t-1}, r_t]
//   v     = W_v [(x_t,) h_t] + b_v, or h_t without W_v
//   M_t   = M_{t-1} with row `slot` replaced by v; slot = the next empty one while filling,
//           else argmax (hard, or soft with argmax); else the blend M (1 - p) + p v
// The four products of a step run over the batch (products.h); everything between them is one
// pass over each row. Backward runs the steps in reverse with the same four products
// (transposed) and adds every weight's gradient in one product over all T * B rows at the
// end. A chunk whose writes are all replacements keeps the rows it overwrote (T x B x D)
// instead of the memory at every step, and restores M_{t-1} from M_t in backward.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "armin_rows.h"
#include "products.h"
#include "workspace.h"

namespace {

using namespace manntk_armin;

struct Sizes {
  int64_t T, B, di, dh, dr, N, D, G, O, K, Kv, dvx;
};

// W_v undefined: no projection, v = h_t (the slot width is the hidden size).
Sizes sizes_of(const at::Tensor& x, const at::Tensor& m0, const at::Tensor& W_ig, const at::Tensor& W_go,
               const at::Tensor& W_v, bool read_output) {
  Sizes s{};
  s.B = x.size(0), s.T = x.size(1), s.di = x.size(2);
  s.N = m0.size(1), s.D = m0.size(2);
  s.dr = s.D;
  s.dh = W_ig.size(0) - s.dr;
  s.K = s.di + s.dh + s.dr;
  s.G = 4 * s.dh + (read_output ? s.dr : 0);
  s.O = s.dh + (read_output ? s.dr : 0);
  s.Kv = W_v.defined() ? W_v.size(1) : s.dh;
  s.dvx = s.Kv - s.dh;
  TORCH_CHECK(W_ig.size(1) == s.K && W_go.size(0) == s.G && W_go.size(1) == s.K, "armin sequence: W_ig ", W_ig.sizes(),
              " or W_go ", W_go.sizes(), " do not fit inputs ", s.di, ", hidden ", s.dh, ", slot width ", s.dr);
  if (W_v.defined()) {
    TORCH_CHECK(W_v.dim() == 2 && W_v.size(0) == s.D && (s.dvx == 0 || s.dvx == s.di), "armin sequence: W_v ", W_v.sizes(),
                " must map [h] or [x, h] to the slot width ", s.D);
  } else {
    TORCH_CHECK(s.D == s.dh, "armin sequence: without W_v the slot width ", s.D, " must be the hidden size ", s.dh);
  }
  return s;
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

// The first index of the largest value, as torch.argmax.
template <typename T>
int64_t argmax(const T* v, int64_t n) {
  int64_t best = 0;
  for (int64_t j = 1; j < n; ++j) {
    if (v[j] > v[best]) best = j;
  }
  return best;
}

template <typename T>
void softmax_row(const T* __restrict__ z, T* __restrict__ p, int64_t n, T tau) {
  const T top = z[argmax(z, n)];
  T total = 0;
  for (int64_t j = 0; j < n; ++j) {
    p[j] = std::exp((z[j] - top) / tau);
    total += p[j];
  }
  for (int64_t j = 0; j < n; ++j) p[j] /= total;
}

template <typename F>
void rows(int64_t B, const F& body) {
  at::parallel_for(0, B, 16, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) body(b);
  });
}

// Forward. keep: whether backward will run (else the buffers only it reads hold one step).
// in_place: the caller gives m0 up; without backward the memory is written into it.
// x is [B, T, d_i], batch first. Returns {out [B,T,O], h_T [B,dh], M_T [B,N,D], filled_T [B], and what backward needs: xhr [T,B,K] ([x, h_{t-1}, r_t]), xg [T,B,K] ([x, h^g, r^g]), sg, act, vin [T,B,Kv]
// ([(x,) h_t]), p [T,B,N], index [T,B] (argmax, or -1), slot [T,B] (-1: blend), kept [T,B,D]
// (the rows replaced; empty when a write blends) and history [T,B,N,D] (M_{t-1}; empty when
// every write replaces)}.
std::vector<at::Tensor> sequence_forward(const at::Tensor& x, const at::Tensor& h0, const at::Tensor& m0,
                                         const at::Tensor& filled0, const at::Tensor& W_s, const at::Tensor& b_s,
                                         const at::Tensor& W_ig, const at::Tensor& b_ig, const at::Tensor& W_go,
                                         const at::Tensor& b_go, const std::optional<at::Tensor>& W_v_,
                                         const std::optional<at::Tensor>& b_v_, const std::optional<at::Tensor>& noise, double tau, double forget_bias,
                                         bool squash, bool read_output, bool hard, bool argmax_write, bool fill,
                                         bool keep, bool in_place) {
  const at::Tensor W_v = W_v_.value_or(at::Tensor()), b_v = b_v_.value_or(at::Tensor());
  const bool project = W_v.defined();
  for (const at::Tensor* t : {&x, &h0, &m0, &W_s, &b_s, &W_ig, &b_ig, &W_go, &b_go}) {
    TORCH_CHECK(t->device().is_cpu() && t->is_contiguous() && t->scalar_type() == x.scalar_type(),
                "armin sequence: expected contiguous CPU tensors of one dtype");
  }
  if (project) {
    for (const at::Tensor* t : {&W_v, &b_v}) {
      TORCH_CHECK(t->defined() && t->device().is_cpu() && t->is_contiguous() && t->scalar_type() == x.scalar_type(),
                  "armin sequence: W_v and b_v must be contiguous CPU tensors of x's dtype");
    }
  }
  TORCH_CHECK(x.dim() == 3 && x.size(1) > 0, "armin sequence: x must be [B, T, d_i] with T > 0, got ", x.sizes());
  TORCH_CHECK(m0.dim() == 3, "armin sequence: the memory must be [B, N, D], got ", m0.sizes());
  const Sizes s = sizes_of(x, m0, W_ig, W_go, W_v, read_output);
  const int64_t T = s.T, B = s.B, N = s.N, D = s.D, K = s.K, Kv = s.Kv, di = s.di, dh = s.dh, dr = s.dr;
  // a state of another batch size, memory or model must not be read past its end
  TORCH_CHECK(h0.sizes() == at::IntArrayRef({B, dh}), "armin sequence: h must be [", B, ", ", dh, "], got ", h0.sizes());
  TORCH_CHECK(m0.size(0) == B, "armin sequence: the memory holds ", m0.size(0), " rows, the input ", B);
  TORCH_CHECK(filled0.device().is_cpu() && filled0.scalar_type() == at::kLong && filled0.is_contiguous() &&
                  filled0.sizes() == at::IntArrayRef({B}),
              "armin sequence: filled must be a contiguous int64 CPU tensor of ", B, " values, got ", filled0.sizes());
  TORCH_CHECK(W_s.dim() == 2 && W_s.size(0) == N && W_s.size(1) == di + dh && b_s.numel() == N && b_ig.numel() == dh + dr &&
                  b_go.numel() == s.G && (!project || b_v.numel() == D),
              "armin sequence: W_s ", W_s.sizes(), " or a bias does not fit ", N, " slots, inputs ", di, " and hidden ", dh);
  const bool blends = !hard && !argmax_write;
  auto opts = x.options();
  auto out = at::empty({B, T, s.O}, opts);  // batch first, as the engine's layers return it
  // without backward (keep false) the buffers only backward reads hold one step, reused
  const int64_t Tk = keep ? T : 1;
  // what backward reads: reused from chunk to chunk once backward has let go (workspace.h)
  auto xhr = manntk_workspace::empty("armin xhr", {T, B, K}, opts);
  auto xg = manntk_workspace::empty("armin xg", {Tk, B, K}, opts);
  auto sg = manntk_workspace::empty("armin sg", {Tk, B, dh + dr}, opts);
  auto act = manntk_workspace::empty("armin act", {Tk, B, s.G}, opts);
  auto vin = manntk_workspace::empty("armin vin", {T, B, Kv}, opts), p = at::empty({Tk, B, N}, opts);
  auto index = at::empty({T, B}, filled0.options()), slot = at::empty({T, B}, filled0.options());
  auto kept = at::empty({blends ? 0 : Tk, B, D}, opts);
  auto history = at::empty({blends ? Tk : 0, B, N, D}, opts);
  // the caller's memory is written in place only when it gives the state up and no backward needs M_0
  auto memory = (in_place && !keep) ? m0 : m0.clone();
  auto filled = filled0.clone();
  auto z = at::empty({B, N}, opts), ig = at::empty({B, dh + dr}, opts), go = at::empty({B, s.G}, opts),
       v = at::empty({B, D}, opts);
  if (noise.has_value()) {
    TORCH_CHECK(noise->is_contiguous() && noise->sizes() == at::IntArrayRef({T, B, N}), "armin sequence: noise must be [T, B, N]");
  }
  const auto Ws_t = W_s.t(), Wig_t = W_ig.t(), Wgo_t = W_go.t(), Wv_t = project ? W_v.t() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "armin_sequence_forward", [&] {
    using T_ = scalar_t;
    const T_ fb = static_cast<T_>(forget_bias), temperature = static_cast<T_>(tau);
    const T_ *px = x.data_ptr<T_>(), *ph0 = h0.data_ptr<T_>(), *pbs = b_s.data_ptr<T_>(), *pbig = b_ig.data_ptr<T_>(),
             *pbgo = b_go.data_ptr<T_>(), *pbv = project ? b_v.data_ptr<T_>() : nullptr;
    const T_* pnoise = noise.has_value() ? noise->data_ptr<T_>() : nullptr;
    T_ *pout = out.data_ptr<T_>(), *pxhr = xhr.data_ptr<T_>(), *pxg = xg.data_ptr<T_>(), *psg = sg.data_ptr<T_>(),
       *pact = act.data_ptr<T_>(), *pvin = vin.data_ptr<T_>(), *pp = p.data_ptr<T_>(), *pkept = kept.data_ptr<T_>(),
       *phist = history.data_ptr<T_>(), *pm = memory.data_ptr<T_>(), *pz = z.data_ptr<T_>(), *pig = ig.data_ptr<T_>(),
       *pgo = go.data_ptr<T_>(), *pv = v.data_ptr<T_>();
    int64_t *pindex = index.data_ptr<int64_t>(), *pslot = slot.data_ptr<int64_t>(), *pfilled = filled.data_ptr<int64_t>();
    for (int64_t t = 0; t < T; ++t) {
      const int64_t row0 = t * B, krow0 = keep ? row0 : 0;  // krow0: rows of the buffers only backward reads
      rows(B, [&](int64_t b) {  // [x_t, h_{t-1}]
        T_* row = pxhr + (row0 + b) * K;
        copy_row(px + (b * T + t) * di, row, di);
        copy_row(t == 0 ? ph0 + b * dh : pvin + ((row0 - B + b) * Kv + s.dvx), row + di, dh);
      });
      const auto step_xhr = xhr[t];
      manntk_products::mm_out(z, step_xhr.narrow(1, 0, di + dh), Ws_t);
      rows(B, [&](int64_t b) {  // the address and r_t
        T_* zb = pz + b * N;
        T_* pb = pp + (krow0 + b) * N;
        for (int64_t j = 0; j < N; ++j) zb[j] += pbs[j] + (pnoise ? pnoise[(row0 + b) * N + j] : T_(0));
        if (!hard || keep) softmax_row(zb, pb, N, temperature);  // hard reads without backward need only the argmax
        const int64_t chosen = hard ? argmax(zb, N) : argmax_write ? argmax(pb, N) : -1;
        pindex[row0 + b] = chosen;
        const T_* mb = pm + b * N * D;
        T_* r = pxhr + (row0 + b) * K + di + dh;
        if (hard) {
          copy_row(mb + chosen * D, r, D);
        } else {
          for (int64_t k = 0; k < D; ++k) r[k] = 0;
          for (int64_t j = 0; j < N; ++j) {
            const T_ w = pb[j];
            const T_* mj = mb + j * D;
            for (int64_t k = 0; k < D; ++k) r[k] += w * mj[k];
          }
        }
        if (blends) copy_row(mb, phist + (krow0 + b) * N * D, N * D);
      });
      manntk_products::mm_out(ig, step_xhr, Wig_t);
      rows(B, [&](int64_t b) {  // sigmoid([g_h, g_r]) and [x, h^g, r^g]
        const T_* row = pxhr + (row0 + b) * K;
        T_* gated = pxg + (krow0 + b) * K;
        copy_row(row, gated, di);
        gates_in_row(pig + b * (dh + dr), pbig, row + di, row + di + dh, psg + (krow0 + b) * (dh + dr), gated + di, dh, dr);
      });
      manntk_products::mm_out(go, xg[keep ? t : 0], Wgo_t);
      rows(B, [&](int64_t b) {  // the gates, h_t, o_t
        const T_* row = pxhr + (row0 + b) * K;
        T_* value_in = pvin + (row0 + b) * Kv;
        cell_out_row(pgo + b * s.G, pbgo, row + di, row + di + dh, pact + (krow0 + b) * s.G, value_in + s.dvx,
                     pout + (b * T + t) * s.O, dh, dr, fb, squash, read_output);
        if (s.dvx) copy_row(row, value_in, di);
      });
      if (project) manntk_products::mm_out(v, vin[t], Wv_t);
      rows(B, [&](int64_t b) {  // the write
        T_* vb = project ? pv + b * D : pvin + (row0 + b) * Kv;  // v = W_v [(x,) h_t] + b_v, or h_t
        if (project) add_row(pbv, vb, D);
        T_* mb = pm + b * N * D;
        const int64_t target = (fill && pfilled[b] < N) ? pfilled[b] : pindex[row0 + b];
        pslot[row0 + b] = target;
        if (target >= 0) {
          if (!blends) copy_row(mb + target * D, pkept + (krow0 + b) * D, D);
          copy_row(vb, mb + target * D, D);
        } else {
          const T_* pb = pp + (krow0 + b) * N;
          for (int64_t j = 0; j < N; ++j) {
            T_* mj = mb + j * D;
            const T_ w = pb[j];
            for (int64_t k = 0; k < D; ++k) mj[k] = mj[k] * (T_(1) - w) + w * vb[k];
          }
        }
        if (fill) pfilled[b] = std::min(pfilled[b] + 1, N);
      });
    }
  });
  auto h_last = vin[T - 1].narrow(1, s.dvx, dh).clone();
  return {out, h_last, memory, filled, xhr, xg, sg, act, vin, p, index, slot, kept, history};
}

// Backward: the gradients of x, h_0, M_0 and of W_s, b_s, W_ig, b_ig, W_go, b_go, W_v, b_v.
// address_gradient false: the address passes no gradient (an argmax read in evaluation), so
// W_s and the paths through the logits get none, as on the engine's discrete path.
// d_out, d_h and d_m are the gradients of out, h_T and M_T (zeros when undefined); m_last is
// M_T (the forward's memory output).
std::vector<at::Tensor> sequence_backward(const std::optional<at::Tensor>& d_out_, const std::optional<at::Tensor>& d_h_,
                                          const std::optional<at::Tensor>& d_m_, const at::Tensor& m_last,
                                          const at::Tensor& W_s, const at::Tensor& W_ig, const at::Tensor& W_go,
                                          const std::optional<at::Tensor>& W_v_, const at::Tensor& xhr, const at::Tensor& xg,
                                          const at::Tensor& sg, const at::Tensor& act, const at::Tensor& vin,
                                          const at::Tensor& p, const at::Tensor& index, const at::Tensor& slot,
                                          const at::Tensor& kept, const at::Tensor& history, double tau, bool squash,
                                          bool read_output, bool hard, bool address_gradient) {
  const int64_t T = xhr.size(0), B = xhr.size(1), K = xhr.size(2), N = m_last.size(1), D = m_last.size(2);
  const int64_t dr = D, dh = W_ig.size(0) - dr, di = K - dh - dr, G = act.size(2), Kv = vin.size(2), dvx = Kv - dh;
  const int64_t O = dh + (read_output ? dr : 0);
  const at::Tensor W_v = W_v_.value_or(at::Tensor());
  const bool project = W_v.defined();
  const bool blends = history.size(0) > 0;
  auto opts = xhr.options();
  const at::Tensor d_out = (d_out_.has_value() && d_out_->defined()) ? d_out_->contiguous() : at::zeros({B, T, O}, opts);
  TORCH_CHECK(d_out.sizes() == at::IntArrayRef({B, T, O}), "armin sequence: d_out must be [B, T, O]");
  auto dh_run = (d_h_.has_value() && d_h_->defined()) ? d_h_->contiguous().clone() : at::zeros({B, dh}, opts);
  auto dm = (d_m_.has_value() && d_m_->defined()) ? d_m_->contiguous().clone() : at::zeros({B, N, D}, opts);
  auto memory = blends ? at::Tensor() : m_last.contiguous().clone();  // M_t, restored step by step
  auto dx = at::zeros({B, T, di}, opts);
  auto dz = at::empty({T, B, N}, opts);
  auto dig = manntk_workspace::empty("armin dig", {T, B, dh + dr}, opts);
  auto dgo = manntk_workspace::empty("armin dgo", {T, B, G}, opts);
  auto dv = manntk_workspace::empty("armin dv", {T, B, D}, opts);
  auto dhr = at::empty({B, dh + dr}, opts), dhn = at::empty({B, dh}, opts);
  auto dvin = at::empty({B, Kv}, opts), dxg = at::empty({B, K}, opts), dxhr = at::empty({B, K}, opts),
       dzs = at::empty({B, di + dh}, opts);
  AT_DISPATCH_FLOATING_TYPES(xhr.scalar_type(), "armin_sequence_backward", [&] {
    using T_ = scalar_t;
    const T_ temperature = static_cast<T_>(tau);
    const T_ *pdout = d_out.data_ptr<T_>(), *pxhr = xhr.data_ptr<T_>(), *psg = sg.data_ptr<T_>(), *pact = act.data_ptr<T_>(),
             *pvin = vin.data_ptr<T_>(), *pp = p.data_ptr<T_>(), *pkept = kept.data_ptr<T_>(),
             *phist = history.data_ptr<T_>();
    const int64_t *pindex = index.data_ptr<int64_t>(), *pslot = slot.data_ptr<int64_t>();
    T_ *pdh = dh_run.data_ptr<T_>(), *pdm = dm.data_ptr<T_>(), *pm = blends ? nullptr : memory.data_ptr<T_>(),
       *pdx = dx.data_ptr<T_>(), *pdz = dz.data_ptr<T_>(), *pdig = dig.data_ptr<T_>(), *pdgo = dgo.data_ptr<T_>(),
       *pdv = dv.data_ptr<T_>(), *pdhr = dhr.data_ptr<T_>(), *pdhn = dhn.data_ptr<T_>(), *pdvin = dvin.data_ptr<T_>(),
       *pdxg = dxg.data_ptr<T_>(), *pdxhr = dxhr.data_ptr<T_>(), *pdzs = dzs.data_ptr<T_>();
    for (int64_t t = T - 1; t >= 0; --t) {
      const int64_t row0 = t * B;
      rows(B, [&](int64_t b) {  // the write: dv, and dM becomes the gradient of M_{t-1} (so far)
        T_* dmb = pdm + b * N * D;
        T_* dvb = pdv + (row0 + b) * D;
        const int64_t target = pslot[row0 + b];
        if (target >= 0) {
          copy_row(dmb + target * D, dvb, D);
          for (int64_t k = 0; k < D; ++k) dmb[target * D + k] = 0;
          if (!blends) copy_row(pkept + (row0 + b) * D, pm + (b * N + target) * D, D);
        } else {
          const T_* pb = pp + (row0 + b) * N;
          for (int64_t k = 0; k < D; ++k) dvb[k] = 0;
          for (int64_t j = 0; j < N; ++j) {
            T_* dmj = dmb + j * D;
            const T_ w = pb[j];
            for (int64_t k = 0; k < D; ++k) {
              dvb[k] += w * dmj[k];
              dmj[k] *= T_(1) - w;
            }
          }
        }
      });
      if (project) manntk_products::mm_out(dvin, dv[t], W_v);
      rows(B, [&](int64_t b) {  // the cell's output stage
        const T_* row = pxhr + (row0 + b) * K;
        const T_* dvin_b = project ? pdvin + b * Kv : pdv + (row0 + b) * D;  // the gradient of [(x,) h_t] through v
        T_* dhnb = pdhn + b * dh;
        for (int64_t j = 0; j < dh; ++j) dhnb[j] = pdh[b * dh + j] + dvin_b[dvx + j];
        if (dvx) copy_row(dvin_b, pdx + (b * T + t) * di, di);
        cell_out_backward_row(pdout + (b * T + t) * O, dhnb, pact + (row0 + b) * G, row + di, row + di + dh,
                              pvin + (row0 + b) * Kv + dvx, pdgo + (row0 + b) * G, pdhr + b * (dh + dr), dh, dr, squash,
                              read_output);
      });
      manntk_products::mm_out(dxg, dgo[t], W_go);
      rows(B, [&](int64_t b) {  // the input gates
        const T_* row = pxhr + (row0 + b) * K;
        gates_in_backward_row(pdxg + b * K + di, psg + (row0 + b) * (dh + dr), row + di, row + di + dh,
                              pdig + (row0 + b) * (dh + dr), pdhr + b * (dh + dr), dh, dr);
      });
      manntk_products::mm_out(dxhr, dig[t], W_ig);
      rows(B, [&](int64_t b) {  // the read and the address
        T_* dxb = pdx + (b * T + t) * di;
        add_row(pdxg + b * K, dxb, di);
        add_row(pdxhr + b * K, dxb, di);
        T_* dr_b = pdxhr + b * K + di + dh;  // dr, summed in place
        add_row(pdhr + b * (dh + dr) + dh, dr_b, dr);
        const T_* mb = blends ? phist + (row0 + b) * N * D : pm + b * N * D;  // M_{t-1}
        const T_* pb = pp + (row0 + b) * N;
        T_* dzb = pdz + (row0 + b) * N;
        for (int64_t j = 0; j < N; ++j) dzb[j] = address_gradient ? dot(mb + j * D, dr_b, D) : T_(0);  // d p_j
        T_* dmb = pdm + b * N * D;
        if (hard) {
          add_row(dr_b, dmb + pindex[row0 + b] * D, D);
        } else {
          for (int64_t j = 0; j < N; ++j) {
            const T_ w = pb[j];
            T_* dmj = dmb + j * D;
            for (int64_t k = 0; k < D; ++k) dmj[k] += w * dr_b[k];
          }
        }
        const T_ mean = dot(pb, dzb, N);
        for (int64_t j = 0; j < N; ++j) dzb[j] = pb[j] * (dzb[j] - mean) / temperature;
      });
      manntk_products::mm_out(dzs, dz[t], W_s);
      rows(B, [&](int64_t b) {  // dh_{t-1}
        const T_* dzsb = pdzs + b * (di + dh);
        add_row(dzsb, pdx + (b * T + t) * di, di);
        for (int64_t j = 0; j < dh; ++j) {
          pdh[b * dh + j] = pdhr[b * (dh + dr) + j] + pdxhr[b * K + di + j] + dzsb[di + j];
        }
      });
    }
  });
  const int64_t rows_all = T * B;
  auto flat = [&](const at::Tensor& t) { return t.reshape({rows_all, t.size(2)}); };
  auto dW_s = manntk_products::mm(flat(dz).t(), flat(xhr).narrow(1, 0, di + dh));
  auto dW_ig = manntk_products::mm(flat(dig).t(), flat(xhr));
  auto dW_go = manntk_products::mm(flat(dgo).t(), flat(xg));
  // without W_v: empty gradients (the operator's outputs are tensors)
  auto dW_v = project ? manntk_products::mm(flat(dv).t(), flat(vin)) : at::empty({0}, opts);
  auto db_v = project ? at::sum(flat(dv), 0) : at::empty({0}, opts);
  return {dx, dh_run, dm, dW_s, at::sum(flat(dz), 0), dW_ig, at::sum(flat(dig), 0), dW_go, at::sum(flat(dgo), 0), dW_v, db_v};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(manntk_armin_fused, m) {
  m.def("sequence_forward(Tensor x, Tensor h0, Tensor m0, Tensor filled0, Tensor W_s, Tensor b_s, Tensor W_ig, "
        "Tensor b_ig, Tensor W_go, Tensor b_go, Tensor? W_v, Tensor? b_v, Tensor? noise, float tau, float forget_bias, "
        "bool squash, bool read_output, bool hard, bool argmax_write, bool fill, bool keep, bool in_place) -> Tensor[]",
        &sequence_forward);
  m.def("sequence_backward(Tensor? d_out, Tensor? d_h, Tensor? d_m, Tensor m_last, Tensor W_s, Tensor W_ig, Tensor W_go, "
        "Tensor? W_v, Tensor xhr, Tensor xg, Tensor sg, Tensor act, Tensor vin, Tensor p, Tensor index, Tensor slot, "
        "Tensor kept, Tensor history, float tau, bool squash, bool read_output, bool hard, bool address_gradient) -> Tensor[]",
        &sequence_backward);
}
