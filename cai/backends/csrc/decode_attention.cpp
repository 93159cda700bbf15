// Decode attention on the CPU (AVX-512): one query per row and head, over a KV buffer whose
// free tail is masked, and a prompt prefix held once for all rows (cai/backends/kv_cache.py).
//
// torch.bmm on these shapes (per row and KV head, a [groups x dim] by [dim x positions] product)
// runs at a third of the memory's speed on a 2-core EPYC: hundreds of tiny products, each with
// its own overhead, and scores rounded to the model's dtype in between. These two loops read
// each key and value row once, skip the masked free tail, accumulate in fp32 and keep many rows
// in flight with software prefetch. Softmax stays torch's (fp32). Built on first use by
// cai/backends/cpu_kernels.py; any failure there falls back to the bmm path.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace {

// 16 lanes of fp32 from 16 fp32 or 16 bf16 (a bf16 is the high half of an fp32's bits)
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const uint16_t* p) {
  __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}

inline void store_row(float* o, const float* a, int64_t n) { std::memcpy(o, a, n * sizeof(float)); }
inline void store_row(uint16_t* o, const float* a, int64_t n) {
  for (int64_t d = 0; d < n; ++d) {  // round to nearest even, as torch's float -> bf16 does
    uint32_t u;
    std::memcpy(&u, &a[d], 4);
    o[d] = (u & 0x7fffffffu) > 0x7f800000u ? uint16_t(0x7fc0) : uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  }
}

// four 16-lane partial sums -> their four totals
inline __m128 sum4(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
  __m512 t01 = _mm512_add_ps(_mm512_unpacklo_ps(a0, a1), _mm512_unpackhi_ps(a0, a1));
  __m512 t23 = _mm512_add_ps(_mm512_unpacklo_ps(a2, a3), _mm512_unpackhi_ps(a2, a3));
  __m512 t = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t01), _mm512_castps_pd(t23))),
                           _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t01), _mm512_castps_pd(t23))));
  // each 128-bit lane now holds partial sums of (a0, a1, a2, a3): add the four lanes
  __m256 h = _mm256_add_ps(_mm512_castps512_ps256(t), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(t), 1)));
  return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

template <typename T, int D>
inline const T* row_at(const T* buf, const T* prefix, int64_t b, int64_t h, int64_t j, int64_t KVH, int64_t CAP, int64_t P) {
  return j < P ? prefix + (h * P + j) * D : buf + ((b * KVH + h) * CAP + (j - P)) * D;
}

template <typename T>
inline void prefetch_row(const T* p, int D) {
  // 16 rows ahead: the arithmetic between loads otherwise leaves too few misses in flight
  const char* c = reinterpret_cast<const char*>(p + 16 * D);
  for (int off = 0; off < D * int(sizeof(T)); off += 64) _mm_prefetch(c + off, _MM_HINT_T0);
}

// f(r, b, h) for every row r = b * KVH + h (a batch row and one of its KV heads), rows split over threads
template <typename F>
void for_each_row(int64_t B, int64_t KVH, const F& f) {
  at::parallel_for(0, B * KVH, 4, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) f(r, r / KVH, r % KVH);
  });
}

