/* edgelm native kernels: pasted into every generated model.c (C99 + libm, no allocation).
 *
 * Matmuls take the weight as the bundle stores it, (K, N) row-major, and accumulate runs of
 * outputs along N, so the compiler vectorises the inner loops over N. One row (a stream's step)
 * streams the weights row by row; many rows (streams, prefill chunks) go through register tiles
 * (fp32: GCC / Clang vector extensions, el_mm_f32; w8a8: AVX-512 VNNI), a panel of weight
 * columns at a time, so that each weight is read from memory once for all rows.
 * el_exp / el_log are branch-free exp and log (Cephes' polynomials, ~1 ulp) that vectorise inside loops;
 * libm's expf does not without -ffast-math, and the SSM decay runs it 3k times a step.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifndef EL_NB
#if defined(__AVX512F__)
#define EL_NB 32 /* columns per register tile: 4 rows x 32 = 8 zmm accumulators */
#else
#define EL_NB 16 /* 4 rows x 16 = 8 ymm (AVX2) or 16 q (NEON) accumulators */
#endif
#endif
/* One row (a stream's step): 512-column panels, accumulators in L1, weight rows 4 at a time, so
 * the weights stream row by row. Taking 64-column blocks over all K instead reads each row in
 * short strided pieces: 1.3-1.7x slower once the weights leave the caches (x86, measured). */
#define EL_P1 512
#if defined(__GNUC__)
#define EL_NOINLINE __attribute__((noinline)) /* keeps each generated part a function of its own */
#else
#define EL_NOINLINE
#endif

static inline float el_exp(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round(x / ln 2) */
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { int32_t i; float f; } two_n;
    two_n.i = ((int32_t)n + 127) << 23;
    return p * two_n.f;
}

/* Cephes' logf (~1 ulp) without branches, so that loops vectorise (libm's logf does not without
 * -ffast-math; mamba's softplus runs it Di times a layer, ~10% of a step): x = m 2^e with m in
 * [sqrt(1/2), sqrt(2)), log x = e ln 2 + log(m) by a polynomial in m - 1. Subnormals are scaled
 * by 2^23 first; 0, negatives, infinities and NaN give what logf gives. */
static inline float el_log(float x) {
    const int sub = x < 1.17549435e-38f;
    union { float f; int32_t i; } u;
    u.f = sub ? x * 8388608.0f : x;
    int32_t e = ((u.i >> 23) & 0xff) - 126;
    u.i = (u.i & 0x007fffff) | 0x3f000000; /* m in [0.5, 1) */
    const int low = u.f < 0.707106781186547524f;
    const float m = low ? u.f + u.f - 1.0f : u.f - 1.0f;
    const float fe = (float)(e - low) - (sub ? 23.0f : 0.0f);
    const float z = m * m;
    float y = 7.0376836292e-2f;
    y = y * m - 1.1514610310e-1f;
    y = y * m + 1.1676998740e-1f;
    y = y * m - 1.2420140846e-1f;
    y = y * m + 1.4249322787e-1f;
    y = y * m - 1.6668057665e-1f;
    y = y * m + 2.0000714765e-1f;
    y = y * m - 2.4999993993e-1f;
    y = y * m + 3.3333331174e-1f;
    y = y * m * z - 2.12194440e-4f * fe - 0.5f * z;
    const float r = m + y + 0.693359375f * fe;
    return x > 0.0f ? (x < INFINITY ? r : x) : (x == 0.0f ? -INFINITY : NAN);
}

static inline float el_sigmoid(float x) { return 1.0f / (1.0f + el_exp(-x)); }
static inline float el_tanh(float x) { return 2.0f / (1.0f + el_exp(-2.0f * x)) - 1.0f; }

/* round half to even (ONNX QuantizeLinear), saturated to int8 */
static inline int8_t el_q8(float v) {
    v = v < -128.0f ? -128.0f : (v > 127.0f ? 127.0f : v);
    return (int8_t)(int32_t)((v + 12582912.0f) - 12582912.0f);
}

