// A whole chunk of a layer with TARDIS addressing + overwrite and the armin cell (AwTA) on the
// CPU, forward and backward, as two operators (manntk/fast/tardis_sequence.py).
//
// Per step t, for every row b of the batch (q, K, P, w_u, a: see tardis_sequence.py):
//   q     = W_q [x_t, h_{t-1}] + b_q                      ([W_x, W_h], the query)
//   u     = the usage feature of the read counts (usage_feature below; none without usage)
//   z_i   = a . tanh(q + K_i + P M_{t-1,i} + u_i w_u) - penalty * previous_i (+ Gumbel noise)
//           (w_u [S, N], usage_scope all: q + w_u u in place of q + u_i w_u, every slot seeing all of u)
//   p     = softmax(z / tau)
//   r_t   = p . M_{t-1}            (hard: M_{t-1}[argmax z], straight-through in backward)
//   o_t, h_t = the ARMIN cell (armin_rows.h) of [x_t, h_{t-1}, r_t]
//   v     = W_v [(x_t,) h_t] + b_v, or h_t without W_v
//   M_t   = M_{t-1} with row `slot` replaced by v; slot = the next empty one while filling,
//           else argmax (hard, or soft with argmax); else the blend M (1 - p) + p v
//   usage += w, previous = w     (w: the one-hot of the argmax when hard, else p; no gradient)
// The structure is that of armin_sequence.cpp (the ARMIN layer), whose W_s [x, h] logits are
// replaced by the TARDIS scores; per step two more products: P over the B N slots forward,
// and backward the memory's gradient through P and P's own gradient.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "armin_rows.h"
#include "products.h"
#include "workspace.h"

namespace {

using namespace manntk_armin;

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

// The usage feature u of one row from its read counts, by usage_form (tardis_sequence.py's
// USAGE_FORMS): 1, each slot's share of the reads, counts / max(sum counts, 1); 2, the counts;
// 3, min(counts, 1), whether the slot has been read; 4, counts / max(||counts||_2, 1e-12) (F.normalize).
// 0 (no usage) never calls it.
template <typename T>
void usage_feature(const T* __restrict__ counts, T* __restrict__ u, int64_t N, int64_t usage_form) {
  if (usage_form == 1) {
    T total = 0;
    for (int64_t j = 0; j < N; ++j) total += counts[j];
    total = std::max(total, T(1));
    for (int64_t j = 0; j < N; ++j) u[j] = counts[j] / total;
  } else if (usage_form == 2) {
    for (int64_t j = 0; j < N; ++j) u[j] = counts[j];
  } else if (usage_form == 4) {
    const T norm = std::max(std::sqrt(dot(counts, counts, N)), T(1e-12));
    for (int64_t j = 0; j < N; ++j) u[j] = counts[j] / norm;
  } else {
    for (int64_t j = 0; j < N; ++j) u[j] = std::min(counts[j], T(1));
  }
}

// usage_scope all: the whole usage row u [N] enters the query through w_u [S, N], q += w_u u.
template <typename T>
void add_usage_to_query(const T* __restrict__ wu, const T* __restrict__ u, T* __restrict__ q, int64_t S, int64_t N) {
  for (int64_t j = 0; j < S; ++j) q[j] += dot(wu + j * N, u, N);
}

// One slot's score: th = tanh(q + k + c + u w_u) (stored), returns a . th.
template <typename T>
T score_row(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ c, const T* __restrict__ wu, T u,
            bool usage, const T* __restrict__ a, T* __restrict__ th, int64_t S) {
  if (usage) {
    for (int64_t j = 0; j < S; ++j) th[j] = tanh(q[j] + k[j] + c[j] + u * wu[j]);
  } else {
    for (int64_t j = 0; j < S; ++j) th[j] = tanh(q[j] + k[j] + c[j]);
  }
  return dot(a, th, S);
}

// The gradient of the score's pre-activation, dz a (1 - th^2), into d; added to dq.
template <typename T>
void score_backward_row(T dz, const T* __restrict__ a, const T* __restrict__ th, T* __restrict__ d, T* __restrict__ dq,
                        int64_t S) {
  for (int64_t j = 0; j < S; ++j) {
    d[j] = dz * a[j] * (T(1) - th[j] * th[j]);
    dq[j] += d[j];
  }
}

template <typename F>
void rows(int64_t B, const F& body) {
  at::parallel_for(0, B, 16, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) body(b);
  });
}

void check_tensor(const at::Tensor& t, const at::Tensor& x, const char* name) {
  TORCH_CHECK(t.defined() && t.device().is_cpu() && t.is_contiguous() && t.scalar_type() == x.scalar_type(), "tardis sequence: ",
              name, " must be a contiguous CPU tensor of x's dtype");
}