// scores[b, h, g, j] = scaling * q[b, h*G+g] . key_j + mask[b, j]; key_j is prefix row j (j < P) or
// the row's own buffer row j - P. Positions after the last one the mask attends are not read.
template <typename T, int G, int D>
void scores_impl(const T* q, const T* kb, const T* pk, const float* mask, float* out,
                 int64_t B, int64_t KVH, int64_t CAP, int64_t P, float scaling) {
  constexpr int C = D / 16;
  const int64_t L = P + CAP;
  for_each_row(B, KVH, [&](int64_t r, int64_t b, int64_t h) {
    __m512 qv[G][C];
    for (int g = 0; g < G; ++g)
      for (int c = 0; c < C; ++c) qv[g][c] = load16(q + (r * G + g) * D + c * 16);
    const float* m = mask + b * L;
    float* o = out + r * G * L;
    int64_t last = L;
    while (last > 0 && m[last - 1] == -INFINITY) --last;
    for (int64_t j = last; j < L; ++j)
      for (int g = 0; g < G; ++g) o[g * L + j] = -INFINITY;
    int64_t j = 0;
    for (; j + 4 <= last; j += 4) {
      __m512 k[4][C];
      for (int t = 0; t < 4; ++t) {
        const T* kr = row_at<T, D>(kb, pk, b, h, j + t, KVH, CAP, P);
        prefetch_row(kr, D);
        for (int c = 0; c < C; ++c) k[t][c] = load16(kr + c * 16);
      }
      const __m128 mk = _mm_loadu_ps(m + j);
      for (int g = 0; g < G; ++g) {
        __m512 a[4];
        for (int t = 0; t < 4; ++t) {
          a[t] = _mm512_mul_ps(qv[g][0], k[t][0]);
          for (int c = 1; c < C; ++c) a[t] = _mm512_fmadd_ps(qv[g][c], k[t][c], a[t]);
        }
        _mm_storeu_ps(o + g * L + j, _mm_add_ps(_mm_mul_ps(sum4(a[0], a[1], a[2], a[3]), _mm_set1_ps(scaling)), mk));
      }
    }
    for (; j < last; ++j) {
      const T* kr = row_at<T, D>(kb, pk, b, h, j, KVH, CAP, P);
      __m512 k[C];
      for (int c = 0; c < C; ++c) k[c] = load16(kr + c * 16);
      for (int g = 0; g < G; ++g) {
        __m512 a = _mm512_mul_ps(qv[g][0], k[0]);
        for (int c = 1; c < C; ++c) a = _mm512_fmadd_ps(qv[g][c], k[c], a);
        o[g * L + j] = _mm512_reduce_add_ps(a) * scaling + m[j];
      }
    }
  });
}

// out[b, h*G+g] = sum_j probs[b, h, g, j] * value_j; positions whose weight is 0 for every query
// (masked ones: exp(-inf)) are not read.
template <typename T, int G, int D>
void values_impl(const float* p, const T* vb, const T* pv, T* out, int64_t B, int64_t KVH, int64_t CAP, int64_t P) {
  constexpr int C = D / 16;
  const int64_t L = P + CAP;
  for_each_row(B, KVH, [&](int64_t r, int64_t b, int64_t h) {
    __m512 acc[G][C];
    for (int g = 0; g < G; ++g)
      for (int c = 0; c < C; ++c) acc[g][c] = _mm512_setzero_ps();
    const float* w = p + r * G * L;
    for (int64_t j = 0; j < L; ++j) {
      bool any = false;
      for (int g = 0; g < G; ++g) any |= w[g * L + j] != 0.f;
      if (!any) continue;
      const T* v = row_at<T, D>(vb, pv, b, h, j, KVH, CAP, P);
      prefetch_row(v, D);
      __m512 x[C];
      for (int c = 0; c < C; ++c) x[c] = load16(v + c * 16);
      for (int g = 0; g < G; ++g) {
        const __m512 wg = _mm512_set1_ps(w[g * L + j]);
        for (int c = 0; c < C; ++c) acc[g][c] = _mm512_fmadd_ps(wg, x[c], acc[g][c]);
      }
    }
    for (int g = 0; g < G; ++g) {
      alignas(64) float a[D];
      for (int c = 0; c < C; ++c) _mm512_store_ps(a + c * 16, acc[g][c]);
      store_row(out + (r * G + g) * D, a, D);
    }
  });
}

template <typename F>
void dispatch(int64_t G, int64_t D, F&& f) {
  // the (groups, head dim) pairs of common models; anything else is refused (the caller falls back)
#define CAI_CASE(g, d) if (G == g && D == d) return f(std::integral_constant<int, g>{}, std::integral_constant<int, d>{});
  CAI_CASE(1, 64) CAI_CASE(2, 64) CAI_CASE(3, 64) CAI_CASE(4, 64) CAI_CASE(8, 64)
  CAI_CASE(1, 128) CAI_CASE(2, 128) CAI_CASE(4, 128) CAI_CASE(8, 128)
#undef CAI_CASE
  TORCH_CHECK(false, "decode attention kernel: no instance for ", G, " query groups of head dim ", D);
}

void check(const at::Tensor& t, const at::Tensor& like, const char* name) {
  TORCH_CHECK(t.is_contiguous() && t.device().is_cpu() && t.scalar_type() == like.scalar_type(),
              "decode attention kernel: ", name, " must be a contiguous CPU tensor of the query's dtype");
}

}  // namespace