static inline float el_sum(const float *a, int n) {
    float acc[16] = {0};
    int j = 0;
    for (; j + 16 <= n; j += 16)
        for (int u = 0; u < 16; u++) acc[u] += a[j + u];
    float s = 0.0f;
    for (int u = 0; u < 16; u++) s += acc[u];
    for (; j < n; j++) s += a[j];
    return s;
}

static EL_NOINLINE void el_gather(void *o, const void *table, const edgelm_id_t *ids, size_t n, int64_t rows, size_t row_bytes) {
    for (size_t i = 0; i < n; i++) {
        int64_t r = ids[i] < 0 ? ids[i] + rows : ids[i];
        r = (r < 0 || r >= rows) ? 0 : r; /* never read outside the table */
        memcpy((char *)o + i * row_bytes, (const char *)table + (size_t)r * row_bytes, row_bytes);
    }
}

/* The bias of a matmul: none, one row shared by every output row, or one row per output row. */
#define EL_BIAS(c, c_rows, m, N) ((c) ? (c) + ((c_rows) ? (size_t)(m) * (N) : 0) : NULL)

/* y (M, N) = x (M, K) @ w (K, N) + c, rows ldy / ldx / ldw apart (a column or row slice of a
 * larger matrix: the generator skips a weight's all-zero blocks). c: none, one row (c_rows 0) or
 * a row per output row (c_rows 1, ldy apart). w is float, or int8 with a per-column scale (ws, ws_n = N)
 * or one scale (ws_n = 1); x int8 with one scale xs for w8a8.
 * EL_MM(NAME, x type, w type, one-row accumulator, 4-row accumulator, finish) writes the 1-row and
 * 4-row tile functions and NAME itself. w8a8 accumulates one row in int32 (integer multiplies
 * beat int8 -> float conversion per weight: lstm-tiny 12.3 vs 18.9 us a step) and 4 rows in
 * float (one conversion per weight serves 4 rows: 64 streams ~2x faster); both exact while
 * |sum| < 2^24, which int8 x int8 products reach only past K = 1032. */