// Forward. keep: whether backward will run (else the buffers only it reads hold one step).
// in_place: the caller gives m0 up; without backward the memory is written into it.
// Returns {out [T,B,O], h_T [B,dh], M_T [B,N,D], filled_T [B], usage_T [B,N], previous_T [B,N], and what backward needs:
// xhr [T,B,K] ([x, h_{t-1}, r_t]), xg [T,B,K] ([x, h^g, r^g]), sg, act, vin [T,B,Kv] ([(x,) h_t]), p [T,B,N],
// index [T,B] (argmax, or -1), slot [T,B] (-1: blend), kept [T,B,D] (the rows replaced; empty when a write blends),
// history [T,B,N,D] (M_{t-1}; empty when every write replaces), th [T,B,N,S] (the scores' tanh) and u [T,B,N] (the
// normalised usage; empty without usage)}.
std::vector<at::Tensor> tardis_sequence_forward(
    const at::Tensor& x, const at::Tensor& h0, const at::Tensor& m0, const at::Tensor& filled0, const at::Tensor& usage0,
    const at::Tensor& previous0, const std::optional<at::Tensor>& noise, const at::Tensor& W_q, const at::Tensor& b_q,
    const at::Tensor& keys, const at::Tensor& P, const at::Tensor& w_u, const at::Tensor& a, const at::Tensor& W_ig,
    const at::Tensor& b_ig, const at::Tensor& W_go, const at::Tensor& b_go, const std::optional<at::Tensor>& W_v_,
    const std::optional<at::Tensor>& b_v_, double tau, double forget_bias, bool squash, bool read_output, bool hard,
    bool argmax_write, bool fill, int64_t usage_form, double penalty, bool keep, bool in_place) {
  const at::Tensor W_v = W_v_.value_or(at::Tensor()), b_v = b_v_.value_or(at::Tensor());
  const bool project = W_v.defined(), usage = usage_form != 0, usage_all = usage && w_u.dim() == 2;
  TORCH_CHECK(usage_form >= 0 && usage_form <= 4, "tardis sequence: usage_form must be 0-4, got ", usage_form);
  TORCH_CHECK(x.dim() == 3 && x.size(0) > 0, "tardis sequence: x must be [T, B, d_i] with T > 0, got ", x.sizes());
  TORCH_CHECK(x.device().is_cpu() && x.is_contiguous(), "tardis sequence: x must be a contiguous CPU tensor");
  TORCH_CHECK(m0.dim() == 3, "tardis sequence: the memory must be [B, N, D], got ", m0.sizes());
  const char* names[] = {"h", "the memory", "usage", "previous", "W_q", "b_q", "the slot keys", "P", "w_u", "a",
                         "W_ig", "b_ig", "W_go", "b_go"};
  int name = 0;
  for (const at::Tensor* t : {&h0, &m0, &usage0, &previous0, &W_q, &b_q, &keys, &P, &w_u, &a, &W_ig, &b_ig, &W_go, &b_go}) {
    check_tensor(*t, x, names[name++]);
  }
  if (project) {
    check_tensor(W_v, x, "W_v");
    check_tensor(b_v, x, "b_v");
  }
  const int64_t T = x.size(0), B = x.size(1), di = x.size(2), N = m0.size(1), D = m0.size(2), dr = D;
  const int64_t dh = W_ig.size(0) - dr, K = di + dh + dr, S = W_q.size(0);
  const int64_t G = 4 * dh + (read_output ? dr : 0), O = dh + (read_output ? dr : 0);
  const int64_t Kv = project ? W_v.size(1) : dh, dvx = Kv - dh;
  TORCH_CHECK(dh > 0 && W_ig.size(1) == K && W_go.size(0) == G && W_go.size(1) == K && b_ig.numel() == dh + dr &&
                  b_go.numel() == G,
              "tardis sequence: W_ig ", W_ig.sizes(), " or W_go ", W_go.sizes(), " do not fit inputs ", di, " and slot width ", dr);
  if (project) {
    TORCH_CHECK(W_v.dim() == 2 && W_v.size(0) == D && (dvx == 0 || dvx == di) && b_v.numel() == D, "tardis sequence: W_v ",
                W_v.sizes(), " must map [h] or [x, h] to the slot width ", D);
  } else {
    TORCH_CHECK(D == dh, "tardis sequence: without W_v the slot width ", D, " must be the hidden size ", dh);
  }
  // a state of another batch size, memory or model must not be read past its end
  TORCH_CHECK(h0.sizes() == at::IntArrayRef({B, dh}), "tardis sequence: h must be [", B, ", ", dh, "], got ", h0.sizes());
  TORCH_CHECK(m0.size(0) == B, "tardis sequence: the memory holds ", m0.size(0), " rows, the input ", B);
  TORCH_CHECK(usage0.sizes() == at::IntArrayRef({B, N}) && previous0.sizes() == at::IntArrayRef({B, N}),
              "tardis sequence: usage and previous must be [", B, ", ", N, "], got ", usage0.sizes(), " and ", previous0.sizes());
  TORCH_CHECK(filled0.device().is_cpu() && filled0.scalar_type() == at::kLong && filled0.is_contiguous() &&
                  filled0.sizes() == at::IntArrayRef({B}),
              "tardis sequence: filled must be a contiguous int64 CPU tensor of ", B, " values, got ", filled0.sizes());
  TORCH_CHECK(W_q.dim() == 2 && W_q.size(1) == di + dh && b_q.numel() == S && keys.sizes() == at::IntArrayRef({N, S}) &&
                  P.sizes() == at::IntArrayRef({S, D}) &&
                  (w_u.dim() == 2 ? w_u.sizes() == at::IntArrayRef({S, N}) : w_u.numel() == S) && a.numel() == S,
              "tardis sequence: W_q ", W_q.sizes(), ", the slot keys ", keys.sizes(), " or P ", P.sizes(), " do not fit ", N,
              " slots of width ", D, ", inputs ", di, " and hidden ", dh);
  if (noise.has_value()) {
    TORCH_CHECK(noise->is_contiguous() && noise->scalar_type() == x.scalar_type() && noise->sizes() == at::IntArrayRef({T, B, N}),
                "tardis sequence: noise must be [T, B, N]");
  }
  const bool blends = !hard && !argmax_write;
  auto opts = x.options();
  auto out = at::empty({T, B, O}, opts);
  // without backward (keep false) the buffers only backward reads hold one step, reused
  const int64_t Tk = keep ? T : 1;
  auto xhr = manntk_workspace::empty("awta xhr", {T, B, K}, opts);
  auto xg = manntk_workspace::empty("awta xg", {Tk, B, K}, opts);
  auto sg = manntk_workspace::empty("awta sg", {Tk, B, dh + dr}, opts);
  auto act = manntk_workspace::empty("awta act", {Tk, B, G}, opts);
  auto vin = manntk_workspace::empty("awta vin", {T, B, Kv}, opts), p = at::empty({Tk, B, N}, opts);
  auto index = at::empty({T, B}, filled0.options()), slot = at::empty({T, B}, filled0.options());
  auto kept = at::empty({blends ? 0 : Tk, B, D}, opts);
  auto history = at::empty({blends ? Tk : 0, B, N, D}, opts);
  auto th = manntk_workspace::empty("awta th", {Tk, B, N, S}, opts), u = at::empty({usage ? Tk : 0, B, N}, opts);
  // the caller's memory is written in place only when it gives the state up and no backward needs M_0
  auto memory = (in_place && !keep) ? m0 : m0.clone();
  auto filled = filled0.clone(), used = usage0.clone(), previous = previous0.clone();
  auto q = at::empty({B, S}, opts), content = at::empty({B * N, S}, opts), ig = at::empty({B, dh + dr}, opts),
       go = at::empty({B, G}, opts), v = at::empty({B, D}, opts), z = at::empty({B, N}, opts);
  const auto Wq_t = W_q.t(), Wig_t = W_ig.t(), Wgo_t = W_go.t(), Wv_t = project ? W_v.t() : at::Tensor(), P_t = P.t();
  const auto slots_flat = memory.view({B * N, D});
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "tardis_sequence_forward", [&] {
    using T_ = scalar_t;
    const T_ fb = static_cast<T_>(forget_bias), temperature = static_cast<T_>(tau), pen = static_cast<T_>(penalty);
    const T_ *px = x.data_ptr<T_>(), *ph0 = h0.data_ptr<T_>(), *pbq = b_q.data_ptr<T_>(), *pkeys = keys.data_ptr<T_>(),
             *pwu = w_u.data_ptr<T_>(), *pa = a.data_ptr<T_>(), *pbig = b_ig.data_ptr<T_>(), *pbgo = b_go.data_ptr<T_>(),
             *pbv = project ? b_v.data_ptr<T_>() : nullptr;
    const T_* pnoise = noise.has_value() ? noise->data_ptr<T_>() : nullptr;
    T_ *pout = out.data_ptr<T_>(), *pxhr = xhr.data_ptr<T_>(), *pxg = xg.data_ptr<T_>(), *psg = sg.data_ptr<T_>(),
       *pact = act.data_ptr<T_>(), *pvin = vin.data_ptr<T_>(), *pp = p.data_ptr<T_>(), *pkept = kept.data_ptr<T_>(),
       *phist = history.data_ptr<T_>(), *pm = memory.data_ptr<T_>(), *pq = q.data_ptr<T_>(), *pc = content.data_ptr<T_>(),
       *pig = ig.data_ptr<T_>(), *pgo = go.data_ptr<T_>(), *pv = v.data_ptr<T_>(), *pz = z.data_ptr<T_>(),
       *pth = th.data_ptr<T_>(), *pu = usage ? u.data_ptr<T_>() : nullptr, *pused = used.data_ptr<T_>(),
       *pprev = previous.data_ptr<T_>();
    int64_t *pindex = index.data_ptr<int64_t>(), *pslot = slot.data_ptr<int64_t>(), *pfilled = filled.data_ptr<int64_t>();
    for (int64_t t = 0; t < T; ++t) {
      const int64_t row0 = t * B, krow0 = keep ? row0 : 0;  // krow0: rows of the buffers only backward reads
      rows(B, [&](int64_t b) {  // [x_t, h_{t-1}]
        T_* row = pxhr + (row0 + b) * K;
        copy_row(px + (row0 + b) * di, row, di);
        copy_row(t == 0 ? ph0 + b * dh : pvin + ((row0 - B + b) * Kv + dvx), row + di, dh);
      });
      const auto step_xhr = xhr[t];
      manntk_products::mm_out(q, step_xhr.narrow(1, 0, di + dh), Wq_t);
      manntk_products::mm_out(content, slots_flat, P_t);  // P M_{t-1,i} for every slot
      rows(B, [&](int64_t b) {  // the scores, the address and r_t
        T_* qb = pq + b * S;
        add_row(pbq, qb, S);
        const T_* usage_b = pused + b * N;
        T_* ub = usage ? pu + (krow0 + b) * N : nullptr;
        if (usage) usage_feature(usage_b, ub, N, usage_form);
        if (usage_all) add_usage_to_query(pwu, ub, qb, S, N);
        const bool per_slot = usage && !usage_all;
        T_* zb = pz + b * N;
        T_* thb = pth + (krow0 + b) * N * S;
        for (int64_t j = 0; j < N; ++j) {
          zb[j] = score_row(qb, pkeys + j * S, pc + (b * N + j) * S, pwu, per_slot ? ub[j] : T_(0), per_slot, pa, thb + j * S, S);
        }
        T_* prevb = pprev + b * N;
        if (penalty != 0) {
          for (int64_t j = 0; j < N; ++j) zb[j] = zb[j] - pen * prevb[j];
        }
        if (pnoise) {
          for (int64_t j = 0; j < N; ++j) zb[j] += pnoise[(row0 + b) * N + j];
        }
        T_* pb = pp + (krow0 + b) * N;
        if (!hard || keep) softmax_row(zb, pb, N, temperature);  // hard reads without backward need only the argmax
        const int64_t chosen = hard ? argmax(zb, N) : argmax_write ? argmax(pb, N) : -1;
        pindex[row0 + b] = chosen;
        const T_* mb = pm + b * N * D;
        T_* r = pxhr + (row0 + b) * K + di + dh;
        T_* used_b = pused + b * N;
        if (hard) {
          copy_row(mb + chosen * D, r, D);
          for (int64_t j = 0; j < N; ++j) prevb[j] = T_(0);
          prevb[chosen] = T_(1);
        } else {
          for (int64_t k = 0; k < D; ++k) r[k] = 0;
          for (int64_t j = 0; j < N; ++j) {
            const T_ w = pb[j];
            const T_* mj = mb + j * D;
            for (int64_t k = 0; k < D; ++k) r[k] += w * mj[k];
          }
          copy_row(pb, prevb, N);
        }
        add_row(prevb, used_b, N);
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
        cell_out_row(pgo + b * G, pbgo, row + di, row + di + dh, pact + (krow0 + b) * G, value_in + dvx,
                     pout + (row0 + b) * O, dh, dr, fb, squash, read_output);
        if (dvx) copy_row(row, value_in, di);
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
  auto h_last = vin[T - 1].narrow(1, dvx, dh).clone();
  return {out, h_last, memory, filled, used, previous, xhr, xg, sg, act, vin, p, index, slot, kept, history, th, u};
}

// Backward: the gradients of x, h_0, M_0 and of W_q, b_q, the slot keys, P, w_u, a, W_ig, b_ig, W_go, b_go, W_v,
// b_v. address_gradient false: the address passes no gradient (an argmax read in evaluation), so the scores' weights
// get none (empty tensors), as on the engine's discrete path. d_out, d_h and d_m are the gradients of out, h_T and M_T
// (zeros when undefined); m_last is M_T (the forward's memory output); usage_all: w_u was [S, N] (usage_scope all).
std::vector<at::Tensor> tardis_sequence_backward(
    const std::optional<at::Tensor>& d_out_, const std::optional<at::Tensor>& d_h_, const std::optional<at::Tensor>& d_m_,
    const at::Tensor& m_last, const at::Tensor& W_q, const at::Tensor& P, const at::Tensor& a, const at::Tensor& W_ig,
    const at::Tensor& W_go, const std::optional<at::Tensor>& W_v_, const at::Tensor& xhr, const at::Tensor& xg,
    const at::Tensor& sg, const at::Tensor& act, const at::Tensor& vin, const at::Tensor& p, const at::Tensor& index,
    const at::Tensor& slot, const at::Tensor& kept, const at::Tensor& history, const at::Tensor& th, const at::Tensor& u,
    double tau, bool squash, bool read_output, bool hard, bool address_gradient, bool usage_all) {
  const int64_t T = xhr.size(0), B = xhr.size(1), K = xhr.size(2), N = m_last.size(1), D = m_last.size(2);
  const int64_t dr = D, dh = W_ig.size(0) - dr, di = K - dh - dr, G = act.size(2), Kv = vin.size(2), dvx = Kv - dh;
  const int64_t O = dh + (read_output ? dr : 0), S = W_q.size(0);
  const at::Tensor W_v = W_v_.value_or(at::Tensor());
  const bool project = W_v.defined(), blends = history.size(0) > 0, usage = u.size(0) > 0;
  auto opts = xhr.options();
  const at::Tensor d_out = (d_out_.has_value() && d_out_->defined()) ? d_out_->contiguous() : at::zeros({T, B, O}, opts);
  TORCH_CHECK(d_out.sizes() == at::IntArrayRef({T, B, O}), "tardis sequence: d_out must be [T, B, O]");
  auto dh_run = (d_h_.has_value() && d_h_->defined()) ? d_h_->contiguous().clone() : at::zeros({B, dh}, opts);
  auto dm = (d_m_.has_value() && d_m_->defined()) ? d_m_->contiguous().clone() : at::zeros({B, N, D}, opts);
  auto memory = blends ? at::Tensor() : m_last.contiguous().clone();  // M_t, restored step by step
  auto dx = at::zeros({T, B, di}, opts);
  auto dig = manntk_workspace::empty("awta dig", {T, B, dh + dr}, opts);
  auto dgo = manntk_workspace::empty("awta dgo", {T, B, G}, opts);
  auto dv = manntk_workspace::empty("awta dv", {T, B, D}, opts);
  auto dz = at::zeros({T, B, N}, opts), dq = at::zeros({T, B, S}, opts);
  auto dpre = at::empty({address_gradient ? T : 0, B, N, S}, opts), dP = at::zeros({S, D}, opts);
  auto dhr = at::empty({B, dh + dr}, opts), dhn = at::empty({B, dh}, opts);
  auto dvin = at::empty({B, Kv}, opts), dxg = at::empty({B, K}, opts), dxhr = at::empty({B, K}, opts),
       dzs = at::empty({B, di + dh}, opts);
  auto dm_flat = dm.view({B * N, D});
  AT_DISPATCH_FLOATING_TYPES(xhr.scalar_type(), "tardis_sequence_backward", [&] {
    using T_ = scalar_t;
    const T_ temperature = static_cast<T_>(tau);
    const T_ *pdout = d_out.data_ptr<T_>(), *pxhr = xhr.data_ptr<T_>(), *psg = sg.data_ptr<T_>(), *pact = act.data_ptr<T_>(),
             *pvin = vin.data_ptr<T_>(), *pp = p.data_ptr<T_>(), *pkept = kept.data_ptr<T_>(),
             *phist = history.data_ptr<T_>(), *pth = th.data_ptr<T_>(), *pa = a.data_ptr<T_>();
    const int64_t *pindex = index.data_ptr<int64_t>(), *pslot = slot.data_ptr<int64_t>();
    T_ *pdh = dh_run.data_ptr<T_>(), *pdm = dm.data_ptr<T_>(), *pm = blends ? nullptr : memory.data_ptr<T_>(),
       *pdx = dx.data_ptr<T_>(), *pdz = dz.data_ptr<T_>(), *pdig = dig.data_ptr<T_>(), *pdgo = dgo.data_ptr<T_>(),
       *pdv = dv.data_ptr<T_>(), *pdhr = dhr.data_ptr<T_>(), *pdhn = dhn.data_ptr<T_>(), *pdvin = dvin.data_ptr<T_>(),
       *pdxg = dxg.data_ptr<T_>(), *pdxhr = dxhr.data_ptr<T_>(), *pdzs = dzs.data_ptr<T_>(), *pdq = dq.data_ptr<T_>(),
       *pdpre = address_gradient ? dpre.data_ptr<T_>() : nullptr;
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
        if (dvx) copy_row(dvin_b, pdx + (row0 + b) * di, di);
        cell_out_backward_row(pdout + (row0 + b) * O, dhnb, pact + (row0 + b) * G, row + di, row + di + dh,
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
      const at::Tensor previous_memory = blends ? history[t] : memory;  // M_{t-1}
      const T_* pmprev = previous_memory.data_ptr<T_>();
      rows(B, [&](int64_t b) {  // the read and the address
        T_* dxb = pdx + (row0 + b) * di;
        add_row(pdxg + b * K, dxb, di);
        add_row(pdxhr + b * K, dxb, di);
        T_* dr_b = pdxhr + b * K + di + dh;  // dr, summed in place
        add_row(pdhr + b * (dh + dr) + dh, dr_b, dr);
        const T_* mb = pmprev + b * N * D;
        const T_* pb = pp + (row0 + b) * N;
        T_* dzb = pdz + (row0 + b) * N;
        T_* dmb = pdm + b * N * D;
        if (address_gradient) {
          for (int64_t j = 0; j < N; ++j) dzb[j] = dot(mb + j * D, dr_b, D);  // d p_j
        }
        if (hard) {
          add_row(dr_b, dmb + pindex[row0 + b] * D, D);
        } else {
          for (int64_t j = 0; j < N; ++j) {
            const T_ w = pb[j];
            T_* dmj = dmb + j * D;
            for (int64_t k = 0; k < D; ++k) dmj[k] += w * dr_b[k];
          }
        }
        if (address_gradient) {
          const T_ mean = dot(pb, dzb, N);
          for (int64_t j = 0; j < N; ++j) dzb[j] = pb[j] * (dzb[j] - mean) / temperature;
          const T_* thb = pth + (row0 + b) * N * S;
          T_* dpreb = pdpre + (row0 + b) * N * S;
          T_* dqb = pdq + (row0 + b) * S;
          for (int64_t j = 0; j < N; ++j) score_backward_row(dzb[j], pa, thb + j * S, dpreb + j * S, dqb, S);
        }
      });
      if (address_gradient) {
        const auto step_dpre = dpre[t].view({B * N, S});
        dm_flat.addmm_(step_dpre, P);  // through P M_{t-1,i}
        dP.addmm_(step_dpre.t(), previous_memory.view({B * N, D}));
        manntk_products::mm_out(dzs, dq[t], W_q);
      }
      rows(B, [&](int64_t b) {  // dh_{t-1}
        const T_* dzsb = pdzs + b * (di + dh);
        if (address_gradient) add_row(dzsb, pdx + (row0 + b) * di, di);
        for (int64_t j = 0; j < dh; ++j) {
          pdh[b * dh + j] = pdhr[b * (dh + dr) + j] + pdxhr[b * K + di + j] + (address_gradient ? dzsb[di + j] : T_(0));
        }
      });
    }
  });
  const int64_t rows_all = T * B;
  auto flat = [&](const at::Tensor& t) { return t.reshape({rows_all, t.size(2)}); };
  auto none = at::empty({0}, opts);
  at::Tensor dW_q = none, db_q = none, dkeys = none, dw_u = none, da = none;
  if (address_gradient) {
    dW_q = manntk_products::mm(flat(dq).t(), flat(xhr).narrow(1, 0, di + dh));
    db_q = at::sum(flat(dq), 0);
    dkeys = at::sum(dpre.view({rows_all, N * S}), 0).view({N, S});
    da = manntk_products::mm(dz.view({1, rows_all * N}), th.view({rows_all * N, S})).view({S});
    if (usage) {  // w_u [S, N] adds to the query (its gradient dq), w_u [S] to each slot's pre-activation (dpre)
      dw_u = usage_all ? manntk_products::mm(flat(dq).t(), u.view({rows_all, N}))
                       : manntk_products::mm(u.view({1, rows_all * N}), dpre.view({rows_all * N, S})).view({S});
    }
  }
  auto dW_ig = manntk_products::mm(flat(dig).t(), flat(xhr));
  auto dW_go = manntk_products::mm(flat(dgo).t(), flat(xg));
  // without W_v: empty gradients (the operator's outputs are tensors)
  auto dW_v = project ? manntk_products::mm(flat(dv).t(), flat(vin)) : none;
  auto db_v = project ? at::sum(flat(dv), 0) : none;
  return {dx, dh_run, dm, dW_q, db_q, dkeys, address_gradient ? dP : none, dw_u, da,
          dW_ig, at::sum(flat(dig), 0), dW_go, at::sum(flat(dgo), 0), dW_v, db_v};
}

// The TARDIS cell's row kernels. pre: the row of W_all [x, h_{t-1}, r_t] + b_all, blocks
// [i, f, o, s_alpha, s_beta, W_x x + b_x, W_h h_{t-1}, W_r r_t] (widths dh, dh, dh, 1, 1, dh, dh, dh),
// turned in place into the activations [sigmoid(i), sigmoid(f + fb), sigmoid(o), alpha, beta, c~, W_h h, W_r r].
template <typename T>
void tardis_cell_row(T* __restrict__ a, const T* __restrict__ noise, const T* __restrict__ c_prev, T* __restrict__ c,
                     T* __restrict__ h, int64_t dh, T fb, T gate_temperature) {
  for (int64_t j = 0; j < dh; ++j) a[j] = sigmoid(a[j]);
  for (int64_t j = 0; j < dh; ++j) a[dh + j] = sigmoid(a[dh + j] + fb);
  for (int64_t j = 0; j < dh; ++j) a[2 * dh + j] = sigmoid(a[2 * dh + j]);
  const T alpha = sigmoid((a[3 * dh] + (noise ? noise[0] : T(0))) / gate_temperature);
  const T beta = sigmoid((a[3 * dh + 1] + (noise ? noise[1] : T(0))) / gate_temperature);
  a[3 * dh] = alpha;
  a[3 * dh + 1] = beta;
  T* cand = a + 3 * dh + 2;
  const T* hh = cand + dh;
  const T* rr = hh + dh;
  for (int64_t j = 0; j < dh; ++j) cand[j] = tanh(cand[j] + beta * hh[j] + alpha * rr[j]);
  for (int64_t j = 0; j < dh; ++j) c[j] = a[dh + j] * c_prev[j] + a[j] * cand[j];
  for (int64_t j = 0; j < dh; ++j) h[j] = a[2 * dh + j] * tanh(c[j]);
}

// Backward of one row: dh the gradient of h_t, dc (in: of c_t, out: of c_{t-1}); writes dpre, the gradient
// of the row's pre-activations (the blocks of tardis_cell_row).
template <typename T>
void tardis_cell_backward_row(const T* __restrict__ a, const T* __restrict__ dh_in, T* __restrict__ dc,
                              const T* __restrict__ c_prev, const T* __restrict__ c, T* __restrict__ dpre, int64_t dh,
                              T gate_temperature) {
  const T alpha = a[3 * dh], beta = a[3 * dh + 1];
  const T* cand = a + 3 * dh + 2;
  const T* hh = cand + dh;
  const T* rr = hh + dh;
  T dalpha = 0, dbeta = 0;
  for (int64_t j = 0; j < dh; ++j) {
    const T i = a[j], f = a[dh + j], o = a[2 * dh + j], tc = tanh(c[j]);
    dpre[2 * dh + j] = dh_in[j] * tc * o * (T(1) - o);
    const T dcj = dc[j] + dh_in[j] * o * (T(1) - tc * tc);
    dpre[j] = dcj * cand[j] * i * (T(1) - i);
    dpre[dh + j] = dcj * c_prev[j] * f * (T(1) - f);
    dc[j] = dcj * f;
    const T dcp = dcj * i * (T(1) - cand[j] * cand[j]);
    dpre[3 * dh + 2 + j] = dcp;
    dpre[4 * dh + 2 + j] = dcp * beta;
    dpre[5 * dh + 2 + j] = dcp * alpha;
    dalpha += dcp * rr[j];
    dbeta += dcp * hh[j];
  }
  dpre[3 * dh] = dalpha * alpha * (T(1) - alpha) / gate_temperature;
  dpre[3 * dh + 1] = dbeta * beta * (T(1) - beta) / gate_temperature;
}

// The chunk with the TARDIS cell (TARDIS: tardis cell + TARDIS addressing + overwrite): as tardis_sequence_forward,
// the armin cell replaced by the TARDIS cell, W_all [6 dh + 2, K] = [W_gates; blockdiag(W_x, W_h, W_r)] and b_all
// (tardis_sequence.py), o_t = [h_t, r_t]. cell_noise [T, B, 2]: the logistic noise of alpha, beta (training).
// Returns {out [T,B,dh+dr], h_T, c_T, M_T, filled_T, usage_T, previous_T, and for backward: xhr [T,B,K], act
// [T,B,6dh+2], cs [T,B,dh] (c_t), vin, p, index, slot, kept, history, th, u}.
std::vector<at::Tensor> tardis_cell_sequence_forward(
    const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& m0, const at::Tensor& filled0,
    const at::Tensor& usage0, const at::Tensor& previous0, const std::optional<at::Tensor>& noise,
    const std::optional<at::Tensor>& cell_noise, const at::Tensor& W_q, const at::Tensor& b_q, const at::Tensor& keys,
    const at::Tensor& P, const at::Tensor& w_u, const at::Tensor& a, const at::Tensor& W_all, const at::Tensor& b_all,
    const std::optional<at::Tensor>& W_v_, const std::optional<at::Tensor>& b_v_, double tau, double forget_bias,
    double gate_temperature, bool hard, bool argmax_write, bool fill, int64_t usage_form, double penalty, bool keep,
    bool in_place) {
  const at::Tensor W_v = W_v_.value_or(at::Tensor()), b_v = b_v_.value_or(at::Tensor());
  const bool project = W_v.defined(), usage = usage_form != 0, usage_all = usage && w_u.dim() == 2;
  TORCH_CHECK(usage_form >= 0 && usage_form <= 4, "tardis sequence: usage_form must be 0-4, got ", usage_form);
  TORCH_CHECK(x.dim() == 3 && x.size(0) > 0, "tardis sequence: x must be [T, B, d_i] with T > 0, got ", x.sizes());
  TORCH_CHECK(x.device().is_cpu() && x.is_contiguous(), "tardis sequence: x must be a contiguous CPU tensor");
  TORCH_CHECK(m0.dim() == 3, "tardis sequence: the memory must be [B, N, D], got ", m0.sizes());
  const char* names[] = {"h", "c", "the memory", "usage", "previous", "W_q", "b_q", "the slot keys", "P", "w_u", "a",
                         "W_all", "b_all"};
  int name = 0;
  for (const at::Tensor* t : {&h0, &c0, &m0, &usage0, &previous0, &W_q, &b_q, &keys, &P, &w_u, &a, &W_all, &b_all}) {
    check_tensor(*t, x, names[name++]);
  }
  if (project) {
    check_tensor(W_v, x, "W_v");
    check_tensor(b_v, x, "b_v");
  }
  const int64_t T = x.size(0), B = x.size(1), di = x.size(2), N = m0.size(1), D = m0.size(2), dr = D;
  const int64_t G = W_all.size(0), dh = (G - 2) / 6, K = di + dh + dr, S = W_q.size(0), O = dh + dr;
  const int64_t Kv = project ? W_v.size(1) : dh, dvx = Kv - dh;
  TORCH_CHECK(dh > 0 && G == 6 * dh + 2 && W_all.size(1) == K && b_all.numel() == G, "tardis sequence: W_all ", W_all.sizes(),
              " does not fit inputs ", di, " and slot width ", dr);
  if (project) {
    TORCH_CHECK(W_v.dim() == 2 && W_v.size(0) == D && (dvx == 0 || dvx == di) && b_v.numel() == D, "tardis sequence: W_v ",
                W_v.sizes(), " must map [h] or [x, h] to the slot width ", D);
  } else {
    TORCH_CHECK(D == dh, "tardis sequence: without W_v the slot width ", D, " must be the hidden size ", dh);
  }
  TORCH_CHECK(h0.sizes() == at::IntArrayRef({B, dh}) && c0.sizes() == at::IntArrayRef({B, dh}), "tardis sequence: h and c must be [",
              B, ", ", dh, "], got ", h0.sizes(), " and ", c0.sizes());
  TORCH_CHECK(m0.size(0) == B, "tardis sequence: the memory holds ", m0.size(0), " rows, the input ", B);
  TORCH_CHECK(usage0.sizes() == at::IntArrayRef({B, N}) && previous0.sizes() == at::IntArrayRef({B, N}),
              "tardis sequence: usage and previous must be [", B, ", ", N, "], got ", usage0.sizes(), " and ", previous0.sizes());
  TORCH_CHECK(filled0.device().is_cpu() && filled0.scalar_type() == at::kLong && filled0.is_contiguous() &&
                  filled0.sizes() == at::IntArrayRef({B}),
              "tardis sequence: filled must be a contiguous int64 CPU tensor of ", B, " values, got ", filled0.sizes());
  TORCH_CHECK(W_q.dim() == 2 && W_q.size(1) == di + dh && b_q.numel() == S && keys.sizes() == at::IntArrayRef({N, S}) &&
                  P.sizes() == at::IntArrayRef({S, D}) &&
                  (w_u.dim() == 2 ? w_u.sizes() == at::IntArrayRef({S, N}) : w_u.numel() == S) && a.numel() == S,
              "tardis sequence: W_q ", W_q.sizes(), ", the slot keys ", keys.sizes(), " or P ", P.sizes(), " do not fit ", N,
              " slots of width ", D, ", inputs ", di, " and hidden ", dh);
  if (noise.has_value()) {
    TORCH_CHECK(noise->is_contiguous() && noise->scalar_type() == x.scalar_type() && noise->sizes() == at::IntArrayRef({T, B, N}),
                "tardis sequence: noise must be [T, B, N]");
  }
  if (cell_noise.has_value()) {
    TORCH_CHECK(cell_noise->is_contiguous() && cell_noise->scalar_type() == x.scalar_type() &&
                    cell_noise->sizes() == at::IntArrayRef({T, B, 2}),
                "tardis sequence: the cell's noise must be [T, B, 2]");
  }
  const bool blends = !hard && !argmax_write;
  auto opts = x.options();
  auto out = at::empty({T, B, O}, opts);
  const int64_t Tk = keep ? T : 1;
  auto xhr = manntk_workspace::empty("tardis xhr", {T, B, K}, opts);
  auto act = manntk_workspace::empty("tardis act", {Tk, B, G}, opts);
  auto cs = manntk_workspace::empty("tardis cs", {T, B, dh}, opts);
  auto vin = manntk_workspace::empty("tardis vin", {T, B, Kv}, opts), p = at::empty({Tk, B, N}, opts);
  auto index = at::empty({T, B}, filled0.options()), slot = at::empty({T, B}, filled0.options());
  auto kept = at::empty({blends ? 0 : Tk, B, D}, opts);
  auto history = at::empty({blends ? Tk : 0, B, N, D}, opts);
  auto th = manntk_workspace::empty("tardis th", {Tk, B, N, S}, opts), u = at::empty({usage ? Tk : 0, B, N}, opts);
  auto memory = (in_place && !keep) ? m0 : m0.clone();
  auto filled = filled0.clone(), used = usage0.clone(), previous = previous0.clone();
  auto q = at::empty({B, S}, opts), content = at::empty({B * N, S}, opts), v = at::empty({B, D}, opts),
       z = at::empty({B, N}, opts);
  const auto Wq_t = W_q.t(), Wall_t = W_all.t(), Wv_t = project ? W_v.t() : at::Tensor(), P_t = P.t();
  const auto slots_flat = memory.view({B * N, D});
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "tardis_cell_sequence_forward", [&] {
    using T_ = scalar_t;
    const T_ fb = static_cast<T_>(forget_bias), temperature = static_cast<T_>(tau), pen = static_cast<T_>(penalty),
             gt = static_cast<T_>(gate_temperature);
    const T_ *px = x.data_ptr<T_>(), *ph0 = h0.data_ptr<T_>(), *pc0 = c0.data_ptr<T_>(), *pbq = b_q.data_ptr<T_>(),
             *pkeys = keys.data_ptr<T_>(), *pwu = w_u.data_ptr<T_>(), *pa = a.data_ptr<T_>(), *pball = b_all.data_ptr<T_>(),
             *pbv = project ? b_v.data_ptr<T_>() : nullptr;
    const T_* pnoise = noise.has_value() ? noise->data_ptr<T_>() : nullptr;
    const T_* pcnoise = cell_noise.has_value() ? cell_noise->data_ptr<T_>() : nullptr;
    T_ *pout = out.data_ptr<T_>(), *pxhr = xhr.data_ptr<T_>(), *pact = act.data_ptr<T_>(), *pcs = cs.data_ptr<T_>(),
       *pvin = vin.data_ptr<T_>(), *pp = p.data_ptr<T_>(), *pkept = kept.data_ptr<T_>(), *phist = history.data_ptr<T_>(),
       *pm = memory.data_ptr<T_>(), *pq = q.data_ptr<T_>(), *pc = content.data_ptr<T_>(), *pv = v.data_ptr<T_>(),
       *pz = z.data_ptr<T_>(), *pth = th.data_ptr<T_>(), *pu = usage ? u.data_ptr<T_>() : nullptr,
       *pused = used.data_ptr<T_>(), *pprev = previous.data_ptr<T_>();
    int64_t *pindex = index.data_ptr<int64_t>(), *pslot = slot.data_ptr<int64_t>(), *pfilled = filled.data_ptr<int64_t>();
    for (int64_t t = 0; t < T; ++t) {
      const int64_t row0 = t * B, krow0 = keep ? row0 : 0;
      rows(B, [&](int64_t b) {  // [x_t, h_{t-1}]
        T_* row = pxhr + (row0 + b) * K;
        copy_row(px + (row0 + b) * di, row, di);
        copy_row(t == 0 ? ph0 + b * dh : pvin + ((row0 - B + b) * Kv + dvx), row + di, dh);
      });
      const auto step_xhr = xhr[t];
      manntk_products::mm_out(q, step_xhr.narrow(1, 0, di + dh), Wq_t);
      manntk_products::mm_out(content, slots_flat, P_t);
      rows(B, [&](int64_t b) {  // the scores, the address and r_t
        T_* qb = pq + b * S;
        add_row(pbq, qb, S);
        const T_* usage_b = pused + b * N;
        T_* ub = usage ? pu + (krow0 + b) * N : nullptr;
        if (usage) usage_feature(usage_b, ub, N, usage_form);
        if (usage_all) add_usage_to_query(pwu, ub, qb, S, N);
        const bool per_slot = usage && !usage_all;
        T_* zb = pz + b * N;
        T_* thb = pth + (krow0 + b) * N * S;
        for (int64_t j = 0; j < N; ++j) {
          zb[j] = score_row(qb, pkeys + j * S, pc + (b * N + j) * S, pwu, per_slot ? ub[j] : T_(0), per_slot, pa, thb + j * S, S);
        }
        T_* prevb = pprev + b * N;
        if (penalty != 0) {
          for (int64_t j = 0; j < N; ++j) zb[j] = zb[j] - pen * prevb[j];
        }
        if (pnoise) {
          for (int64_t j = 0; j < N; ++j) zb[j] += pnoise[(row0 + b) * N + j];
        }
        T_* pb = pp + (krow0 + b) * N;
        if (!hard || keep) softmax_row(zb, pb, N, temperature);
        const int64_t chosen = hard ? argmax(zb, N) : argmax_write ? argmax(pb, N) : -1;
        pindex[row0 + b] = chosen;
        const T_* mb = pm + b * N * D;
        T_* r = pxhr + (row0 + b) * K + di + dh;
        T_* used_b = pused + b * N;
        if (hard) {
          copy_row(mb + chosen * D, r, D);
          for (int64_t j = 0; j < N; ++j) prevb[j] = T_(0);
          prevb[chosen] = T_(1);
        } else {
          for (int64_t k = 0; k < D; ++k) r[k] = 0;
          for (int64_t j = 0; j < N; ++j) {
            const T_ w = pb[j];
            const T_* mj = mb + j * D;
            for (int64_t k = 0; k < D; ++k) r[k] += w * mj[k];
          }
          copy_row(pb, prevb, N);
        }
        add_row(prevb, used_b, N);
        if (blends) copy_row(mb, phist + (krow0 + b) * N * D, N * D);
      });
      auto step_act = act[keep ? t : 0];
      manntk_products::mm_out(step_act, step_xhr, Wall_t);
      rows(B, [&](int64_t b) {  // the cell: h_t, c_t, o_t = [h_t, r_t]
        const T_* row = pxhr + (row0 + b) * K;
        T_* ab = pact + (krow0 + b) * G;
        add_row(pball, ab, G);
        T_* value_in = pvin + (row0 + b) * Kv;
        tardis_cell_row(ab, pcnoise ? pcnoise + (row0 + b) * 2 : nullptr, t == 0 ? pc0 + b * dh : pcs + (row0 - B + b) * dh,
                        pcs + (row0 + b) * dh, value_in + dvx, dh, fb, gt);
        T_* ob = pout + (row0 + b) * O;
        copy_row(value_in + dvx, ob, dh);
        copy_row(row + di + dh, ob + dh, dr);
        if (dvx) copy_row(row, value_in, di);
      });
      if (project) manntk_products::mm_out(v, vin[t], Wv_t);
      rows(B, [&](int64_t b) {  // the write
        T_* vb = project ? pv + b * D : pvin + (row0 + b) * Kv;
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
  auto h_last = vin[T - 1].narrow(1, dvx, dh).clone(), c_last = cs[T - 1].clone();
  return {out, h_last, c_last, memory, filled, used, previous, xhr, act, cs, vin, p, index, slot, kept, history, th, u};
}

// Backward of tardis_cell_sequence_forward: the gradients of x, h_0, c_0, M_0, W_q, b_q, the slot keys, P, w_u, a,
// W_all, b_all, W_v, b_v (address_gradient false: empty ones for the scores' weights; usage_all as tardis_sequence_backward).
std::vector<at::Tensor> tardis_cell_sequence_backward(
    const std::optional<at::Tensor>& d_out_, const std::optional<at::Tensor>& d_h_, const std::optional<at::Tensor>& d_c_,
    const std::optional<at::Tensor>& d_m_, const at::Tensor& m_last, const at::Tensor& c0, const at::Tensor& W_q,
    const at::Tensor& P, const at::Tensor& a, const at::Tensor& W_all, const std::optional<at::Tensor>& W_v_,
    const at::Tensor& xhr, const at::Tensor& act, const at::Tensor& cs, const at::Tensor& vin, const at::Tensor& p,
    const at::Tensor& index, const at::Tensor& slot, const at::Tensor& kept, const at::Tensor& history,
    const at::Tensor& th, const at::Tensor& u, double tau, double gate_temperature, bool hard, bool address_gradient,
    bool usage_all) {
  const int64_t T = xhr.size(0), B = xhr.size(1), K = xhr.size(2), N = m_last.size(1), D = m_last.size(2);
  const int64_t G = W_all.size(0), dh = (G - 2) / 6, dr = D, di = K - dh - dr, Kv = vin.size(2), dvx = Kv - dh;
  const int64_t O = dh + dr, S = W_q.size(0);
  const at::Tensor W_v = W_v_.value_or(at::Tensor());
  const bool project = W_v.defined(), blends = history.size(0) > 0, usage = u.size(0) > 0;
  auto opts = xhr.options();
  const at::Tensor d_out = (d_out_.has_value() && d_out_->defined()) ? d_out_->contiguous() : at::zeros({T, B, O}, opts);
  TORCH_CHECK(d_out.sizes() == at::IntArrayRef({T, B, O}), "tardis sequence: d_out must be [T, B, O]");
  auto dh_run = (d_h_.has_value() && d_h_->defined()) ? d_h_->contiguous().clone() : at::zeros({B, dh}, opts);
  auto dc_run = (d_c_.has_value() && d_c_->defined()) ? d_c_->contiguous().clone() : at::zeros({B, dh}, opts);
  auto dm = (d_m_.has_value() && d_m_->defined()) ? d_m_->contiguous().clone() : at::zeros({B, N, D}, opts);
  auto memory = blends ? at::Tensor() : m_last.contiguous().clone();
  auto dx = at::zeros({T, B, di}, opts);
  auto dact = manntk_workspace::empty("tardis dact", {T, B, G}, opts);
  auto dv = manntk_workspace::empty("tardis dv", {T, B, D}, opts);
  auto dz = at::zeros({T, B, N}, opts), dq = at::zeros({T, B, S}, opts);
  auto dpre = at::empty({address_gradient ? T : 0, B, N, S}, opts), dP = at::zeros({S, D}, opts);
  auto dhn = at::empty({B, dh}, opts), dvin = at::empty({B, Kv}, opts), dxhr = at::empty({B, K}, opts),
       dzs = at::empty({B, di + dh}, opts);
  auto dm_flat = dm.view({B * N, D});
  AT_DISPATCH_FLOATING_TYPES(xhr.scalar_type(), "tardis_cell_sequence_backward", [&] {
    using T_ = scalar_t;
    const T_ temperature = static_cast<T_>(tau), gt = static_cast<T_>(gate_temperature);
    const T_ *pdout = d_out.data_ptr<T_>(), *pxhr = xhr.data_ptr<T_>(), *pact = act.data_ptr<T_>(), *pcs = cs.data_ptr<T_>(),
             *pc0 = c0.data_ptr<T_>(), *pp = p.data_ptr<T_>(), *pkept = kept.data_ptr<T_>(), *pth = th.data_ptr<T_>(),
             *pa = a.data_ptr<T_>();
    const int64_t *pindex = index.data_ptr<int64_t>(), *pslot = slot.data_ptr<int64_t>();
    T_ *pdh = dh_run.data_ptr<T_>(), *pdc = dc_run.data_ptr<T_>(), *pdm = dm.data_ptr<T_>(),
       *pm = blends ? nullptr : memory.data_ptr<T_>(), *pdx = dx.data_ptr<T_>(), *pdz = dz.data_ptr<T_>(),
       *pdact = dact.data_ptr<T_>(), *pdv = dv.data_ptr<T_>(), *pdhn = dhn.data_ptr<T_>(), *pdvin = dvin.data_ptr<T_>(),
       *pdxhr = dxhr.data_ptr<T_>(), *pdzs = dzs.data_ptr<T_>(), *pdq = dq.data_ptr<T_>(),
       *pdpre = address_gradient ? dpre.data_ptr<T_>() : nullptr;
    for (int64_t t = T - 1; t >= 0; --t) {
      const int64_t row0 = t * B;
      rows(B, [&](int64_t b) {  // the write
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
      rows(B, [&](int64_t b) {  // the cell
        const T_* dvin_b = project ? pdvin + b * Kv : pdv + (row0 + b) * D;
        T_* dhnb = pdhn + b * dh;
        const T_* doutb = pdout + (row0 + b) * O;
        for (int64_t j = 0; j < dh; ++j) dhnb[j] = pdh[b * dh + j] + dvin_b[dvx + j] + doutb[j];
        if (dvx) copy_row(dvin_b, pdx + (row0 + b) * di, di);
        tardis_cell_backward_row(pact + (row0 + b) * G, dhnb, pdc + b * dh, t == 0 ? pc0 + b * dh : pcs + (row0 - B + b) * dh,
                                 pcs + (row0 + b) * dh, pdact + (row0 + b) * G, dh, gt);
      });
      manntk_products::mm_out(dxhr, dact[t], W_all);
      const at::Tensor previous_memory = blends ? history[t] : memory;  // M_{t-1}
      const T_* pmprev = previous_memory.data_ptr<T_>();
      rows(B, [&](int64_t b) {  // the read and the address
        add_row(pdxhr + b * K, pdx + (row0 + b) * di, di);
        T_* dr_b = pdxhr + b * K + di + dh;  // dr: through the cell, and o_t's r_t
        add_row(pdout + (row0 + b) * O + dh, dr_b, dr);
        const T_* mb = pmprev + b * N * D;
        const T_* pb = pp + (row0 + b) * N;
        T_* dzb = pdz + (row0 + b) * N;
        T_* dmb = pdm + b * N * D;
        if (address_gradient) {
          for (int64_t j = 0; j < N; ++j) dzb[j] = dot(mb + j * D, dr_b, D);
        }
        if (hard) {
          add_row(dr_b, dmb + pindex[row0 + b] * D, D);
        } else {
          for (int64_t j = 0; j < N; ++j) {
            const T_ w = pb[j];
            T_* dmj = dmb + j * D;
            for (int64_t k = 0; k < D; ++k) dmj[k] += w * dr_b[k];
          }
        }
        if (address_gradient) {
          const T_ mean = dot(pb, dzb, N);
          for (int64_t j = 0; j < N; ++j) dzb[j] = pb[j] * (dzb[j] - mean) / temperature;
          const T_* thb = pth + (row0 + b) * N * S;
          T_* dpreb = pdpre + (row0 + b) * N * S;
          T_* dqb = pdq + (row0 + b) * S;
          for (int64_t j = 0; j < N; ++j) score_backward_row(dzb[j], pa, thb + j * S, dpreb + j * S, dqb, S);
        }
      });
      if (address_gradient) {
        const auto step_dpre = dpre[t].view({B * N, S});
        dm_flat.addmm_(step_dpre, P);
        dP.addmm_(step_dpre.t(), previous_memory.view({B * N, D}));
        manntk_products::mm_out(dzs, dq[t], W_q);
      }
      rows(B, [&](int64_t b) {  // dh_{t-1}
        const T_* dzsb = pdzs + b * (di + dh);
        if (address_gradient) add_row(dzsb, pdx + (row0 + b) * di, di);
        for (int64_t j = 0; j < dh; ++j) {
          pdh[b * dh + j] = pdxhr[b * K + di + j] + (address_gradient ? dzsb[di + j] : T_(0));
        }
      });
    }
  });
  const int64_t rows_all = T * B;
  auto flat = [&](const at::Tensor& t) { return t.reshape({rows_all, t.size(2)}); };
  auto none = at::empty({0}, opts);
  at::Tensor dW_q = none, db_q = none, dkeys = none, dw_u = none, da = none;
  if (address_gradient) {
    dW_q = manntk_products::mm(flat(dq).t(), flat(xhr).narrow(1, 0, di + dh));
    db_q = at::sum(flat(dq), 0);
    dkeys = at::sum(dpre.view({rows_all, N * S}), 0).view({N, S});
    da = manntk_products::mm(dz.view({1, rows_all * N}), th.view({rows_all * N, S})).view({S});
    if (usage) {  // w_u [S, N] adds to the query (its gradient dq), w_u [S] to each slot's pre-activation (dpre)
      dw_u = usage_all ? manntk_products::mm(flat(dq).t(), u.view({rows_all, N}))
                       : manntk_products::mm(u.view({1, rows_all * N}), dpre.view({rows_all * N, S})).view({S});
    }
  }
  auto dW_all = manntk_products::mm(flat(dact).t(), flat(xhr));
  auto dW_v = project ? manntk_products::mm(flat(dv).t(), flat(vin)) : none;
  auto db_v = project ? at::sum(flat(dv), 0) : none;
  return {dx, dh_run, dc_run, dm, dW_q, db_q, dkeys, address_gradient ? dP : none, dw_u, da,
          dW_all, at::sum(flat(dact), 0), dW_v, db_v};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(manntk_armin_fused, m) {
  m.def("tardis_sequence_forward(Tensor x, Tensor h0, Tensor m0, Tensor filled0, Tensor usage0, Tensor previous0, "
        "Tensor? noise, Tensor W_q, Tensor b_q, Tensor keys, Tensor P, Tensor w_u, Tensor a, Tensor W_ig, Tensor b_ig, "
        "Tensor W_go, Tensor b_go, Tensor? W_v, Tensor? b_v, float tau, float forget_bias, bool squash, bool read_output, "
        "bool hard, bool argmax_write, bool fill, int usage_form, float penalty, bool keep, bool in_place) -> Tensor[]",
        &tardis_sequence_forward);
  m.def("tardis_sequence_backward(Tensor? d_out, Tensor? d_h, Tensor? d_m, Tensor m_last, Tensor W_q, Tensor P, "
        "Tensor a, Tensor W_ig, Tensor W_go, Tensor? W_v, Tensor xhr, Tensor xg, Tensor sg, Tensor act, Tensor vin, "
        "Tensor p, Tensor index, Tensor slot, Tensor kept, Tensor history, Tensor th, Tensor u, float tau, bool squash, "
        "bool read_output, bool hard, bool address_gradient, bool usage_all) -> Tensor[]",
        &tardis_sequence_backward);
  m.def("tardis_cell_sequence_forward(Tensor x, Tensor h0, Tensor c0, Tensor m0, Tensor filled0, Tensor usage0, "
        "Tensor previous0, Tensor? noise, Tensor? cell_noise, Tensor W_q, Tensor b_q, Tensor keys, Tensor P, Tensor w_u, "
        "Tensor a, Tensor W_all, Tensor b_all, Tensor? W_v, Tensor? b_v, float tau, float forget_bias, "
        "float gate_temperature, bool hard, bool argmax_write, bool fill, int usage_form, float penalty, bool keep, "
        "bool in_place) -> Tensor[]",
        &tardis_cell_sequence_forward);
  m.def("tardis_cell_sequence_backward(Tensor? d_out, Tensor? d_h, Tensor? d_c, Tensor? d_m, Tensor m_last, Tensor c0, "
        "Tensor W_q, Tensor P, Tensor a, Tensor W_all, Tensor? W_v, Tensor xhr, Tensor act, Tensor cs, Tensor vin, "
        "Tensor p, Tensor index, Tensor slot, Tensor kept, Tensor history, Tensor th, Tensor u, float tau, "
        "float gate_temperature, bool hard, bool address_gradient, bool usage_all) -> Tensor[]",
        &tardis_cell_sequence_backward);
}