// q [B, H, D]; kb [B, KVH, CAP, D]; pk [1, KVH, P, D] or None; mask fp32 [B, P + CAP] (0 or -inf)
at::Tensor decode_scores(const at::Tensor& q, const at::Tensor& kb, const c10::optional<at::Tensor>& pk,
                         const at::Tensor& mask, double scaling) {
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2), KVH = kb.size(1), CAP = kb.size(2);
  const int64_t P = pk.has_value() ? pk->size(2) : 0;
  TORCH_CHECK(H % KVH == 0 && kb.size(0) == B && kb.size(3) == D, "decode attention kernel: shapes do not match");
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kBFloat16, "decode attention kernel: fp32 or bf16 only");
  check(q, q, "q"); check(kb, q, "keys");
  if (P) { check(*pk, q, "prefix keys"); TORCH_CHECK(pk->size(0) == 1 && pk->size(1) == KVH && pk->size(3) == D); }
  TORCH_CHECK(mask.is_contiguous() && mask.scalar_type() == at::kFloat && mask.numel() == B * (P + CAP),
              "decode attention kernel: mask must be contiguous fp32 [batch, positions]");
  auto out = at::empty({B, KVH, H / KVH, P + CAP}, q.options().dtype(at::kFloat));
  dispatch(H / KVH, D, [&](auto g, auto d) {
    constexpr int kG = decltype(g)::value, kD = decltype(d)::value;
    if (q.scalar_type() == at::kBFloat16)
      scores_impl<uint16_t, kG, kD>(reinterpret_cast<const uint16_t*>(q.data_ptr()), reinterpret_cast<const uint16_t*>(kb.data_ptr()),
                                    P ? reinterpret_cast<const uint16_t*>(pk->data_ptr()) : nullptr, mask.data_ptr<float>(),
                                    out.data_ptr<float>(), B, KVH, CAP, P, float(scaling));
    else
      scores_impl<float, kG, kD>(q.data_ptr<float>(), kb.data_ptr<float>(), P ? pk->data_ptr<float>() : nullptr,
                                 mask.data_ptr<float>(), out.data_ptr<float>(), B, KVH, CAP, P, float(scaling));
  });
  return out;
}

// probs fp32 [B, KVH, G, P + CAP]; vb [B, KVH, CAP, D]; pv [1, KVH, P, D] or None -> [B, KVH * G, D]
at::Tensor decode_values(const at::Tensor& probs, const at::Tensor& vb, const c10::optional<at::Tensor>& pv) {
  const int64_t B = probs.size(0), KVH = probs.size(1), G = probs.size(2), CAP = vb.size(2), D = vb.size(3);
  const int64_t P = pv.has_value() ? pv->size(2) : 0;
  TORCH_CHECK(probs.is_contiguous() && probs.scalar_type() == at::kFloat && probs.size(3) == P + CAP && vb.size(0) == B
              && vb.size(1) == KVH, "decode attention kernel: probs must be contiguous fp32 [batch, kv heads, groups, positions]");
  TORCH_CHECK(vb.scalar_type() == at::kFloat || vb.scalar_type() == at::kBFloat16, "decode attention kernel: fp32 or bf16 only");
  check(vb, vb, "values");
  if (P) { check(*pv, vb, "prefix values"); TORCH_CHECK(pv->size(0) == 1 && pv->size(1) == KVH && pv->size(3) == D); }
  auto out = at::empty({B, KVH * G, D}, vb.options());
  dispatch(G, D, [&](auto g, auto d) {
    constexpr int kG = decltype(g)::value, kD = decltype(d)::value;
    if (vb.scalar_type() == at::kBFloat16)
      values_impl<uint16_t, kG, kD>(probs.data_ptr<float>(), reinterpret_cast<const uint16_t*>(vb.data_ptr()),
                                    P ? reinterpret_cast<const uint16_t*>(pv->data_ptr()) : nullptr,
                                    reinterpret_cast<uint16_t*>(out.data_ptr()), B, KVH, CAP, P);
    else
      values_impl<float, kG, kD>(probs.data_ptr<float>(), vb.data_ptr<float>(), P ? pv->data_ptr<float>() : nullptr,
                                 out.data_ptr<float>(), B, KVH, CAP, P);
  });
  return out;
}

bool supports(int64_t groups, int64_t dim) {
  return (dim == 64 && (groups == 1 || groups == 2 || groups == 3 || groups == 4 || groups == 8)) ||
         (dim == 128 && (groups == 1 || groups == 2 || groups == 4 || groups == 8));
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("decode_scores", &decode_scores, "attention scores of one query per row and head (fp32)");
  m.def("decode_values", &decode_values, "the weighted sum of value rows (the query's dtype)");
  m.def("supports", &supports, "whether an instance exists for (query groups, head dim)");
}