#define EL_MM(NAME, XT, WT, ACC, ACC4, FIN)                                                          \
    static void NAME##_1(float *restrict y, const XT *restrict x, const WT *restrict w,             \
                         const float *restrict ws, size_t ws_n, float xs, const float *restrict c,   \
                         int K, int N, int ldw) {                                                    \
        for (int n0 = 0; n0 < N; n0 += EL_P1) {                                                      \
            const int nb = N - n0 < EL_P1 ? N - n0 : EL_P1;                                          \
            ACC acc[EL_P1];                                                                          \
            for (int j = 0; j < nb; j++) acc[j] = 0;                                                 \
            int k = 0;                                                                               \
            for (; k + 4 <= K; k += 4) {                                                             \
                const ACC x0 = (ACC)x[k], x1 = (ACC)x[k + 1], x2 = (ACC)x[k + 2], x3 = (ACC)x[k + 3]; \
                const WT *w0 = w + (size_t)k * ldw + n0, *w1 = w0 + ldw, *w2 = w1 + ldw;             \
                const WT *w3 = w2 + ldw;                                                             \
                for (int j = 0; j < nb; j++)                                                         \
                    acc[j] += x0 * (ACC)w0[j] + x1 * (ACC)w1[j] + x2 * (ACC)w2[j] + x3 * (ACC)w3[j]; \
            }                                                                                        \
            for (; k < K; k++) {                                                                     \
                const ACC xk = (ACC)x[k];                                                            \
                const WT *wk = w + (size_t)k * ldw + n0;                                             \
                for (int j = 0; j < nb; j++) acc[j] += xk * (ACC)wk[j];                              \
            }                                                                                        \
            for (int j = 0; j < nb; j++) {                                                           \
                const int n = n0 + j;                                                                \
                y[n] = FIN(acc[j]) + (c ? c[n] : 0.0f);                                              \
            }                                                                                        \
        }                                                                                            \
    }                                                                                                \
    static void NAME##_4(float *restrict y, const XT *restrict x, const WT *restrict w,             \
                         const float *restrict ws, size_t ws_n, float xs, const float *restrict c,   \
                         int c_rows, int K, int N, int ldx, int ldw, int ldy) {                      \
        for (int n0 = 0; n0 < N; n0 += EL_NB) {                                                      \
            const int nb = N - n0 < EL_NB ? N - n0 : EL_NB;                                          \
            ACC4 acc[4][EL_NB] = {{0}};                                                              \
            for (int k = 0; k < K; k++) {                                                            \
                const WT *wk = w + (size_t)k * ldw + n0;                                             \
                const ACC4 x0 = (ACC4)x[k], x1 = (ACC4)x[ldx + k];                                   \
                const ACC4 x2 = (ACC4)x[2 * ldx + k], x3 = (ACC4)x[3 * ldx + k];                     \
                if (nb == EL_NB) {                                                                   \
                    for (int j = 0; j < EL_NB; j++) {                                                \
                        const ACC4 wj = (ACC4)wk[j];                                                 \
                        acc[0][j] += x0 * wj; acc[1][j] += x1 * wj;                                  \
                        acc[2][j] += x2 * wj; acc[3][j] += x3 * wj;                                  \
                    }                                                                                \
                } else {                                                                             \
                    for (int j = 0; j < nb; j++) {                                                   \
                        const ACC4 wj = (ACC4)wk[j];                                                 \
                        acc[0][j] += x0 * wj; acc[1][j] += x1 * wj;                                  \
                        acc[2][j] += x2 * wj; acc[3][j] += x3 * wj;                                  \
                    }                                                                                \
                }                                                                                    \
            }                                                                                        \
            for (int r = 0; r < 4; r++) {                                                            \
                const float *cr = EL_BIAS(c, c_rows, r, ldy);                                        \
                for (int j = 0; j < nb; j++) {                                                       \
                    const int n = n0 + j;                                                            \
                    y[(size_t)r * ldy + n] = FIN(acc[r][j]) + (cr ? cr[n] : 0.0f);                   \
                }                                                                                    \
            }                                                                                        \
        }                                                                                            \
    }                                                                                                \
    static EL_NOINLINE void NAME(float *y, int ldy, const XT *x, int ldx, const WT *w, int ldw,      \
                                 const float *ws, size_t ws_n, float xs, const float *c, int c_rows,  \
                                 size_t M, int K, int N) {                                            \
        size_t m = 0;                                                                                \
        for (; m + 4 <= M; m += 4)                                                                   \
            NAME##_4(y + m * ldy, x + m * ldx, w, ws, ws_n, xs, EL_BIAS(c, c_rows, m, ldy), c_rows,  \
                     K, N, ldx, ldw, ldy);                                                           \
        for (; m < M; m++)                                                                           \
            NAME##_1(y + m * ldy, x + m * ldx, w, ws, ws_n, xs, EL_BIAS(c, c_rows, m, ldy), K, N,    \
                     ldw);                                                                           \
    }

#define EL_FIN_F(a) (a)
#define EL_FIN_W8(a) ((a) * ws[ws_n > 1 ? (size_t)n : 0])
#define EL_FIN_A8(a) ((float)(a) * xs * ws[ws_n > 1 ? (size_t)n : 0])

#if defined(__GNUC__) /* GCC and Clang: the register tiles below */
EL_MM(el_mm_f32_rows, float, float, float, float, EL_FIN_F)
#else
EL_MM(el_mm_f32, float, float, float, float, EL_FIN_F)
#endif
EL_MM(el_mm_w8, float, int8_t, float, float, EL_FIN_W8)
EL_MM(el_mm_a8w8_generic, int8_t, int8_t, int32_t, float, EL_FIN_A8)

#if defined(__GNUC__)
/* fp32 register tiles (GCC / Clang vector extensions, any ISA): TR rows x 2 vectors of output
 * accumulate over all of K in registers; a weight row's 2 vectors serve TR rows of x. The tile
 * sizes fill the register file: AVX-512 8 x 32 (16 of 32 zmm), AVX2 6 x 16 (12 of 16 ymm),
 * AArch64 8 x 8 (16 of 32 q), other 4 x 8. The 4-row EL_MM loop above spills its accumulators:
 * on this x86 (AVX-512), M 32 x K 256 x N 1024 runs at 112 GFLOP/s against its 44 (AVX2: 65 vs 6). */
#if defined(__AVX512F__)
#define EL_VL 16
#define EL_TR 8
#elif defined(__AVX__)
#define EL_VL 8
#define EL_TR 6
#elif defined(__aarch64__)
#define EL_VL 4
#define EL_TR 8
#else
#define EL_VL 4
#define EL_TR 4
#endif
#define EL_PF 16 /* weight rows prefetched ahead: rows ldw apart defeat the hardware prefetcher (the first
                  * tile of a panel reads it from L3: M 32 x K 256 x N 1024 48 -> 70 GFLOP/s) */
typedef float el_vf __attribute__((vector_size(4 * EL_VL), aligned(4), may_alias)); /* unaligned loads */

#define EL_TILE(R, V) EL_TILE_(R, V)
#define EL_TILE_(R, V)                                                                               \
    static inline void el_tile_##R##x##V(float *restrict y, int ldy, const float *restrict x, int ldx, \
                                         const float *restrict w, int ldw, const float *restrict c,   \
                                         int c_rows, int K) {                                        \
        el_vf acc[R][V];                                                                             \
        for (int r = 0; r < R; r++)                                                                  \
            for (int v = 0; v < V; v++) acc[r][v] = (el_vf){0};                                      \
        for (int k = 0; k < K; k++) {                                                                \
            el_vf wv[V];                                                                             \
            for (int v = 0; v < V; v++) __builtin_prefetch(w + (size_t)(k + EL_PF) * ldw + v * EL_VL); \
            for (int v = 0; v < V; v++) wv[v] = *(const el_vf *)(w + (size_t)k * ldw + v * EL_VL);  \
            for (int r = 0; r < R; r++) {                                                            \
                const float xr = x[(size_t)r * ldx + k];                                             \
                for (int v = 0; v < V; v++) acc[r][v] += xr * wv[v];                                 \
            }                                                                                        \
        }                                                                                            \
        for (int r = 0; r < R; r++) {                                                                \
            const float *cr = EL_BIAS(c, c_rows, r, ldy);                                            \
            for (int v = 0; v < V; v++) {                                                            \
                if (cr) acc[r][v] += *(const el_vf *)(cr + v * EL_VL);                               \
                *(el_vf *)(y + (size_t)r * ldy + v * EL_VL) = acc[r][v];                              \
            }                                                                                        \
        }                                                                                            \
    }
EL_TILE(EL_TR, 2)
EL_TILE(EL_TR, 1)
#if EL_TR > 4
EL_TILE(4, 2)
EL_TILE(4, 1)
#endif
#define EL_TILE_NAME(R, V) EL_TILE_NAME_(R, V)
#define EL_TILE_NAME_(R, V) el_tile_##R##x##V

/* One column panel (V vectors wide) for the tiled rows, the row tiles innermost: the panel's K
 * rows (ldw apart) come from memory once and serve every tile from cache. Rows outermost instead
 * streams the whole weight once per tile (M 32 x K 256 x N 1024, weights from L3: 56 vs 74 GFLOP/s). */
#define EL_PANEL(V)                                                                                  \
    static void el_panel_##V(float *y, int ldy, const float *x, int ldx, const float *w, int ldw,    \
                             const float *c, int c_rows, size_t M, int K) {                          \
        size_t m = 0;                                                                                \
        for (; m + EL_TR <= M; m += EL_TR)                                                           \
            EL_TILE_NAME(EL_TR, V)(y + m * ldy, ldy, x + m * ldx, ldx, w, ldw, EL_BIAS(c, c_rows, m, ldy), c_rows, K); \
        EL_PANEL_4(V)                                                                                \
    }
#if EL_TR > 4
#define EL_PANEL_4(V)                                                                                \
    for (; m + 4 <= M; m += 4)                                                                       \
        el_tile_4x##V(y + m * ldy, ldy, x + m * ldx, ldx, w, ldw, EL_BIAS(c, c_rows, m, ldy), c_rows, K);
#else
#define EL_PANEL_4(V)
#endif
EL_PANEL(2)
EL_PANEL(1)

/* y (M, N) = x (M, K) @ w (K, N) + c as EL_MM above. The rows that fill tiles go panel by panel
 * (the last columns, < EL_VL, by the row kernels); the rest (< 4 rows: a stream's step, a few
 * streams) take the one-row kernel, which streams the weights row by row (2-3 rows: 38 GFLOP/s
 * against 14 for 1-row tiles, whose 2 accumulators wait on the FMA latency). */
static EL_NOINLINE void el_mm_f32(float *y, int ldy, const float *x, int ldx, const float *w, int ldw,
                                  const float *ws, size_t ws_n, float xs, const float *c, int c_rows,
                                  size_t M, int K, int N) {
    const size_t mt = M / EL_TR * EL_TR + (EL_TR > 4 ? M % EL_TR / 4 * 4 : 0); /* rows in tiles */
    int n0 = 0;
    if (mt) {
        for (; n0 + 2 * EL_VL <= N; n0 += 2 * EL_VL)
            el_panel_2(y + n0, ldy, x, ldx, w + n0, ldw, c ? c + n0 : NULL, c_rows, mt, K);
        for (; n0 + EL_VL <= N; n0 += EL_VL)
            el_panel_1(y + n0, ldy, x, ldx, w + n0, ldw, c ? c + n0 : NULL, c_rows, mt, K);
        if (n0 < N)
            el_mm_f32_rows(y + n0, ldy, x, ldx, w + n0, ldw, NULL, 0, 0.0f, c ? c + n0 : NULL, c_rows, mt, K, N - n0);
    }
    if (mt < M)
        el_mm_f32_rows(y + mt * ldy, ldy, x + mt * ldx, ldx, w, ldw, ws, ws_n, xs, EL_BIAS(c, c_rows, mt, ldy),
                       c_rows, M - mt, K, N);
}
#endif

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#include <immintrin.h>
/* One row of w8a8 with AVX-512 VNNI: vpdpbusd sums 4 products of u8 x s8 per int32 lane. The
 * weights take the unsigned side as w ^ 0x80 = w + 128 and x the signed side, broadcast 4 at a
 * time; the shift comes back as 128 * sum(x), one number per row. Four weight rows (k..k+3) x
 * 64 columns are interleaved into quads in registers (8 unpacks per 256 products); quad q of
 * 128-bit lane L holds columns 16L + 4q .. 16L + 4q + 3. BLOCKS 64-column blocks (1 or 4)
 * accumulate over all of K in registers, K outermost, so the weights stream row by row. The
 * integers are those of the generic kernel. */
/* the panel as a function per block count: a constant count keeps the accumulators in registers */
#define EL_VNNI(NAME, BLOCKS) \
static void NAME(float *restrict y, const int8_t *restrict x, const int8_t *restrict w,                     \
                                const float *restrict ws, size_t ws_n, float xs, const float *restrict c,   \
                                int K, int ldw, int n0, int32_t xsum) {                                     \
    __m512i acc[BLOCKS][4];                                                                                 \
    const __m512i flip = _mm512_set1_epi8((char)0x80);                                                      \
    for (int b = 0; b < BLOCKS; b++)                                                                        \
        for (int q = 0; q < 4; q++) acc[b][q] = _mm512_setzero_si512();                                     \
    for (int k = 0; k < K; k += 4) {                                                                        \
        int32_t xq;                                                                                         \
        memcpy(&xq, x + k, 4);                                                                              \
        const __m512i xb = _mm512_set1_epi32(xq);                                                           \
        for (int b = 0; b < BLOCKS; b++) {                                                                  \
            const int8_t *wk = w + (size_t)k * ldw + n0 + 64 * b;                                           \
            const __m512i r0 = _mm512_xor_si512(_mm512_loadu_si512(wk), flip);                              \
            const __m512i r1 = _mm512_xor_si512(_mm512_loadu_si512(wk + ldw), flip);                        \
            const __m512i r2 = _mm512_xor_si512(_mm512_loadu_si512(wk + 2 * (size_t)ldw), flip);            \
            const __m512i r3 = _mm512_xor_si512(_mm512_loadu_si512(wk + 3 * (size_t)ldw), flip);            \
            const __m512i t0 = _mm512_unpacklo_epi8(r0, r1), t1 = _mm512_unpackhi_epi8(r0, r1);             \
            const __m512i t2 = _mm512_unpacklo_epi8(r2, r3), t3 = _mm512_unpackhi_epi8(r2, r3);             \
            acc[b][0] = _mm512_dpbusd_epi32(acc[b][0], _mm512_unpacklo_epi16(t0, t2), xb);                  \
            acc[b][1] = _mm512_dpbusd_epi32(acc[b][1], _mm512_unpackhi_epi16(t0, t2), xb);                  \
            acc[b][2] = _mm512_dpbusd_epi32(acc[b][2], _mm512_unpacklo_epi16(t1, t3), xb);                  \
            acc[b][3] = _mm512_dpbusd_epi32(acc[b][3], _mm512_unpackhi_epi16(t1, t3), xb);                  \
        }                                                                                                   \
    }                                                                                                       \
    for (int b = 0; b < BLOCKS; b++)                                                                        \
        for (int q = 0; q < 4; q++) {                                                                       \
            int32_t a[16];                                                                                  \
            _mm512_storeu_si512(a, acc[b][q]);                                                              \
            for (int j = 0; j < 16; j++) {                                                                  \
                const int n = n0 + 64 * b + 16 * (j / 4) + 4 * q + j % 4;                                   \
                y[n] = (float)(a[j] - 128 * xsum) * xs * ws[ws_n > 1 ? (size_t)n : 0] + (c ? c[n] : 0.0f);  \
            }                                                                                               \
        }                                                                                                   \
}                                                                                                           \

EL_VNNI(el_a8w8_vnni4, 4)
EL_VNNI(el_a8w8_vnni1, 1)

/* Four rows (streams, or positions of a prefill chunk) x 64 columns: the weights are interleaved
 * once per 4 rows of k and serve all four rows of x; 16 accumulators. */
static void el_a8w8_vnni_rows4(float *restrict y, int ldy, const int8_t *restrict x, int ldx,
                               const int8_t *restrict w, int ldw, const float *restrict ws, size_t ws_n,
                               float xs, const float *restrict c, int c_rows, int K, int n0,
                               const int32_t *xsum) {
    __m512i acc[4][4];
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    for (int r = 0; r < 4; r++)
        for (int q = 0; q < 4; q++) acc[r][q] = _mm512_setzero_si512();
    for (int k = 0; k < K; k += 4) {
        const int8_t *wk = w + (size_t)k * ldw + n0;
        const __m512i r0 = _mm512_xor_si512(_mm512_loadu_si512(wk), flip);
        const __m512i r1 = _mm512_xor_si512(_mm512_loadu_si512(wk + ldw), flip);
        const __m512i r2 = _mm512_xor_si512(_mm512_loadu_si512(wk + 2 * (size_t)ldw), flip);
        const __m512i r3 = _mm512_xor_si512(_mm512_loadu_si512(wk + 3 * (size_t)ldw), flip);
        const __m512i t0 = _mm512_unpacklo_epi8(r0, r1), t1 = _mm512_unpackhi_epi8(r0, r1);
        const __m512i t2 = _mm512_unpacklo_epi8(r2, r3), t3 = _mm512_unpackhi_epi8(r2, r3);
        const __m512i quad[4] = {_mm512_unpacklo_epi16(t0, t2), _mm512_unpackhi_epi16(t0, t2),
                                 _mm512_unpacklo_epi16(t1, t3), _mm512_unpackhi_epi16(t1, t3)};
        for (int r = 0; r < 4; r++) {
            int32_t xq;
            memcpy(&xq, x + (size_t)r * ldx + k, 4);
            const __m512i xb = _mm512_set1_epi32(xq);
            for (int q = 0; q < 4; q++) acc[r][q] = _mm512_dpbusd_epi32(acc[r][q], quad[q], xb);
        }
    }
    for (int r = 0; r < 4; r++) {
        const float *cr = EL_BIAS(c, c_rows, r, ldy);
        for (int q = 0; q < 4; q++) {
            int32_t a[16];
            _mm512_storeu_si512(a, acc[r][q]);
            for (int j = 0; j < 16; j++) {
                const int n = n0 + 16 * (j / 4) + 4 * q + j % 4;
                y[(size_t)r * ldy + n] = (float)(a[j] - 128 * xsum[r]) * xs * ws[ws_n > 1 ? (size_t)n : 0] +
                                         (cr ? cr[n] : 0.0f);
            }
        }
    }
}

static void el_a8w8_row(float *y, const int8_t *x, const int8_t *w, int ldw, const float *ws, size_t ws_n,
                        float xs, const float *c, int K, int N) {
    int32_t xsum = 0;
    int n0 = 0;
    for (int k = 0; k < K; k++) xsum += x[k];
    for (; n0 + 256 <= N; n0 += 256) el_a8w8_vnni4(y, x, w, ws, ws_n, xs, c, K, ldw, n0, xsum);
    for (; n0 + 64 <= N; n0 += 64) el_a8w8_vnni1(y, x, w, ws, ws_n, xs, c, K, ldw, n0, xsum);
    if (n0 < N)  /* the last columns: the generic kernel on a column slice */
        el_mm_a8w8_generic(y + n0, 0, x, 0, w + n0, ldw, ws_n > 1 ? ws + n0 : ws, ws_n > 1 ? ws_n - n0 : 1, xs,
                           c ? c + n0 : NULL, 0, 1, K, N - n0);
}
#endif

static EL_NOINLINE void el_mm_a8w8(float *y, int ldy, const int8_t *x, int ldx, const int8_t *w, int ldw,
                                   const float *ws, size_t ws_n, float xs, const float *c, int c_rows,
                                   size_t M, int K, int N) {
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
    if (K % 4 == 0 && N >= 64) {  /* 64-column panels of 4-row tiles (as el_mm_f32), then single rows */
        const size_t mt = M / 4 * 4;
        size_t m = mt;
        int n0 = 0;
        for (; n0 + 64 <= N; n0 += 64)
            for (size_t r0 = 0; r0 < mt; r0 += 4) {
                int32_t xsum[4] = {0, 0, 0, 0};
                for (int r = 0; r < 4; r++)
                    for (int k = 0; k < K; k++) xsum[r] += x[(r0 + r) * ldx + k];
                el_a8w8_vnni_rows4(y + r0 * ldy, ldy, x + r0 * ldx, ldx, w, ldw, ws, ws_n, xs,
                                   EL_BIAS(c, c_rows, r0, ldy), c_rows, K, n0, xsum);
            }
        if (n0 < N && mt)
            el_mm_a8w8_generic(y + n0, ldy, x, ldx, w + n0, ldw, ws_n > 1 ? ws + n0 : ws, ws_n > 1 ? ws_n - n0 : 1,
                               xs, c ? c + n0 : NULL, c_rows, mt, K, N - n0);
        for (; m < M; m++)
            el_a8w8_row(y + m * ldy, x + m * ldx, w, ldw, ws, ws_n, xs, EL_BIAS(c, c_rows, m, ldy), K, N);
        return;
    }
#endif
    el_mm_a8w8_generic(y, ldy, x, ldx, w, ldw, ws, ws_n, xs, c, c_rows, M, K, N);
}
